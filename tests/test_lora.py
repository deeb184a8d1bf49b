"""Low-rank adapters: a fresh adapter leaves the model exactly as it was; the forward is
W + alpha/r A@B; a LoRA run trains the adapters and the governance parts while the base
keeps its bits and holds no optimizer state; resume is exact; bad settings are named."""
import copy
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import promethios_jax
from promethios_jax import config as config_lib
from promethios_jax import sharding, step, trainable, train
from promethios_jax import state as state_lib
from promethios_jax.data import batch as batch_lib
from promethios_jax.data import generate
from promethios_jax.model import GovernanceTransformer
from promethios_jax.model.lora import LORA_LEAVES, merged_kernel
from tests.util import small_config


def _lora_config(rank=4, **train_keys):
    c = small_config()
    c.model.update(lora_rank=rank, lora_alpha=8.0)
    c.train.update(trainable="lora+governance", **train_keys)
    return c


def _params(model):
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _with_params(model, params):
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)
    return model


def _flat(tree):
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _is_adapter(key):
    return any(f"['{leaf}']" in key for leaf in LORA_LEAVES)


def _inputs(c, seed=0):
    rng = np.random.default_rng(seed)
    tokens = jnp.asarray(rng.integers(0, 300, (2, 24)), jnp.int32)
    telemetry = jnp.asarray(rng.normal(size=(2, 24, c.model.telemetry_dim)), jnp.float32)
    segments = jnp.asarray(np.repeat([[1] * 14 + [2] * 10], 2, axis=0), jnp.int32)
    return dict(tokens=tokens, telemetry=telemetry, segment_ids=segments, head_positions=jnp.array([[13, 23]] * 2))


def _outputs(model, inputs):
    out = model(inputs["tokens"], telemetry=inputs["telemetry"], segment_ids=inputs["segment_ids"],
                head_positions=inputs["head_positions"])
    return [np.asarray(out.logits)] + [np.asarray(v) for _, v in sorted(out.heads.items())]


def test_fresh_adapters_leave_the_model_exactly_as_it_was_and_merge_into_the_weights():
    c = _lora_config()
    base = GovernanceTransformer(small_config().model, rngs=nnx.Rngs(0))
    lora = GovernanceTransformer(c.model, rngs=nnx.Rngs(0))
    p_base, p_lora = _flat(_params(base)), _flat(_params(lora))
    adapters = {k for k in p_lora if _is_adapter(k)}
    # Every projection of both layer stacks: 7 per stack, A and B each.
    assert len(adapters) == 2 * 7 * 2 and set(p_lora) - adapters == set(p_base)
    for k in p_base:  # the adapters draw from their own random stream: same base for a seed
        assert p_base[k].tobytes() == p_lora[k].tobytes(), k
    for k in adapters:
        assert np.any(p_lora[k]) == k.endswith("['lora_a']"), k  # A random, B zero
    inputs = _inputs(c)
    for a, b in zip(_outputs(base, inputs), _outputs(lora, inputs)):
        np.testing.assert_array_equal(a, b)

    # Trained adapters (B != 0) change the output by exactly W + alpha/r A@B.
    rng = np.random.default_rng(1)
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: jnp.asarray(rng.normal(0, 0.05, x.shape), x.dtype) if jax.tree_util.keystr(p).endswith(
            "['lora_b']") else x, _params(lora))
    lora = _with_params(lora, params)
    merged = copy.deepcopy(_params(base))
    scale = c.model.lora_alpha / c.model.lora_rank
    for k in ("layers_0", "layers_1"):
        for block, projs in (("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")),
                             ("mlp", ("gate_proj", "up_proj", "down_proj"))):
            for proj in projs:
                leaves = params[k][block][proj]
                merged[k][block][proj]["kernel"] = jnp.asarray(
                    merged_kernel(leaves["kernel"], leaves["lora_a"], leaves["lora_b"], scale))
    base = _with_params(base, merged)
    outs_lora, outs_merged = _outputs(lora, inputs), _outputs(base, inputs)
    assert np.abs(outs_lora[0] - _outputs(GovernanceTransformer(small_config().model, rngs=nnx.Rngs(0)),
                                          inputs)[0]).max() > 1e-2
    for a, b in zip(outs_lora, outs_merged):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_only_the_named_projections_get_adapters():
    c = _lora_config()
    c.model.lora_targets = "q,v,down"
    p = _flat(_params(GovernanceTransformer(c.model, rngs=nnx.Rngs(0))))
    projs = {k.split("]")[2] for k in p if k.endswith("['lora_a']")}
    assert projs == {"['q_proj'", "['v_proj'", "['down_proj'"}


def test_bad_lora_settings_are_named():
    for keys, msg in (({"lora_rank": -1}, "lora_rank=-1 must be an integer >= 0"),
                      ({"lora_rank": 4, "lora_alpha": 0.0}, "lora_alpha=0.0 must be positive"),
                      ({"lora_targets": "q,query"}, "unknown target 'query'")):
        c = small_config()
        c.model.update(**keys)
        with pytest.raises(config_lib.ConfigError, match=msg):
            config_lib.validate(c)
    c = _lora_config()
    c.sharding.rules = tuple(r for r in c.sharding.rules if r[0] != "lora")
    with pytest.raises(config_lib.ConfigError, match="needs a 'lora' entry in config.sharding.rules"):
        config_lib.validate(c)
    p = _params(GovernanceTransformer(small_config().model, rngs=nnx.Rngs(0)))
    with pytest.raises(trainable.TrainableError, match="trains 'lora', but the model has no adapters"):
        trainable.mask(p, "lora+heads")


def test_lora_groups_split_the_layer_stacks():
    p = _params(GovernanceTransformer(_lora_config().model, rngs=nnx.Rngs(0)))
    for spec, on in (("lora", {"lora"}), ("layers", {"layers"}), ("all", set(trainable.GROUPS)),
                     ("lora+governance", {"lora", "telemetry", "heads"})):
        m = trainable.mask(p, spec)
        for (path, t) in jax.tree_util.tree_leaves_with_path(m):
            assert t == (trainable.group_of(path) in on), (spec, jax.tree_util.keystr(path))


def test_the_step_accumulates_gradients_of_the_trainable_part_only():
    # Gradient buffers for a frozen base would cost as much as full fine-tuning (the 34B
    # recipe: 349 GiB per device with them, 34 GiB without, BENCHMARKS.md).
    c = _lora_config(grad_accum_steps=2, global_batch_size=16)
    mesh = sharding.make_mesh(c)
    setup = state_lib.abstract_train_state(c, mesh)
    jaxpr = jax.make_jaxpr(step.make_train_step(c, setup))(setup.abstract, batch_lib.abstract_batch(c, mesh))
    scans = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]  # the accumulation (layers scan inside)
    assert len(scans) == 1
    n_consts, n_carry = scans[0].params["num_consts"], scans[0].params["num_carry"]
    carried = sum(v.aval.size for v in scans[0].invars[n_consts:n_consts + n_carry])
    on, total = trainable.count(setup.abstract["params"], setup.trainable)
    assert on <= carried < on + 100 and on < total / 2  # the trainable gradients and a few loss sums


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    generate.generate_dataset(str(d), 200, 0, 0.05)
    return str(d)


def _losses(wd):
    rows = [json.loads(line) for line in (Path(wd) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_a_lora_run_trains_the_adapters_and_keeps_the_base_bits(tmp_path, data_dir):
    c = _lora_config(steps=3, learning_rate=1e-2, grad_accum_steps=2, global_batch_size=16)
    c.data.path = data_dir
    train.train(c, str(tmp_path))
    mesh = sharding.make_mesh(c)
    setup = state_lib.abstract_train_state(c, mesh)
    before = jax.device_get(jax.jit(setup.init)()["params"])
    model, _ = promethios_jax.load(tmp_path)
    after = jax.tree_util.tree_leaves_with_path(_params(model))
    changed = {"lora_a": 0, "lora_b": 0, "heads": 0, "telemetry": 0}
    for (path, a), (path_after, b) in zip(jax.tree_util.tree_leaves_with_path(before), after, strict=True):
        key, group = jax.tree_util.keystr(path), trainable.group_of(path)
        assert key == jax.tree_util.keystr(path_after)
        a, b = np.asarray(a), np.asarray(b)
        if group in ("heads", "telemetry"):
            changed[group] += not np.array_equal(a, b)
        elif group == "lora":
            changed[path[-1].key] += not np.array_equal(a, b)
        else:  # the Llama: bit-identical
            assert a.tobytes() == b.tobytes(), key
    assert all(changed.values()), changed
    # Moments for the trainable leaves only: the base holds no optimizer state.
    on, total = trainable.count(setup.abstract["params"], setup.trainable)
    moments = sum(x.size for x in jax.tree.leaves(setup.abstract["opt_state"]) if x.ndim > 0)
    assert moments == 2 * on and on < total / 2


@pytest.mark.slow  # three short runs
def test_a_lora_run_resumes_exactly(tmp_path, data_dir):
    c = _lora_config(steps=4, learning_rate=1e-2)
    c.data.path = data_dir
    c.checkpoint.every_steps = 2
    train.train(c, str(tmp_path / "run"), stop_after=2)
    train.train(c, str(tmp_path / "run"))
    train.train(c, str(tmp_path / "ref"))
    assert _losses(tmp_path / "run") == _losses(tmp_path / "ref")
    resumed, ref = (_flat(_params(promethios_jax.load(tmp_path / w)[0])) for w in ("run", "ref"))
    for k in ref:
        assert resumed[k].tobytes() == ref[k].tobytes(), k
