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
    """A bias-free projection's weight, as `<name>.kernel` in the param tree."""

    def __init__(self, kernel: nnx.Param):
        self.kernel = kernel


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
    return jax.default_backend() in ("gpu", "cuda", "rocm")


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


def dot_product_attention(q, k, v, *, q_idx, kv_idx, q_seg=None, kv_seg=None, impl: str = "xla"):
    """Causal, segment-aware grouped-query attention.

    q [B, Lq, H, hd]; k, v [B, Lk, KV, hd]; q_idx [Lq] or [B, Lq] and kv_idx [Lk] or [B, Lk]
    are the rows' indices in the (cached) sequence, used for causality; q_seg [B, Lq] and
    kv_seg [B, Lk] are segment ids (None: one document per row). Returns [B, Lq, H, hd].
    """
    if impl == "xla":
        return _attention_xla(q, k, v, attention_mask(q_idx, kv_idx, q_seg, kv_seg))
    if impl == "cudnn":
        return _attention_cudnn(q, k, v, q_seg, kv_seg)
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


def _attention_cudnn(q, k, v, q_seg, kv_seg):
    """cuDNN flash attention via jax.nn.dot_product_attention(implementation="cudnn").

    Packed rows: jax 0.10's public cuDNN path takes `mask` and folds it into the fused
    kernel's additive bias, so the segment mask IS honoured (the [B, 1, L, L] bias costs
    memory but never lets documents see each other). query/key_value_seq_lengths alone
    could only express trailing padding, which is why they are not used for packing.
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
    mask = None
    if q_seg is not None:
        mask = (q_seg[:, :, None] == kv_seg[:, None, :])[:, None]  # [B, 1, Lq, Lk]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True, implementation="cudnn")


class Attention(nnx.Module):
    """Llama self-attention: separate q/k/v/o projections, no biases, RoPE, GQA."""

    def __init__(self, spec: ModelSpec, *, rngs: nnx.Rngs, stack: int = 0):
        d, h, kv, hd, std = spec.d_model, spec.n_heads, spec.n_kv_heads, spec.hd, spec.init_std
        pdt = spec.pdtype
        out_std = std / math.sqrt(2 * spec.n_layers)  # residual-branch outputs, GPT-2 style
        self.q_proj = Proj(param(rngs, (d, h, hd), ("embed", "heads", "head_dim"), std, pdt, stack))
        self.k_proj = Proj(param(rngs, (d, kv, hd), ("embed", "kv_heads", "head_dim"), std, pdt, stack))
        self.v_proj = Proj(param(rngs, (d, kv, hd), ("embed", "kv_heads", "head_dim"), std, pdt, stack))
        self.o_proj = Proj(param(rngs, (h, hd, d), ("heads", "head_dim", "embed"), out_std, pdt, stack))

    def __call__(self, x, ctx, cache=None):
        """x [B, L, D] → [B, L, D]. With cache={"k","v"} [B, Lc, KV, hd], writes this chunk's
        keys/values at ctx.cache_index and attends over the cache; returns (y, new_cache)."""
        q = jnp.einsum("bld,dnh->blnh", x, self.q_proj.kernel[...])
        k = jnp.einsum("bld,dnh->blnh", x, self.k_proj.kernel[...])
        v = jnp.einsum("bld,dnh->blnh", x, self.v_proj.kernel[...])
        q = apply_rope(q, ctx.cos, ctx.sin)
        k = apply_rope(k, ctx.cos, ctx.sin)
        impl = ctx.impl
        if cache is not None:
            k = jax.lax.dynamic_update_slice_in_dim(cache["k"], k.astype(cache["k"].dtype), ctx.cache_index, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(cache["v"], v.astype(cache["v"].dtype), ctx.cache_index, axis=1)
            cache = {"k": k, "v": v}
            impl = "xla"  # one query row against a cache: memory-bound, nothing to gain from flash
        o = dot_product_attention(q, k, v, q_idx=ctx.q_idx, kv_idx=ctx.kv_idx, q_seg=ctx.q_seg,
                                  kv_seg=ctx.kv_seg, impl=impl)
        y = jnp.einsum("blnh,nhd->bld", o, self.o_proj.kernel[...])
        return y, cache


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, spec: ModelSpec, *, rngs: nnx.Rngs, stack: int = 0):
        d, f, std, pdt = spec.d_model, spec.d_ff, spec.init_std, spec.pdtype
        self.gate_proj = Proj(param(rngs, (d, f), ("embed", "mlp"), std, pdt, stack))
        self.up_proj = Proj(param(rngs, (d, f), ("embed", "mlp"), std, pdt, stack))
        self.down_proj = Proj(param(rngs, (f, d), ("mlp", "embed"),
                                               std / math.sqrt(2 * spec.n_layers), pdt, stack))

    def __call__(self, x):
        gate = x @ self.gate_proj.kernel[...]
        up = x @ self.up_proj.kernel[...]
        return (jax.nn.silu(gate) * up) @ self.down_proj.kernel[...]
