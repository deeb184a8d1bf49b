"""The heads registry: every head it declares is built, reaches the loss as its own part,
and is read into a generation result; the registry refuses malformed entries."""
import jax.numpy as jnp
import numpy as np
import pytest

from promethios_jax.generate import generate
from promethios_jax.model import heads as heads_lib
from promethios_jax.model import loss as loss_lib
from promethios_jax.model.spec import ModelSpec
from tests.test_model_backbone import build, fwd, params_of


@pytest.fixture(scope="module")
def model_and_config():
    return build()


def _labels(out, rng):
    b, s = out.heads[heads_lib.ESCALATION].shape
    batch = {"targets": np.zeros(out.logits.shape[:2], np.int32), "loss_mask": np.ones(out.logits.shape[:2], np.float32),
             "head_mask": np.ones((b, s), np.float32)}
    for h in heads_lib.HEADS:
        shape = out.heads[h.name].shape
        if h.kind == "soft_multilabel":
            batch[h.label_key] = rng.uniform(size=shape).astype(np.float32)
        else:
            k = 2 if h.kind == "binary" else shape[-1]
            batch[h.label_key] = rng.integers(0, k, (b, s)).astype(np.int32)
    return batch


def test_every_head_is_built_and_reaches_its_loss_part(model_and_config):
    model, c = model_and_config
    spec = ModelSpec.from_config(c.model)
    assert set(params_of(model)["heads"]) == set(heads_lib.NAMES)
    assert loss_lib.PARTS == ("lm",) + heads_lib.NAMES
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, c.model.vocab_size, (2, 12)))
    out = fwd(model, tokens, head_positions=jnp.asarray([[3, 11]] * 2))
    assert set(out.heads) == set(heads_lib.NAMES)
    for h in heads_lib.HEADS:
        want = (2, 2) if h.kind == "binary" else (2, 2, h.width(spec))
        assert out.heads[h.name].shape == want, h.name
        assert getattr(out, f"{h.name}_logits") is out.heads[h.name]
    batch = _labels(out, rng)
    sums = loss_lib.loss_sums(out, batch)
    counts = loss_lib.loss_counts(batch)
    assert set(sums) == set(counts) == set(loss_lib.PARTS)
    for h in heads_lib.HEADS:
        bump = jnp.asarray(rng.normal(size=out.heads[h.name].shape), jnp.float32)  # not a shift: softmax ignores those
        moved = out.replace(heads={**out.heads, h.name: out.heads[h.name] + bump})
        changed = {k for k, v in loss_lib.loss_sums(moved, batch).items() if float(v) != float(sums[k])}
        assert changed == {h.name}, h.name
        assert float(counts[h.name]) == 4.0, h.name


def test_every_head_reaches_a_generation_result(model_and_config):
    model, _ = model_and_config
    (r,) = generate(model, None, [[5, 9, 14, 3]], max_new_tokens=2, eos_id=None)
    flat = r.to_dict()
    for h in heads_lib.HEADS:
        keys = {"binary": [f"{h.name}_prob"], "softmax": [h.name, f"{h.name}_probs"],
                "soft_multilabel": [h.name]}[h.kind]
        for k in keys:
            assert k in flat and k in r.verdict and getattr(r, k) == flat[k], (h.name, k)
    assert flat["escalate"] == (flat[f"{heads_lib.ESCALATION}_prob"] >= 0.5)
    assert 0.0 <= flat["hitl_prob"] <= 1.0 and abs(sum(flat["decision_probs"]) - 1) < 1e-5


def test_registry_entries_are_checked_and_looked_up():
    with pytest.raises(ValueError, match="kind 'ordinal'"):
        heads_lib.HeadDef("x", "ordinal", "n_tools")
    with pytest.raises(ValueError, match="binary head has one logit"):
        heads_lib.HeadDef("x", "binary", "n_tools")
    with pytest.raises(KeyError, match="no governance head 'conflict'"):
        heads_lib.get("conflict")
    # Modules are built final-state heads first, so earlier runs' initialisation is kept.
    assert [h.name for h in heads_lib.build_order()] == ["hitl", "decision", "confidence", "bias", "uncertainty",
                                                       "tool"]
