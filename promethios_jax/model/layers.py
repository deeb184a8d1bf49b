"""Llama building blocks: RMSNorm, RoPE, grouped-query attention, SwiGLU.

The layout follows Hugging Face `LlamaForCausalLM` so that its tensors map onto ours by a
transpose and reshape only (no permutation):
  q_proj.kernel [D, H, hd]   = q_proj.weight.T.reshape(D, H, hd)
  k_proj/v_proj [D, KV, hd]  = weight.T.reshape(D, KV, hd)
  o_proj.kernel [H, hd, D]   = o_proj.weight.T.reshape(H, hd, D)
  gate/up_proj  [D, F]       = weight.T;   down_proj [F, D] = weight.T
  RMSNorm.scale [D]          = weight
Modules built with `stack=n` hold n layers' parameters along a leading "layers" axis
(for the layer scan); their `__call__` works on one layer's slice.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

from promethios_jax.model.lora import RANK_AXIS, target_projections
from promethios_jax.model.spec import ModelSpec


# ---------------------------------------------------------------------------------------
# Parameters


def param(rngs: nnx.Rngs | None, shape, names, std: float | None, dtype=jnp.float32, stack: int = 0,
          fill: float = 0.0) -> nnx.Param:
    """An nnx.Param with logical axis names; normal(std) init, or constant `fill` when std is None.

    With stack=n the value gets a leading axis of n layers named "layers".
    """
    shape, names = tuple(shape), tuple(names)
    if len(shape) != len(names):
        raise ValueError(f"shape {shape} and axis names {names} differ in rank")
    if stack:
        shape, names = (stack,) + shape, ("layers",) + names
    if std is None:
        value = jnp.full(shape, fill, dtype)
    else:
        value = (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
    return nnx.Param(value, out_sharding=names)


# ---------------------------------------------------------------------------------------
# RMSNorm


def rms_norm(x, scale, eps: float, out_dtype=None):
    """x * rsqrt(mean(x^2) + eps) * scale, computed in float32 (as HF LlamaRMSNorm)."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (y * scale.astype(jnp.float32)).astype(out_dtype or x.dtype)


class Proj(nnx.Module):
    """A bias-free projection's weight, as `<name>.kernel` in the param tree, with an
    optional low-rank adapter beside it (`lora_a`, `lora_b`: model/lora.py).

    `n_in` leading axes of the kernel (after "layers") are its inputs, the rest its outputs."""

    def __init__(self, kernel: nnx.Param, *, n_in: int = 1, lora_rank: int = 0, lora_scale: float = 0.0,
                 rngs: nnx.Rngs | None = None):
        self.kernel = kernel
        self.lora_scale = lora_scale if lora_rank else 0.0
        if lora_rank:
            names = kernel.get_metadata().get("out_sharding")
            stacked = names[0] == "layers"
            shape, names = kernel.shape[stacked:], names[stacked:]
            stack = kernel.shape[0] if stacked else 0
            fan_in = math.prod(shape[:n_in])
            # Trainable: float32 master weights whatever param_dtype the frozen base uses.
            self.lora_a = param(rngs, shape[:n_in] + (lora_rank,), names[:n_in] + (RANK_AXIS,), fan_in ** -0.5,
                                stack=stack)
            self.lora_b = param(None, (lora_rank,) + shape[n_in:], (RANK_AXIS,) + names[n_in:], None, stack=stack)

    def __call__(self, x, equation: str):
        """`einsum(equation, x, kernel)` plus the adapter's scaled low-rank path."""
        y = jnp.einsum(equation, x, self.kernel[...])
        if not self.lora_scale:
            return y
        a, b = self.lora_a[...], self.lora_b[...]
        low = jnp.tensordot(x, a, axes=a.ndim - 1)
        return y + (self.lora_scale * jnp.tensordot(low, b, axes=1)).astype(y.dtype)


def lora_proj(spec: ModelSpec, name: str, kernel: nnx.Param, *, rngs: nnx.Rngs, n_in: int = 1) -> Proj:
    """A decoder projection `name` (q_proj, ...), with an adapter when config.model.lora_targets names it."""
    rank = spec.lora_rank if name in target_projections(spec.lora_targets) else 0
    return Proj(kernel, n_in=n_in, lora_rank=rank, lora_scale=spec.lora_scale, rngs=rngs)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, *, dtype=jnp.float32, stack: int = 0):
        self.eps = eps
        self.scale = param(None, (dim,), ("embed",), None, dtype, stack=stack, fill=1.0)

    def __call__(self, x):
        return rms_norm(x, self.scale[...], self.eps)


# ---------------------------------------------------------------------------------------
# RoPE


def rope_inv_freq(spec: ModelSpec) -> np.ndarray:
    """Inverse frequencies [hd/2] (float32), with HF's optional "linear" / "llama3" scaling."""
    hd = spec.hd
    inv = 1.0 / (spec.rope_theta ** (np.arange(0, hd, 2, dtype=np.int64).astype(np.float32) / hd))
    inv = inv.astype(np.float32)
    if spec.rope_scaling_type == "linear":
        inv = inv / np.float32(spec.rope_scaling_factor)
    elif spec.rope_scaling_type == "llama3":
        # transformers.modeling_rope_utils._compute_llama3_parameters
        factor, lo, hi = spec.rope_scaling_factor, spec.rope_low_freq_factor, spec.rope_high_freq_factor
        old = spec.rope_original_max_len
        low_wavelen, high_wavelen = old / lo, old / hi
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        inv = np.where(medium, smoothed, scaled).astype(np.float32)
    return inv


def rope_tables(positions, spec: ModelSpec):
    """cos, sin [B, L, hd] float32 for integer positions [B, L] (HF: emb = cat(freqs, freqs))."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(rope_inv_freq(spec))
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x, cos, sin):
    """x [B, L, N, hd]; HF rotate_half convention (first half / second half), in float32."""
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos[:, :, None, :] + rotated * sin[:, :, None, :]).astype(x.dtype)


# ---------------------------------------------------------------------------------------
# Attention


def _on_gpu() -> bool:
    """Whether this trace is for a GPU: the mesh in context names its devices' platform
    (so compiling for GPU devices from a CPU host counts), else the default backend."""
    device = getattr(jax.sharding.get_abstract_mesh(), "abstract_device", None)
    platform = getattr(device, "platform", None) or jax.default_backend()
    return platform in ("gpu", "cuda", "rocm")


def attention_mask(q_idx, kv_idx, q_seg=None, kv_seg=None):
    """Boolean [B or 1, Lq, Lk]: causal by row index, and same segment when segments are given.

    Padding (segment 0) only sees padding, so no query row is ever fully masked (the
    diagonal is always allowed) and no real token sees a pad or another document.
    """
    q_idx = jnp.asarray(q_idx)
    q_idx = q_idx if q_idx.ndim == 2 else q_idx[None]
    kv_idx = jnp.asarray(kv_idx)
    kv_idx = kv_idx if kv_idx.ndim == 2 else kv_idx[None]
    mask = q_idx[:, :, None] >= kv_idx[:, None, :]
    if q_seg is not None:
        mask = mask & (q_seg[:, :, None] == kv_seg[:, None, :])
    return mask


def dot_product_attention(q, k, v, *, q_idx, kv_idx, q_seg=None, kv_seg=None, impl: str = "xla",
                          max_segments: int | None = None):
    """Causal, segment-aware grouped-query attention.

    q [B, Lq, H, hd]; k, v [B, Lk, KV, hd]; q_idx [Lq] or [B, Lq] and kv_idx [Lk] or [B, Lk]
    are the rows' indices in the (cached) sequence, used for causality; q_seg [B, Lq] and
    kv_seg [B, Lk] are segment ids (None: one document per row). max_segments bounds the
    runs of equal segment ids in a row (padding's run included); the cuDNN path needs it
    to pass packed rows without a [B, 1, L, L] mask. Returns [B, Lq, H, hd].
    """
    if impl == "xla":
        return _attention_xla(q, k, v, attention_mask(q_idx, kv_idx, q_seg, kv_seg))
    if impl == "cudnn":
        return _attention_cudnn(q, k, v, q_seg, kv_seg, max_segments)
    raise ValueError(f"attention_impl={impl!r}: use 'xla' or 'cudnn'")


def _attention_xla(q, k, v, mask):
    b, lq, h, d = q.shape
    kv = k.shape[2]
    g = h // kv
    qg = q.reshape(b, lq, kv, g, d)
    # Scores and softmax in float32 whatever the compute dtype.
    scores = jnp.einsum("bqkgd,bskd->bkgqs", qg, k, preferred_element_type=jnp.float32)
    scores = scores * (1.0 / math.sqrt(d))
    scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgqs,bskd->bqkgd", probs, v)
    return out.reshape(b, lq, h, d)


def segment_runs(seg, max_segments: int):
    """cuDNN's packed layout for rows of contiguous segments: (seqlen [B, M], offsets [B, M+1]).

    Each maximal run of equal segment ids (trailing padding's run too) is one cuDNN
    segment: seqlen holds the runs' lengths and offsets their first rows, -1 past a row's
    last run. Causal attention inside each run is exactly `attention_mask`'s rule for
    packed rows whose segments are contiguous (as the pipeline packs them). Also returns
    a [B] flag of rows with more than M runs, which this layout cannot hold.
    """
    b, length = seg.shape
    idx = jnp.arange(length, dtype=jnp.int32)
    starts = jnp.concatenate([jnp.ones((b, 1), bool), seg[:, 1:] != seg[:, :-1]], axis=1)
    run = jnp.cumsum(starts, axis=1, dtype=jnp.int32) - 1  # run index of each row position
    n_runs = run[:, -1] + 1
    m = jnp.arange(max_segments, dtype=jnp.int32)
    # Positions fall into runs in order, so a run's first position is a row minimum.
    first = jnp.full((b, max_segments + 1), length, jnp.int32).at[jnp.arange(b)[:, None], run].min(
        jnp.broadcast_to(idx, (b, length)), mode="drop")
    valid = m[None, :] < n_runs[:, None]
    seqlen = jnp.where(valid, first[:, 1:] - first[:, :-1], -1)
    offsets = jnp.where(jnp.concatenate([valid, jnp.zeros((b, 1), bool)], axis=1), first, -1)
    return seqlen, offsets, n_runs > max_segments


# The mesh axes that shard the batch and the heads (sharding.batch_spec and the "heads"
# rule of config.DEFAULT_RULES); the cuDNN partitioner needs q, k, v placed alike.
_BATCH_AXES, _HEAD_AXIS = ("data", "fsdp"), "tensor"


def cudnn_partition_specs(batch: int, kv_heads: int):
    """(qkv spec, per-row spec) for the mesh in context, or (None, None) without one."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return None, None
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
    rows = tuple(a for a in _BATCH_AXES if sizes.get(a, 1) > 1)
    if batch % math.prod(sizes[a] for a in rows):
        rows = ()
    rows = rows[0] if len(rows) == 1 else (rows or None)
    heads = _HEAD_AXIS if sizes.get(_HEAD_AXIS, 1) > 1 and kv_heads % sizes[_HEAD_AXIS] == 0 else None
    return P(rows, None, heads, None), P(rows, None)


def _attention_cudnn(q, k, v, q_seg, kv_seg, max_segments):
    """cuDNN flash attention (jax 0.10's fused_attention_stablehlo, BTNH layout).

    Packed rows go in cuDNN's packed layout (segment lengths and offsets, Hopper or
    newer) when max_segments is known; otherwise the segment mask is folded into an
    additive [B, 1, L, L] bias. On a mesh, q/k/v and the per-row tensors are pinned to
    one sharding (batch over data x fsdp, heads over tensor): the cuDNN partitioner
    refuses differing q/k/v shardings and slices the offsets with the batch.
    """
    if not _on_gpu():
        raise RuntimeError(
            f"attention_impl='cudnn' needs an NVIDIA GPU with cuDNN, but JAX runs on "
            f"'{jax.default_backend()}'; use config.model.attention_impl='xla' here.")
    if q.dtype not in (jnp.bfloat16, jnp.float16):
        raise ValueError(
            f"cuDNN flash attention computes in bfloat16/float16, got {q.dtype}; set "
            "config.model.compute_dtype='bfloat16' or use attention_impl='xla'.")
    if q.shape[1] != k.shape[1]:
        raise ValueError("the cuDNN path handles full-sequence (training/prefill) attention only; "
                         "cached decoding uses the XLA path")
    if (q_seg is None) != (kv_seg is None):
        raise ValueError("segment ids must be given for both queries and keys, or for neither")
    from jax._src.cudnn import fused_attention_stablehlo as cudnn  # packed layout: not in jax.nn

    qkv_spec, row_spec = cudnn_partition_specs(q.shape[0], k.shape[2])
    pin = (lambda x, spec: x) if qkv_spec is None else jax.lax.with_sharding_constraint  # noqa: E731
    q, k, v = (pin(x, qkv_spec) for x in (q, k, v))
    scale = 1.0 / math.sqrt(q.shape[-1])
    if q_seg is None:
        return cudnn.dot_product_attention(q, k, v, scale=scale, mask_type=cudnn.MaskType.CAUSAL)
    if max_segments is None:
        mask = (q_seg[:, :, None] == kv_seg[:, None, :])[:, None]  # [B, 1, Lq, Lk]
        return cudnn.dot_product_attention(q, k, v, mask=mask, scale=scale, mask_type=cudnn.MaskType.CAUSAL)
    # Self-attention over one sequence: the query's runs are the key's runs.
    seqlen, offsets, overflow = segment_runs(q_seg, max_segments)
    seqlen, offsets = pin(seqlen, row_spec), pin(offsets, row_spec)
    out = cudnn.dot_product_attention(q, k, v, q_seqlen=seqlen, kv_seqlen=seqlen, q_offsets=offsets,
                                      kv_offsets=offsets, scale=scale, mask_type=cudnn.MaskType.PADDING_CAUSAL)
    # A row with more runs than the layout holds would be attended wrongly: poison it so
    # the step's non-finite check stops (or skips) instead of training on it.
    return jnp.where(overflow[:, None, None, None], jnp.nan, out).astype(out.dtype)


class Attention(nnx.Module):
    """Llama self-attention: separate q/k/v/o projections, no biases, RoPE, GQA."""

    def __init__(self, spec: ModelSpec, *, rngs: nnx.Rngs, stack: int = 0, adapter_rngs: nnx.Rngs | None = None):
        d, h, kv, hd, std = spec.d_model, spec.n_heads, spec.n_kv_heads, spec.hd, spec.init_std
        ar = rngs if adapter_rngs is None else adapter_rngs
        pdt = spec.pdtype
        out_std = std / math.sqrt(2 * spec.n_layers)  # residual-branch outputs, GPT-2 style
        q = param(rngs, (d, h, hd), ("embed", "heads", "head_dim"), std, pdt, stack)
        k = param(rngs, (d, kv, hd), ("embed", "kv_heads", "head_dim"), std, pdt, stack)
        v = param(rngs, (d, kv, hd), ("embed", "kv_heads", "head_dim"), std, pdt, stack)
        o = param(rngs, (h, hd, d), ("heads", "head_dim", "embed"), out_std, pdt, stack)
        self.q_proj = lora_proj(spec, "q_proj", q, rngs=ar)
        self.k_proj = lora_proj(spec, "k_proj", k, rngs=ar)
        self.v_proj = lora_proj(spec, "v_proj", v, rngs=ar)
        self.o_proj = lora_proj(spec, "o_proj", o, rngs=ar, n_in=2)

    def __call__(self, x, ctx, cache=None):
        """x [B, L, D] → [B, L, D]. With cache={"k" [B, KV, hd, Lc], "v" [B, KV, Lc, hd]}, writes this chunk's
        keys/values at ctx.cache_index, then attends over the cache; returns (y, new_cache)."""
        q = self.q_proj(x, "bld,dnh->blnh")
        k = self.k_proj(x, "bld,dnh->blnh")
        v = self.v_proj(x, "bld,dnh->blnh")
        q = apply_rope(q, ctx.cos, ctx.sin)
        k = apply_rope(k, ctx.cos, ctx.sin)
        if cache is not None:
            cache = {"k": write_rows(cache["k"], k, ctx.cache_index, axis=3),
                     "v": write_rows(cache["v"], v, ctx.cache_index)}
            o = cached_attention(q, cache["k"], cache["v"], attention_mask(ctx.q_idx, ctx.kv_idx, ctx.q_seg, ctx.kv_seg))
            return self.o_proj(o, "blnh,nhd->bld"), cache
        o = dot_product_attention(q, k, v, q_idx=ctx.q_idx, kv_idx=ctx.kv_idx, q_seg=ctx.q_seg,
                                  kv_seg=ctx.kv_seg, impl=ctx.impl, max_segments=ctx.max_segments)
        return self.o_proj(o, "blnh,nhd->bld"), None


def write_rows(cache, rows, cache_index, axis: int = 2):
    """cache [B, KV, Lc, hd] (axis=2; the keys' [B, KV, hd, Lc]: axis=3) with rows
    [B, l, KV, hd] written at cache_index: a scalar (the same rows for every batch row) or
    [B] (each row its own, the serving engine's slots)."""
    rows = jnp.swapaxes(rows, 1, 2).astype(cache.dtype)  # [B, KV, l, hd]: the chunk only
    if axis == 3:
        rows = jnp.swapaxes(rows, 2, 3)
    idx = jnp.asarray(cache_index, jnp.int32)
    if idx.ndim == 0:
        return jax.lax.dynamic_update_slice_in_dim(cache, rows, idx, axis=axis)
    return jax.vmap(lambda c, r, i: jax.lax.dynamic_update_slice_in_dim(c, r, i, axis=axis - 1))(cache, rows, idx)


def cached_attention(q, k, v, mask):
    """Attention of q [B, l, H, hd] over a cache read where it lies: keys k [B, KV, hd, Lc],
    values v [B, KV, Lc, hd]. Both products then reduce over a non-minor axis with the
    minor one contiguous (the cache rows for q.k, head_dim for p.v): nothing transposes or
    copies the cache, and on CPU a single query row's products vectorize along it (the
    demo's 32-slot step: keys stored [.., Lc, hd] made q.k a horizontal sum per cache row,
    0.22 against 0.13 ms per layer). mask [B or 1, l, Lc]. Returns [B, l, H, hd]."""
    b, lq, h, d = q.shape
    kvh = k.shape[1]
    qg = q.reshape(b, lq, kvh, h // kvh, d)
    if lq == 1 and not _on_gpu():
        # One query row: multiply-and-sum fusions stream the cache once; as matmuls they
        # are B x KV tiny products.
        qv = qg[:, 0].astype(jnp.float32)  # [B, KV, G, hd]
        scores = jnp.sum(qv[:, :, :, :, None] * k[:, :, None, :, :].astype(jnp.float32), axis=3)[:, :, :, None]
    else:
        scores = jnp.einsum("bqkgd,bkds->bkgqs", qg, k, preferred_element_type=jnp.float32)
    scores = scores * (1.0 / math.sqrt(d))
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    if lq == 1 and not _on_gpu():
        out = jnp.sum(probs[:, :, :, 0, :, None] * v[:, :, None, :, :].astype(jnp.float32), axis=3)  # [B,KV,G,hd]
        return out[:, None].astype(v.dtype).reshape(b, lq, h, d)
    return jnp.einsum("bkgqs,bksd->bqkgd", probs.astype(v.dtype), v).reshape(b, lq, h, d)


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, spec: ModelSpec, *, rngs: nnx.Rngs, stack: int = 0, adapter_rngs: nnx.Rngs | None = None):
        d, f, std, pdt = spec.d_model, spec.d_ff, spec.init_std, spec.pdtype
        ar = rngs if adapter_rngs is None else adapter_rngs
        gate = param(rngs, (d, f), ("embed", "mlp"), std, pdt, stack)
        up = param(rngs, (d, f), ("embed", "mlp"), std, pdt, stack)
        down = param(rngs, (f, d), ("mlp", "embed"), std / math.sqrt(2 * spec.n_layers), pdt, stack)
        self.gate_proj = lora_proj(spec, "gate_proj", gate, rngs=ar)
        self.up_proj = lora_proj(spec, "up_proj", up, rngs=ar)
        self.down_proj = lora_proj(spec, "down_proj", down, rngs=ar)

    def __call__(self, x):
        gate = self.gate_proj(x, "...d,df->...f")
        up = self.up_proj(x, "...d,df->...f")
        return self.down_proj(jax.nn.silu(gate) * up, "...f,fd->...d")
