"""The Llama backbone: an independent NumPy reference, packing, masks, GQA, scan, remat."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from promethios_jax.config import base_config
from promethios_jax.model import GovernanceTransformer, ModelSpec, layer_location, positions_from_segments
from promethios_jax.model import loss as loss_lib
from promethios_jax.model.layers import dot_product_attention

LOGICAL = {"embed", "vocab", "mlp", "heads", "kv_heads", "head_dim", "layers", "telemetry", "classes"}


def tiny_config(**model):
    c = base_config()
    m = c.model
    m.vocab_size, m.d_model, m.n_layers, m.n_heads, m.n_kv_heads, m.d_ff = 61, 32, 4, 4, 2, 48
    m.anchor_layers, m.uncertainty_layers, m.tool_layers = [2, 4], [2, 3], [4, 4]
    m.telemetry_dim, m.head_hidden = 5, 16
    for k, v in model.items():
        m[k] = v
    return c


def build(**model):
    c = tiny_config(**model)
    return GovernanceTransformer(c.model, rngs=nnx.Rngs(0)), c


@nnx.jit
def fwd(model, tokens, **kw):
    """The model's forward, jitted (eager dispatch of the layer scans is slow on CPU)."""
    return model(tokens, **kw)


def params_of(model):
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


# ---------------------------------------------------------------------------------------
# An independent reference: plain NumPy float64, one layer at a time, HF-style RoPE and
# repeat_kv for GQA, dense masks.


def _rms(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def reference_forward(params, spec: ModelSpec, tokens, segment_ids=None, positions=None):
    """Returns (logits [B, L, V], per-layer outputs [n_layers, B, L, D], final normed [B, L, D])."""
    p64 = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    tokens = np.asarray(tokens)
    b, length = tokens.shape
    d, h, kv, hd = spec.d_model, spec.n_heads, spec.n_kv_heads, spec.hd
    if segment_ids is None:
        segment_ids = np.ones((b, length), np.int64)
    if positions is None:
        positions = np.broadcast_to(np.arange(length), (b, length))
    inv = 1.0 / (spec.rope_theta ** (np.arange(0, hd, 2) / hd))
    ang = np.asarray(positions, np.float64)[..., None] * inv  # [B, L, hd/2]
    cos = np.concatenate([np.cos(ang)] * 2, -1)[:, :, None]
    sin = np.concatenate([np.sin(ang)] * 2, -1)[:, :, None]

    def rope(x):
        x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
        return x * cos + np.concatenate([-x2, x1], -1) * sin

    seg = np.asarray(segment_ids)
    mask = np.tril(np.ones((length, length), bool))[None] & (seg[:, :, None] == seg[:, None, :])
    x = p64["embed_tokens"]["embedding"][tokens]
    states = []
    for i in range(spec.n_layers):
        name, j = layer_location(spec, i)
        lp = jax.tree.map(lambda a: a[j], p64[name])
        a = lp["self_attn"]
        y = _rms(x, lp["input_layernorm"]["scale"], spec.norm_eps)
        q = rope((y @ a["q_proj"]["kernel"].reshape(d, h * hd)).reshape(b, length, h, hd))
        k = rope((y @ a["k_proj"]["kernel"].reshape(d, kv * hd)).reshape(b, length, kv, hd))
        v = (y @ a["v_proj"]["kernel"].reshape(d, kv * hd)).reshape(b, length, kv, hd)
        k, v = np.repeat(k, h // kv, axis=2), np.repeat(v, h // kv, axis=2)
        s = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
        s = np.where(mask[:, None], s, -1e30)
        pr = np.exp(s - s.max(-1, keepdims=True))
        pr = pr / pr.sum(-1, keepdims=True)
        o = np.einsum("bhqk,bkhd->bqhd", pr, v).reshape(b, length, h * hd)
        x = x + o @ a["o_proj"]["kernel"].reshape(h * hd, d)
        m = lp["mlp"]
        y = _rms(x, lp["post_attention_layernorm"]["scale"], spec.norm_eps)
        g = y @ m["gate_proj"]["kernel"]
        x = x + (g / (1 + np.exp(-g)) * (y @ m["up_proj"]["kernel"])) @ m["down_proj"]["kernel"]
        states.append(x)
    xn = _rms(x, p64["norm"]["scale"], spec.norm_eps)
    head = p64["embed_tokens"]["embedding"].T if spec.tie_embeddings else p64["lm_head"]["kernel"]
    return xn @ head, np.stack(states), xn


def assert_rel(actual, expected, tol):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    err = np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-12)
    assert err < tol, f"relative error {err:.3g} >= {tol}"


# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [{}, {"tie_embeddings": True, "n_kv_heads": 1, "rope_theta": 500.0},
                                       {"n_kv_heads": 4, "head_dim": 12, "anchor_layers": [1, 3]}])
def test_backbone_matches_numpy_reference(overrides):
    model, c = build(**overrides)
    tokens = np.random.default_rng(0).integers(0, c.model.vocab_size, (2, 11))
    ref, _, _ = reference_forward(params_of(model), model.spec, tokens)
    assert_rel(fwd(model, jnp.asarray(tokens)).logits, ref, 1e-5)


def test_no_telemetry_is_exactly_the_backbone():
    model, c = build()
    # Make the conditioning path strong, so that a leak would show.
    enc = model.telemetry_encoder
    enc.anchor_proj.kernel[...] = jnp.ones_like(enc.anchor_proj.kernel[...])
    enc.anchor_proj.bias[...] = jnp.ones_like(enc.anchor_proj.bias[...])
    tokens = np.random.default_rng(1).integers(0, c.model.vocab_size, (2, 9))
    ref, _, _ = reference_forward(params_of(model), model.spec, tokens)
    plain = fwd(model, jnp.asarray(tokens)).logits
    assert_rel(plain, ref, 1e-5)
    telemetry = np.random.default_rng(2).normal(size=(2, 9, c.model.telemetry_dim)).astype(np.float32)
    conditioned = fwd(model, jnp.asarray(tokens), telemetry=jnp.asarray(telemetry)).logits
    assert np.max(np.abs(np.asarray(conditioned) - np.asarray(plain))) > 1e-2  # telemetry does act


def test_telemetry_enters_at_the_anchor_layers():
    # With anchors [2, 4], the telemetry cannot change the first layer's output; per-row
    # telemetry [B, T] is the same as the vector repeated on every token.
    model, c = build(uncertainty_layers=[1, 1])
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, c.model.vocab_size, (2, 7)))
    tel = jnp.asarray(np.random.default_rng(4).normal(size=(2, c.model.telemetry_dim)), jnp.float32)
    a = fwd(model, tokens)
    b = fwd(model, tokens, telemetry=tel)
    np.testing.assert_allclose(a.uncertainty_logits, b.uncertainty_logits, rtol=1e-6, atol=1e-6)
    assert np.max(np.abs(np.asarray(a.tool_logits) - np.asarray(b.tool_logits))) > 0
    full = fwd(model, tokens, telemetry=jnp.broadcast_to(tel[:, None], (2, 7, c.model.telemetry_dim)))
    np.testing.assert_allclose(full.logits, b.logits, rtol=1e-6, atol=1e-6)


def test_telemetry_init_is_small():
    model, c = build()
    tokens = jnp.asarray(np.random.default_rng(5).integers(0, c.model.vocab_size, (2, 8)))
    tel = jnp.asarray(np.random.default_rng(6).uniform(size=(2, 8, c.model.telemetry_dim)), jnp.float32)
    signal = model.telemetry_encoder(tel, jnp.float32)
    embed_rms = float(jnp.sqrt(jnp.mean(model.embed_tokens(tokens, jnp.float32) ** 2)))
    assert float(jnp.sqrt(jnp.mean(signal ** 2))) < embed_rms


def _pack(seqs, length):
    tokens = np.zeros((1, length), np.int32)
    seg = np.zeros((1, length), np.int32)
    pos = np.zeros((1, length), np.int32)
    at = 0
    for i, s in enumerate(seqs):
        tokens[0, at:at + len(s)] = s
        seg[0, at:at + len(s)] = i + 1
        pos[0, at:at + len(s)] = np.arange(len(s))
        at += len(s)
    return tokens, seg, pos


@pytest.mark.parametrize("explicit_positions", [True, False])
def test_packing_isolation(explicit_positions):
    model, c = build()
    rng = np.random.default_rng(7)
    seqs = [rng.integers(1, c.model.vocab_size, n) for n in (5, 7, 3)]
    tels = [rng.normal(size=c.model.telemetry_dim).astype(np.float32) for _ in seqs]
    tokens, seg, pos = _pack(seqs, 18)  # 15 real tokens + 3 padding
    tel = np.zeros((1, 18, c.model.telemetry_dim), np.float32)
    ends, at = [], 0
    for s, t in zip(seqs, tels):
        tel[0, at:at + len(s)] = t
        at += len(s)
        ends.append(at - 1)
    packed = fwd(model, jnp.asarray(tokens), telemetry=jnp.asarray(tel), segment_ids=jnp.asarray(seg),
                   positions=jnp.asarray(pos) if explicit_positions else None,
                   head_positions=jnp.asarray([ends]))
    at = 0
    for i, (s, t) in enumerate(zip(seqs, tels)):
        alone = fwd(model, jnp.asarray(s[None]), telemetry=jnp.asarray(t[None]))
        np.testing.assert_allclose(packed.logits[0, at:at + len(s)], alone.logits[0], rtol=1e-5, atol=1e-5)
        for field in ("hitl_logits", "decision_logits", "uncertainty_logits", "tool_logits", "bias_logits"):
            np.testing.assert_allclose(getattr(packed, field)[0, i], getattr(alone, field)[0, 0], rtol=1e-5,
                                       atol=1e-5)
        at += len(s)


def test_positions_from_segments():
    seg = jnp.asarray([[1, 1, 1, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(positions_from_segments(seg),
                                  [[0, 1, 2, 0, 1, 0, 0, 1], [0, 1, 2, 3, 4, 5, 6, 7]])


def test_causal_mask():
    model, c = build()
    rng = np.random.default_rng(8)
    tokens = rng.integers(0, c.model.vocab_size, (1, 10))
    changed = tokens.copy()
    changed[0, 6:] = (changed[0, 6:] + 1) % c.model.vocab_size
    a = fwd(model, jnp.asarray(tokens)).logits
    b = fwd(model, jnp.asarray(changed)).logits
    np.testing.assert_allclose(a[0, :6], b[0, :6], rtol=1e-6, atol=1e-6)
    assert np.max(np.abs(np.asarray(a[0, 6:]) - np.asarray(b[0, 6:]))) > 1e-4


def test_gqa_equals_mha_with_repeated_kv_heads():
    gqa, c = build(n_kv_heads=2)
    mha, _ = build(n_kv_heads=4)
    # Copy every weight, duplicating each kv head for the two query heads of its group.
    src = nnx.to_pure_dict(nnx.state(gqa, nnx.Param))
    dst = nnx.to_pure_dict(nnx.state(mha, nnx.Param))
    for name in [k for k in src if k.startswith("layers_")]:
        for proj in ("k_proj", "v_proj"):
            src[name]["self_attn"][proj]["kernel"] = jnp.repeat(src[name]["self_attn"][proj]["kernel"], 2, axis=2)
    assert jax.tree.map(jnp.shape, src) == jax.tree.map(jnp.shape, dst)
    nnx.update(mha, src)
    tokens = jnp.asarray(np.random.default_rng(9).integers(0, c.model.vocab_size, (2, 8)))
    np.testing.assert_allclose(fwd(gqa, tokens).logits, fwd(mha, tokens).logits, rtol=1e-5, atol=1e-5)


def test_scan_equals_unrolled():
    scanned, c = build(scan_layers=True)
    unrolled, _ = build(scan_layers=False)
    tokens = jnp.asarray(np.random.default_rng(10).integers(0, c.model.vocab_size, (2, 8)))
    tel = jnp.ones((2, 8, c.model.telemetry_dim))
    a, b = fwd(scanned, tokens, telemetry=tel), fwd(unrolled, tokens, telemetry=tel)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def _batch(c, rng, b=2, length=8, s=2):
    v, t = c.model.vocab_size, c.model.telemetry_dim
    return {
        "tokens": rng.integers(0, v, (b, length)).astype(np.int32),
        "targets": rng.integers(0, v, (b, length)).astype(np.int32),
        "loss_mask": (rng.uniform(size=(b, length)) > 0.3).astype(np.float32),
        "segment_ids": np.repeat([[1] * (length // 2) + [2] * (length // 2)], b, 0).astype(np.int32),
        "positions": np.repeat([list(range(length // 2)) * 2], b, 0).astype(np.int32),
        "telemetry": rng.uniform(size=(b, length, t)).astype(np.float32),
        "head_positions": np.repeat([[length // 2 - 1, length - 1]], b, 0).astype(np.int32),
        "head_mask": np.ones((b, s), np.float32),
        "hitl": rng.integers(0, 2, (b, s)).astype(np.int32),
        "decision": rng.integers(0, c.model.n_decisions, (b, s)).astype(np.int32),
        "confidence": rng.integers(0, 4, (b, s)).astype(np.int32),
        "tool": rng.integers(0, c.model.n_tools, (b, s)).astype(np.int32),
        "uncertainty": rng.uniform(size=(b, s, 6)).astype(np.float32),
        "bias": (rng.uniform(size=(b, s, 6)) > 0.5).astype(np.float32),
    }


def _loss_and_grad(model, c, batch):
    graphdef, params = nnx.split(model, nnx.Param)

    @jax.jit
    def f(params):
        m = nnx.merge(graphdef, params)
        out = m(batch["tokens"], telemetry=batch["telemetry"], segment_ids=batch["segment_ids"],
                positions=batch["positions"], head_positions=batch["head_positions"])
        total, _ = loss_lib.combine(loss_lib.loss_sums(out, batch), loss_lib.loss_counts(batch), c.loss, m)
        return total

    return jax.value_and_grad(f)(params)


def test_remat_policies_give_the_same_loss_and_grads():
    small = dict(n_layers=2, anchor_layers=[2], uncertainty_layers=[1, 2], tool_layers=[2, 2])
    batch = _batch(tiny_config(), np.random.default_rng(11))
    results = {}
    for policy in ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable"):
        model, c = build(remat_policy=policy, **small)
        results[policy] = _loss_and_grad(model, c, batch)
    loss0, grad0 = results["none"]
    assert np.isfinite(loss0)
    for policy, (loss, grad) in results.items():
        np.testing.assert_allclose(loss, loss0, rtol=1e-6)
        for g, g0 in zip(jax.tree.leaves(grad), jax.tree.leaves(grad0)):
            np.testing.assert_allclose(g, g0, rtol=1e-5, atol=1e-7)


def test_bfloat16_compute_keeps_float32_params_and_logits():
    model, c = build(compute_dtype="bfloat16")
    tokens = jnp.asarray(np.random.default_rng(12).integers(0, c.model.vocab_size, (2, 8)))
    out = jax.jit(lambda t: model(t, telemetry=jnp.ones((2, 8, 5))))(tokens)
    assert out.logits.dtype == jnp.float32 and out.hitl_logits.dtype == jnp.float32
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    ref, _ = build(compute_dtype="float32")
    assert_rel(out.logits, fwd(ref, tokens, telemetry=jnp.ones((2, 8, 5))).logits, 5e-2)


def test_cudnn_refuses_on_cpu():
    model, c = build(attention_impl="cudnn", compute_dtype="bfloat16")
    tokens = jnp.zeros((1, 8), jnp.int32)
    with pytest.raises(RuntimeError, match="cuDNN.*GPU|GPU.*cuDNN"):
        fwd(model, tokens, segment_ids=jnp.ones((1, 8), jnp.int32))
    q = jnp.zeros((1, 8, 4, 8), jnp.bfloat16)
    kv = jnp.zeros((1, 8, 2, 8), jnp.bfloat16)
    with pytest.raises(RuntimeError, match="GPU"):
        dot_product_attention(q, kv, kv, q_idx=jnp.arange(8), kv_idx=jnp.arange(8), impl="cudnn")
    with pytest.raises(ValueError, match="attention_impl"):
        dot_product_attention(q, kv, kv, q_idx=jnp.arange(8), kv_idx=jnp.arange(8), impl="flash")


def test_every_param_has_logical_axis_names_and_the_model_holds_only_params():
    c = tiny_config()
    c.loss.uncertainty_weighting = True  # also creates the learned log-variances
    model = GovernanceTransformer(c.model, rngs=nnx.Rngs(0))
    assert model.loss_log_vars is not None
    state = nnx.state(model, nnx.Param)
    flat = jax.tree_util.tree_leaves_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    assert len(flat) > 20
    for path, var in flat:
        names = var.get_metadata().get("out_sharding")
        assert names is not None, jax.tree_util.keystr(path)
        assert len(names) == var[...].ndim, (jax.tree_util.keystr(path), names, var[...].shape)
        assert set(names) <= LOGICAL, (jax.tree_util.keystr(path), names)
        key = jax.tree_util.keystr(path)
        if key.startswith("['layers_"):
            assert names[0] == "layers"
    # nnx.split(model, nnx.Param) must capture all state: no RNGs, no buffers.
    _, everything = nnx.split(model)
    assert len(jax.tree.leaves(everything)) == len(jax.tree.leaves(state))
    specs = nnx.to_pure_dict(nnx.get_partition_spec(state))
    assert specs["layers_0"]["self_attn"]["q_proj"]["kernel"] == jax.sharding.PartitionSpec(
        "layers", "embed", "heads", "head_dim")


def test_segments_follow_the_anchors():
    spec = ModelSpec.from_config(tiny_config(n_layers=24, anchor_layers=[8, 16, 24], uncertainty_layers=[18, 24],
                                             tool_layers=[20, 24]).model)
    assert spec.segments == ((0, 7), (7, 15), (15, 23), (23, 24))
    assert layer_location(spec, 0) == ("layers_0", 0)
    assert layer_location(spec, 7) == ("layers_1", 0)
    assert layer_location(spec, 23) == ("layers_3", 0)
    assert ModelSpec.from_config(tiny_config(anchor_layers=[1]).model).segments == ((0, 4),)
