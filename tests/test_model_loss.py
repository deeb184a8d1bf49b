"""The loss parts against NumPy, masking, combine (weights, zero counts, Kendall, micro-batches)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from promethios_jax.model import GovernanceTransformer, ModelOutput
from promethios_jax.model import loss as loss_lib
from tests.test_model_backbone import _batch, build, tiny_config

B, L, S, V = 3, 7, 4, 11


def _outputs(rng):
    return ModelOutput(
        logits=jnp.asarray(rng.normal(size=(B, L, V)) * 3, jnp.float32),
        heads={"hitl": jnp.asarray(rng.normal(size=(B, S)) * 2, jnp.float32),
               "decision": jnp.asarray(rng.normal(size=(B, S, 4)), jnp.float32),
               "confidence": jnp.asarray(rng.normal(size=(B, S, 4)), jnp.float32),
               "uncertainty": jnp.asarray(rng.normal(size=(B, S, 6)), jnp.float32),
               "bias": jnp.asarray(rng.normal(size=(B, S, 6)), jnp.float32),
               "tool": jnp.asarray(rng.normal(size=(B, S, 6)), jnp.float32)})


def _labels(rng):
    return {
        "targets": rng.integers(0, V, (B, L)).astype(np.int32),
        "loss_mask": (rng.uniform(size=(B, L)) > 0.4).astype(np.float32),
        "head_mask": np.array([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0]], np.float32),
        "hitl": rng.integers(0, 2, (B, S)).astype(np.int32),
        "decision": rng.integers(0, 4, (B, S)).astype(np.int32),
        "confidence": rng.integers(0, 4, (B, S)).astype(np.int32),
        "tool": rng.integers(0, 6, (B, S)).astype(np.int32),
        "uncertainty": rng.uniform(size=(B, S, 6)).astype(np.float32),
        "bias": (rng.uniform(size=(B, S, 6)) > 0.5).astype(np.float32),
    }


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _sigmoid(x):
    return 1 / (1 + np.exp(-np.asarray(x, np.float64)))


def _reference(out, b):
    hm = b["head_mask"]
    lm = -np.take_along_axis(_log_softmax(out.logits), b["targets"][..., None], -1)[..., 0]
    ref = {"lm": (lm * b["loss_mask"]).sum()}
    p = _sigmoid(out.hitl_logits)
    ref["hitl"] = (-(b["hitl"] * np.log(p) + (1 - b["hitl"]) * np.log(1 - p)) * hm).sum()
    for k in ("decision", "confidence", "tool"):
        lp = _log_softmax(getattr(out, f"{k}_logits"))
        ref[k] = (-np.take_along_axis(lp, b[k][..., None], -1)[..., 0] * hm).sum()
    for k in ("uncertainty", "bias"):
        p, y = _sigmoid(getattr(out, f"{k}_logits")), b[k]
        ref[k] = ((-(y * np.log(p) + (1 - y) * np.log(1 - p))).sum(-1) * hm).sum()
    counts = {"lm": b["loss_mask"].sum(), **{k: hm.sum() for k in loss_lib.PARTS if k != "lm"}}
    return ref, counts


def test_loss_parts_match_numpy():
    rng = np.random.default_rng(0)
    out, b = _outputs(rng), _labels(rng)
    sums, counts = loss_lib.loss_sums(out, b), loss_lib.loss_counts(b)
    ref, ref_counts = _reference(out, b)
    assert set(sums) == set(counts) == set(loss_lib.PARTS)
    for k in loss_lib.PARTS:
        np.testing.assert_allclose(sums[k], ref[k], rtol=1e-5, err_msg=k)
        np.testing.assert_allclose(counts[k], ref_counts[k], err_msg=k)
    c = tiny_config().loss
    total, parts = loss_lib.combine(sums, counts, c)
    for k in loss_lib.PARTS:
        np.testing.assert_allclose(parts[k], ref[k] / ref_counts[k], rtol=1e-5, err_msg=k)
    np.testing.assert_allclose(total, sum(c[k] * ref[k] / ref_counts[k] for k in loss_lib.PARTS), rtol=1e-5)


def test_masked_slots_contribute_nothing():
    rng = np.random.default_rng(1)
    out, b = _outputs(rng), _labels(rng)
    masked = b["head_mask"] == 0
    # Change every masked slot's logits and labels, and every unmasked-token target: nothing moves.
    out2 = out.replace(heads={k: jnp.where(jnp.asarray(masked)[(...,) + (None,) * (v.ndim - 2)], v + 5.0, v)
                              for k, v in out.heads.items()})
    b2 = dict(b)
    for k in ("hitl", "decision", "confidence", "tool"):
        b2[k] = np.where(masked, (b[k] + 1) % 2, b[k])
    b2["targets"] = np.where(b["loss_mask"] == 0, (b["targets"] + 1) % V, b["targets"])
    s1, s2 = loss_lib.loss_sums(out, b), loss_lib.loss_sums(out2, b2)
    for k in loss_lib.PARTS:
        np.testing.assert_allclose(s1[k], s2[k], rtol=1e-6, err_msg=k)
    # And the gradient with respect to a masked slot's logits is exactly zero.
    g = jax.grad(lambda o: sum(loss_lib.loss_sums(o, b).values()))(out)
    assert np.all(np.asarray(g.hitl_logits)[masked] == 0)
    assert np.all(np.asarray(g.bias_logits)[masked] == 0)
    assert np.all(np.asarray(g.logits)[b["loss_mask"] == 0] == 0)
    # A negative class label means unknown: that slot drops out of its part only.
    b3 = dict(b, decision=np.where(masked, -1, b["decision"]))
    b3["decision"][0, 0] = -1
    assert float(loss_lib.loss_counts(b3)["decision"]) == float(b["head_mask"].sum()) - 1
    assert float(loss_lib.loss_counts(b3)["hitl"]) == float(b["head_mask"].sum())


def test_zero_counts_give_zero_parts_and_finite_grads():
    rng = np.random.default_rng(2)
    out, b = _outputs(rng), _labels(rng)
    b["head_mask"] = np.zeros_like(b["head_mask"])
    b["loss_mask"] = np.zeros_like(b["loss_mask"])
    c = tiny_config().loss

    def total(o):
        return loss_lib.combine(loss_lib.loss_sums(o, b), loss_lib.loss_counts(b), c)[0]

    assert float(total(out)) == 0.0
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(jax.grad(total)(out)))
    # A batch without some label keys (e.g. an eval batch): those parts count zero.
    partial = {k: v for k, v in _labels(rng).items() if k not in ("tool", "bias")}
    sums, counts = loss_lib.loss_sums(out, partial), loss_lib.loss_counts(partial)
    assert float(counts["tool"]) == 0 and float(sums["bias"]) == 0
    assert np.isfinite(float(loss_lib.combine(sums, counts, c)[0]))


@pytest.mark.parametrize("kendall", [False, True])
def test_micro_batches_sum_to_the_full_batch(kendall):
    c = tiny_config()
    c.loss.uncertainty_weighting = kendall
    model = GovernanceTransformer(c.model, rngs=nnx.Rngs(0))
    if kendall:
        model.loss_log_vars.hitl[...] = jnp.float32(0.7)
        model.loss_log_vars.lm[...] = jnp.float32(-0.3)
    rng = np.random.default_rng(3)
    out, b = _outputs(rng), _labels(rng)
    counts = loss_lib.loss_counts(b)
    full, _ = loss_lib.combine(loss_lib.loss_sums(out, b), counts, c.loss, model)
    micro = 0.0
    for rows in (slice(0, 1), slice(1, 3)):
        o = jax.tree.map(lambda x: x[rows], out)
        mb = {k: v[rows] for k, v in b.items()}
        micro = micro + loss_lib.combine(loss_lib.loss_sums(o, mb), counts, c.loss, model, num_micro=2)[0]
    np.testing.assert_allclose(micro, full, rtol=1e-5)
    if kendall:
        _, parts = loss_lib.combine(loss_lib.loss_sums(out, b), counts, c.loss, model)
        s = {k: float(getattr(model.loss_log_vars, k)[...]) for k in loss_lib.PARTS}
        expect = sum(np.exp(-s[k]) * float(parts[k]) + s[k] for k in loss_lib.PARTS if c.loss[k] > 0)
        np.testing.assert_allclose(full, expect, rtol=1e-5)


def test_kendall_needs_the_learned_log_variances():
    c = tiny_config()
    model = GovernanceTransformer(c.model, rngs=nnx.Rngs(0))  # built without them
    c.loss.uncertainty_weighting = True
    rng = np.random.default_rng(4)
    out, b = _outputs(rng), _labels(rng)
    with pytest.raises(ValueError, match="learned_loss_weights"):
        loss_lib.combine(loss_lib.loss_sums(out, b), loss_lib.loss_counts(b), c.loss, model)


def test_the_full_model_learns_a_batch():
    # A few Adam steps on one packed batch lower every part of the loss.
    model, c = build(n_layers=2, anchor_layers=[2], uncertainty_layers=[1, 2], tool_layers=[2, 2])
    c.loss.uncertainty_weighting = False
    batch = {k: jnp.asarray(v) for k, v in _batch(c, np.random.default_rng(5)).items()}
    graphdef, params = nnx.split(model, nnx.Param)
    tx = optax.adam(1e-2)
    opt = tx.init(params)

    def loss_fn(params):
        m = nnx.merge(graphdef, params)
        out = m(batch["tokens"], telemetry=batch["telemetry"], segment_ids=batch["segment_ids"],
                positions=batch["positions"], head_positions=batch["head_positions"])
        return loss_lib.combine(loss_lib.loss_sums(out, batch), loss_lib.loss_counts(batch), c.loss, m)

    @jax.jit
    def step(params, opt):
        (total, parts), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, updates), opt, parts

    _, first = loss_fn(params)
    for _ in range(30):
        params, opt, parts = step(params, opt)
    for k in loss_lib.PARTS:
        assert float(parts[k]) < float(first[k]), (k, float(first[k]), float(parts[k]))
