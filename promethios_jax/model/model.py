"""GovernanceTransformer: a Llama backbone with telemetry conditioning and governance heads.

Parameter tree (nnx.split(model, nnx.Param)); segment k holds layers segments[k] stacked:
  embed_tokens.embedding                              [V, D]          (vocab, embed)
  layers_k.input_layernorm.scale                      [n, D]          (layers, embed)
  layers_k.self_attn.{q,k,v}_proj.kernel              [n, D, H|KV, hd](layers, embed, heads|kv_heads, head_dim)
  layers_k.self_attn.o_proj.kernel                    [n, H, hd, D]   (layers, heads, head_dim, embed)
  layers_k.post_attention_layernorm.scale             [n, D]
  layers_k.mlp.{gate,up}_proj.kernel                  [n, D, F]       (layers, embed, mlp)
  layers_k.mlp.down_proj.kernel                       [n, F, D]       (layers, mlp, embed)
  layers_k.<block>.<proj>.lora_{a,b}                  [n, in.., r], [n, r, out..] (only with LoRA, model/lora.py)
  norm.scale                                          [D]
  lm_head.kernel                                      [D, V]          (absent when tie_embeddings)
  telemetry_encoder.fc1.{kernel,bias}                 [T, W], [W]
  telemetry_encoder.anchor_proj.{kernel,bias}         [A, W, D], [A, D]
  heads.<name>.fc{1,2}.{kernel,bias}                 (one per model/heads.py entry; fc1 reads 2D
                                                      where the head also reads the prompt mean)
  heads.<name>.norm.scale                             [D]   (heads that pool a layer range)
  loss_log_vars.<part>                                []              (only with learned loss weights)
"""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from promethios_jax.model.backbone.transformer import Context, DecoderBlock, run_segment
from promethios_jax.model.governance import GovernanceHeads, LossLogVars, TelemetryEncoder, prompt_means
from promethios_jax.model.layers import Proj, RMSNorm, param, rope_tables
from promethios_jax.model.spec import ModelSpec

_ADAPTER_STREAM = 0x10A  # fold_in constant of the adapters' random stream


@flax.struct.dataclass
class ModelOutput:
    logits: jax.Array  # [B, L, V] float32
    heads: dict  # head name (model/heads.py) -> float32 [B, S, width]; a binary head's [B, S]

    def __getattr__(self, name):
        # `out.<head>_logits` reads heads[<head>] (the names the loss and eval used before the registry).
        heads = self.__dict__.get("heads")
        if heads is not None and name.endswith("_logits") and name[:-len("_logits")] in heads:
            return heads[name[:-len("_logits")]]
        raise AttributeError(f"ModelOutput has no attribute {name!r}")


class Embedding(nnx.Module):
    def __init__(self, spec: ModelSpec, *, rngs: nnx.Rngs):
        self.embedding = param(rngs, (spec.vocab_size, spec.d_model), ("vocab", "embed"), spec.init_std, spec.pdtype)

    def __call__(self, tokens, dtype):
        return jnp.take(self.embedding[...], tokens, axis=0).astype(dtype)


def positions_from_segments(segment_ids):
    """Position of each token within its packed example (restarts where the segment id changes)."""
    b, length = segment_ids.shape
    idx = jnp.broadcast_to(jnp.arange(length), (b, length))
    start = jnp.concatenate([jnp.ones((b, 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    first = jax.lax.cummax(jnp.where(start, idx, 0), axis=1)
    return (idx - first).astype(jnp.int32)


def cache_length(cache) -> int:
    """Rows a KV cache holds (init_cache's `length`)."""
    return cache[0]["v"].shape[2]


class GovernanceTransformer(nnx.Module):
    """`model(tokens, telemetry=None, segment_ids=None, positions=None, head_positions=None)`.

    tokens [B, L] int; telemetry [B, L, T] or [B, T] float (None: the pure backbone);
    segment_ids [B, L] (1..k per packed example, 0 = padding; None: one example per row);
    positions [B, L] (None: derived from segment_ids, else 0..L-1); head_positions [B, S]
    (None: the last position, S = 1). Returns a ModelOutput.
    """

    def __init__(self, model_cfg, *, rngs: nnx.Rngs):
        spec = ModelSpec.from_config(model_cfg)
        self.spec = spec
        self.embed_tokens = Embedding(spec, rngs=rngs)
        # Adapters draw from their own stream, so the base weights a seed gives do not depend on LoRA.
        adapter_rngs = nnx.Rngs(params=jax.random.fold_in(rngs.params.key[...], _ADAPTER_STREAM))
        for k, (s, e) in enumerate(spec.segments):
            setattr(self, f"layers_{k}", DecoderBlock(spec, rngs=rngs, stack=e - s, adapter_rngs=adapter_rngs))
        self.norm = RMSNorm(spec.d_model, spec.norm_eps, dtype=spec.pdtype)
        self.lm_head = None if spec.tie_embeddings else Proj(
            param(rngs, (spec.d_model, spec.vocab_size), ("embed", "vocab"), spec.init_std, spec.pdtype))
        self.telemetry_encoder = TelemetryEncoder(spec, rngs=rngs)
        self.heads = GovernanceHeads(spec, rngs=rngs)
        self.loss_log_vars = LossLogVars() if spec.learned_loss_weights else None

    # ----- public entry points ----------------------------------------------------------
    def __call__(self, tokens, telemetry=None, segment_ids=None, positions=None, head_positions=None) -> ModelOutput:
        out, _ = self._forward(tokens, telemetry, segment_ids, positions, head_positions)
        return out

    def init_cache(self, batch: int, length: int, dtype=None) -> list:
        """Zeroed KV cache: per layer {"k" [batch, KV, hd, length], "v" [batch, KV, length, hd]}
        in the compute dtype.

        One array per layer, not a stack per segment: decoding runs the layers unrolled and
        each layer writes its rows in place and reads its own buffer, where slicing a stack
        (or a scan emitting one) copies the whole cache every step. Keys keep length last and
        values keep head_dim last, the contiguous axis of each attention product
        (layers.cached_attention), so neither is ever transposed."""
        spec = self.spec
        dtype = dtype or spec.dtype
        kv, hd = spec.n_kv_heads, spec.hd
        return [{"k": jnp.zeros((batch, kv, hd, length), dtype), "v": jnp.zeros((batch, kv, length, hd), dtype)}
                for _ in range(spec.n_layers)]

    def telemetry_signals(self, telemetry):
        """telemetry [B, L, T], or [B, T] (one vector per row, encoded once: the signal
        broadcasts over positions) → [n_anchors, B, L or 1, D]: what the anchors add, and
        what `decode(..., signals=)` takes instead of telemetry (a server encodes each
        request once, not per token)."""
        telemetry = jnp.asarray(telemetry)
        if telemetry.shape[-1] != self.spec.telemetry_dim:
            raise ValueError(f"telemetry has {telemetry.shape[-1]} features, but config.model.telemetry_dim="
                             f"{self.spec.telemetry_dim}")
        if telemetry.ndim == 2:
            telemetry = telemetry[:, None, :]
        return self.telemetry_encoder(telemetry, self.spec.dtype)

    def decode(self, tokens, cache, cache_index, *, kv_segment_ids=None, segment_ids=None, positions=None,
               telemetry=None, head_positions=None, logits_positions=None, signals=None):
        """Runs tokens [B, l] as cache rows cache_index..cache_index+l-1: cache_index a
        scalar (the same rows for every batch row: prompts are left-padded) or [B] (each row
        at its own position). Queries attend to the cache rows up to their own and, when
        segment ids are given, of the same segment (kv_segment_ids [B, Lc] covers the whole
        cache). logits_positions [B, K] limits the logits to those rows (a prefill needs one;
        the vocabulary projection of a whole prompt is a fifth of its cost at demo size).
        Returns (ModelOutput, new_cache): the cache with the chunk's rows written (donate it
        and the writes are in place). signals: telemetry_signals(telemetry), given instead of
        telemetry."""
        if (segment_ids is None) != (kv_segment_ids is None):
            raise ValueError("decode: give both segment_ids and kv_segment_ids, or neither")
        return self._forward(tokens, telemetry, segment_ids, positions, head_positions, cache=cache,
                             cache_index=cache_index, kv_segment_ids=kv_segment_ids,
                             logits_positions=logits_positions, signals=signals)

    # ----- the forward pass -------------------------------------------------------------
    def _forward(self, tokens, telemetry, segment_ids, positions, head_positions, cache=None, cache_index=None,
                 kv_segment_ids=None, logits_positions=None, signals=None):
        spec = self.spec
        dtype = spec.dtype
        b, length = tokens.shape
        if segment_ids is not None:
            segment_ids = jnp.asarray(segment_ids, jnp.int32)
        # The chunk's rows in the cache: [1 or B, l] (cache_index a scalar or one per row).
        q_idx = None if cache is None else jnp.reshape(jnp.asarray(cache_index), (-1, 1)) + jnp.arange(length)
        if positions is None:
            if cache is not None:
                positions = jnp.broadcast_to(q_idx, (b, length))
            elif segment_ids is not None:
                positions = positions_from_segments(segment_ids)
            else:
                positions = jnp.broadcast_to(jnp.arange(length), (b, length))
        cos, sin = rope_tables(positions, spec)
        if cache is None:
            # A row holds at most one segment per head slot (the pipeline packs that way)
            # plus trailing padding: cuDNN's packed layout needs that bound statically.
            max_segments = None if head_positions is None else jnp.shape(head_positions)[1] + 1
            ctx = Context(cos, sin, jnp.arange(length), jnp.arange(length), segment_ids, segment_ids,
                          spec.attention_impl, max_segments=max_segments)
        else:
            ctx = Context(cos, sin, q_idx, jnp.arange(cache_length(cache)), segment_ids, kv_segment_ids,
                          spec.attention_impl, cache_index=cache_index)
        if head_positions is None:
            head_positions = jnp.full((b, 1), length - 1, jnp.int32)
        head_positions = jnp.asarray(head_positions, jnp.int32)

        h = self.embed_tokens(tokens, dtype)
        if telemetry is not None:
            if signals is not None:
                raise ValueError("give telemetry or its signals, not both")
            signals = self.telemetry_signals(telemetry)
        anchor_of_start = {a - 1: i for i, a in enumerate(spec.anchors)}

        reads, new_cache = [], []
        for k, (s, e) in enumerate(spec.segments):
            if signals is not None and s in anchor_of_start:
                h = h + signals[anchor_of_start[s]]  # conditioning enters layer s+1 (1-based anchor)
            h, r, c = run_segment(getattr(self, f"layers_{k}"), h, ctx, head_positions, spec,
                                  cache=None if cache is None else cache[s:e],
                                  remat=spec.remat_policy if cache is None else "none", scan=spec.scan_layers)
            reads.append(r)
            new_cache += c or []

        hn = self.norm(h)
        if self.lm_head is None:
            kernel = self.embed_tokens.embedding[...].astype(dtype).T
        else:
            kernel = self.lm_head.kernel[...].astype(dtype)
        rows = jnp.arange(b)[:, None]
        at = hn if logits_positions is None else hn[rows, jnp.asarray(logits_positions, jnp.int32)]
        logits = jnp.einsum("bld,dv->blv", at, kernel, preferred_element_type=jnp.float32)
        heads = self.heads(hn[rows, head_positions], jnp.concatenate(reads, axis=0),
                           prompt_means(hn, segment_ids, head_positions))
        out = ModelOutput(logits=logits.astype(jnp.float32), heads=heads)
        return out, (None if cache is None else new_cache)
