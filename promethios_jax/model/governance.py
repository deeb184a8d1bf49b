"""The governance parts: telemetry conditioning at the anchor layers, and the heads.

These sit beside the Llama backbone and never change it: with no telemetry the model's
logits are the backbone's, and the heads only read hidden states.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from promethios_jax.model import heads as heads_lib
from promethios_jax.model.layers import RMSNorm, param
from promethios_jax.model.spec import ModelSpec


class Dense(nnx.Module):
    """x @ kernel + bias (the governance parts are small; biases help them)."""

    def __init__(self, rngs, d_in, d_out, names, std, dtype=jnp.float32, stack: int = 0):
        self.kernel = param(rngs, (d_in, d_out), names, std, dtype, stack=stack)
        self.bias = param(None, (d_out,), names[1:], None, dtype, stack=stack)

    def __call__(self, x):
        return x @ self.kernel[...].astype(x.dtype) + self.bias[...].astype(x.dtype)


class TelemetryEncoder(nnx.Module):
    """telemetry [B, L, T] → one d_model signal per anchor layer, added to the residual
    stream entering that layer.

    A shared MLP trunk (T → hidden, silu) feeds one projection per anchor, stacked along
    a leading axis. The projections start small (std init_std / sqrt(hidden), so each
    anchor adds about init_std/2 per unit: below the embedding scale) so that
    conditioning cannot swamp the pretrained residual stream at the start of training.
    """

    def __init__(self, spec: ModelSpec, *, rngs: nnx.Rngs):
        t, w, d = spec.telemetry_dim, spec.telemetry_width, spec.d_model
        self.fc1 = Dense(rngs, t, w, ("telemetry", "mlp"), 1.0 / math.sqrt(t), spec.pdtype)
        self.anchor_proj = Dense(rngs, w, d, ("mlp", "embed"), spec.init_std / math.sqrt(w), spec.pdtype,
                                 stack=len(spec.anchors))

    def __call__(self, telemetry, dtype):
        """Returns [n_anchors, B, L, D] in `dtype`."""
        hidden = jax.nn.silu(self.fc1(telemetry.astype(jnp.float32))).astype(dtype)
        kernel = self.anchor_proj.kernel[...].astype(dtype)  # [A, W, D]
        bias = self.anchor_proj.bias[...].astype(dtype)  # [A, D]
        return jnp.einsum("blw,awd->abld", hidden, kernel) + bias[:, None, None, :]


class Head(nnx.Module):
    """A two-layer MLP classifier: D (or 2D with the prompt mean) → hidden (silu) → classes,
    with an optional input norm for heads that read pooled, un-normalized residual states."""

    def __init__(self, spec: ModelSpec, n_out: int, *, rngs: nnx.Rngs, norm: bool = False, prompt: bool = False):
        d, w = spec.d_model, spec.head_width
        d_in = 2 * d if prompt else d
        self.norm = RMSNorm(d, spec.norm_eps, dtype=spec.pdtype) if norm else None
        self.fc1 = Dense(rngs, d_in, w, ("embed", "mlp"), 1.0 / math.sqrt(d_in), spec.pdtype)
        self.fc2 = Dense(rngs, w, n_out, ("mlp", "classes"), spec.init_std, spec.pdtype)

    def __call__(self, x, prompt_mean=None):
        # Heads run in float32: they are tiny, and their probabilities are what gets calibrated.
        x = x.astype(jnp.float32)
        if self.norm is not None:
            x = self.norm(x)
        if prompt_mean is not None:
            x = jnp.concatenate([x, prompt_mean.astype(jnp.float32)], axis=-1)
        return self.fc2(jax.nn.silu(self.fc1(x)))


class GovernanceHeads(nnx.Module):
    """One `Head` per entry of the heads registry: a head with `pools` reads the mean of
    its layer range's outputs at the head positions (through its own input norm), the
    others read the final normed state there."""

    def __init__(self, spec: ModelSpec, *, rngs: nnx.Rngs):
        self.spec = spec
        for h in heads_lib.build_order():
            setattr(self, h.name, Head(spec, h.width(spec), rngs=rngs, norm=h.pools is not None,
                                       prompt=h.reads_prompt))

    def __call__(self, final, layer_reads, prompt_mean) -> dict:
        """final [B, S, D] (normed); layer_reads [n_layers, B, S, D] (each layer's output);
        prompt_mean [B, S, D] (`prompt_means`), read by heads with `reads_prompt`.
        Returns {head name: logits [B, S, width]}, a binary head's logit squeezed to [B, S]."""
        out = {}
        for h in heads_lib.HEADS:
            x = final
            if h.pools is not None:
                lo, hi = getattr(self.spec, h.pools)  # 1-based inclusive -> layer_reads[lo-1 : hi]
                x = jnp.mean(layer_reads[lo - 1:hi].astype(jnp.float32), axis=0)
            logits = getattr(self, h.name)(x, prompt_mean if h.reads_prompt else None)
            out[h.name] = logits[..., 0] if h.kind == "binary" else logits
        return out


def prompt_means(hn, segment_ids, head_positions):
    """[B, S, D] float32: per head slot, the mean of the normed final states `hn` [B, L, D]
    over its example's prompt: the positions up to its head position (the <assess> token)
    in the same segment (segment_ids [B, L], None: one example per row, nothing before it
    is padding). Left padding has segment id 0 and is left out with it."""
    length = hn.shape[1]
    mask = jnp.arange(length)[None, None, :] <= head_positions[:, :, None]  # [B, S, L]
    if segment_ids is not None:
        own = jnp.take_along_axis(segment_ids, head_positions, axis=1)  # [B, S]
        mask &= segment_ids[:, None, :] == own[:, :, None]
    w = mask.astype(jnp.float32)
    w = w / jnp.maximum(w.sum(-1, keepdims=True), 1.0)
    return jnp.einsum("bsl,bld->bsd", w, hn.astype(jnp.float32))


class LossLogVars(nnx.Module):
    """Learned log-variances s_k (Kendall, Gal & Cipolla 2018), one scalar per loss part."""

    def __init__(self):
        for k in heads_lib.LOSS_PARTS:
            setattr(self, k, nnx.Param(jnp.zeros((), jnp.float32), out_sharding=()))
