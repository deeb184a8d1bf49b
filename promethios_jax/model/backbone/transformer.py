"""Llama decoder blocks, stacked per segment, and the scan that runs them.

A segment is a run of consecutive layers between anchor layers; its parameters are
stacked along a leading "layers" axis and the segment runs as one `jax.lax.scan` (or a
Python loop with scan_layers=False). Separate stacks per segment, rather than slicing one
[n_layers, ...] stack, keep XLA from copying the weights into each scan (measured: slicing
costs about 1.7x the stack in temporaries for the gradient).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from promethios_jax.model.layers import MLP, Attention, RMSNorm
from promethios_jax.model.spec import REMAT_POLICIES, ModelSpec


@dataclasses.dataclass
class Context:
    """Per-call values every layer shares (closed over by the scan body, not scanned)."""
    cos: Any  # [B, L, hd] float32
    sin: Any
    q_idx: Any  # [L] or [B, L]: query rows' indices in the (cached) sequence, for causality
    kv_idx: Any  # [Lk] or [B, Lk]
    q_seg: Any  # [B, L] segment ids or None
    kv_seg: Any  # [B, Lk] or None
    impl: str
    cache_index: Any = None  # where this chunk's keys/values go in the cache: scalar or [B]
    max_segments: int | None = None  # bound on runs of equal segment ids per row (cuDNN's packed layout)


class DecoderBlock(nnx.Module):
    """x + attn(norm(x)), then + mlp(norm(x)); built with `stack` layers' parameters."""

    def __init__(self, spec: ModelSpec, *, rngs: nnx.Rngs, stack: int = 0, adapter_rngs: nnx.Rngs | None = None):
        self.input_layernorm = RMSNorm(spec.d_model, spec.norm_eps, dtype=spec.pdtype, stack=stack)
        self.self_attn = Attention(spec, rngs=rngs, stack=stack, adapter_rngs=adapter_rngs)
        self.post_attention_layernorm = RMSNorm(spec.d_model, spec.norm_eps, dtype=spec.pdtype, stack=stack)
        self.mlp = MLP(spec, rngs=rngs, stack=stack, adapter_rngs=adapter_rngs)

    def __call__(self, h, ctx: Context, cache=None):
        a, cache = self.self_attn(self.input_layernorm(h), ctx, cache)
        h = h + a
        h = h + self.mlp(self.post_attention_layernorm(h))
        return h, cache


def remat_policy(name: str):
    """(use_remat, policy) for config.model.remat_policy (spec.REMAT_POLICIES): "full"
    saves nothing and recomputes the whole layer in the backward pass; the other names
    are jax.checkpoint_policies."""
    if name not in REMAT_POLICIES:
        raise ValueError(f"remat_policy={name!r}: use one of {list(REMAT_POLICIES)}")
    if name == "none":
        return False, None
    return True, None if name == "full" else getattr(jax.checkpoint_policies, name)


def run_segment(stack: DecoderBlock, h, ctx: Context, head_positions, spec: ModelSpec, cache=None,
                remat: str = "none", scan: bool = True):
    """Runs one segment's layers over h [B, L, D].

    Returns (h, reads, cache): reads [n, B, S, D] is each layer's output gathered at
    head_positions [B, S] (the heads pool layer ranges without keeping [n, B, L, D]).
    cache is None or the segment's layers' caches, a list of {"k", "v"} [B, KV, Lc, hd]
    (model.init_cache), returned updated: with a cache the layers run unrolled, each on its
    own buffer, so the writes stay in place (a scan over a stacked cache copies it).
    """
    graphdef, state = nnx.split(stack)
    dtype = spec.dtype
    rows = jnp.arange(h.shape[0])[:, None]

    def body(h, xs):
        layer_state, layer_cache = xs
        # Cast this layer's float32 master weights to the compute dtype here, inside the
        # scan, so only one layer's cast copy is live at a time.
        layer_state = jax.tree.map(lambda p: p.astype(dtype), layer_state)
        h, layer_cache = nnx.merge(graphdef, layer_state)(h, ctx, layer_cache)
        return h, (h[rows, head_positions], layer_cache)

    use_remat, policy = remat_policy(remat)
    if use_remat:
        body = jax.checkpoint(body, policy=policy, prevent_cse=not scan)

    if scan and cache is None:
        h, (reads, _) = jax.lax.scan(body, h, (state, None))
        return h, reads, None

    n = jax.tree.leaves(state)[0].shape[0]
    reads, caches = [], []
    for i in range(n):
        layer_state = jax.tree.map(lambda x: x[i], state)
        h, (r, c) = body(h, (layer_state, None if cache is None else cache[i]))
        reads.append(r)
        caches.append(c)
    return h, jnp.stack(reads), (None if cache is None else caches)
