"""The config schema: model keys and defaults come from ModelSpec, its checks are the
validation's, and settings the backend cannot run are refused by name."""
import dataclasses

import pytest

from promethios_jax.config import ConfigError, base_config, validate
from promethios_jax.model.backbone import remat_policy
from promethios_jax.model.heads import HEADS, LOSS_PARTS
from promethios_jax.model.spec import REMAT_POLICIES, ModelSpec


def test_model_keys_and_defaults_are_the_model_spec():
    m = base_config().model
    fields = {f.name: f.default for f in dataclasses.fields(ModelSpec)}
    assert set(m) == set(fields)
    assert {k: m[k] for k in m} == fields
    c = base_config()
    c.loss.uncertainty_weighting = True  # the model key follows the loss key
    assert c.model.learned_loss_weights and ModelSpec.from_config(c.model).learned_loss_weights


@pytest.mark.parametrize("key,value,message", [
    ("n_kv_heads", 3, "config.model.n_heads=4 is not a multiple of n_kv_heads=3"),
    ("d_model", 130, "config.model.d_model=130 is not divisible by n_heads=4"),
    ("head_dim", 7, "head_dim=7 must be even"),
    ("compute_dtype", "float8", "config.model.compute_dtype='float8'"),
    ("attention_impl", "flash", "config.model.attention_impl='flash'"),
    ("remat_policy", "some", "config.model.remat_policy='some'"),
    ("rope_scaling_type", "yarn", "config.model.rope_scaling_type='yarn'"),
    ("anchor_layers", (2, 9), "anchor_layers: 9 is outside 1..4"),
    ("tool_layers", (4, 3), r"tool_layers=\[4, 3\]"),
    ("uncertainty_layers", (0, 3), r"uncertainty_layers=\[0, 3\]"),
])
def test_validate_refuses_model_values_by_key(key, value, message):
    c = base_config()
    c.model[key] = value
    with pytest.raises(ConfigError, match=message):
        validate(c)


def test_every_remat_policy_validates_and_builds():
    for name in REMAT_POLICIES:
        c = base_config()
        c.model.remat_policy = name
        validate(c)
        assert remat_policy(name)[0] == (name != "none")


def test_cudnn_attention_is_refused_off_gpu_naming_the_working_value():
    c = base_config()
    c.model.attention_impl = "cudnn"
    validate(c)  # no backend given: nothing to check against
    validate(c, backend="gpu")
    with pytest.raises(ConfigError, match=r"config.model.attention_impl='cudnn'.*'cpu'.*attention_impl='xla'"):
        validate(c, backend="cpu")
    c.model.attention_impl = "xla"
    validate(c, backend="cpu")


def test_one_loss_weight_per_loss_part():
    lw = base_config().loss
    assert set(lw) - {"uncertainty_weighting"} == set(LOSS_PARTS)
    assert all(lw[h.name] == h.loss_weight for h in HEADS)
