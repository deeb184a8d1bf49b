"""KV-cache generation with the governance verdict read at the end of each prompt.

Prompts are left-padded to one length so that every row writes the same cache row at each
step; padding is segment 0 (invisible to real tokens) and positions restart at 0 at each
prompt's first real token, so a padded row computes what the prompt computes alone.
The prompt is prefilled in one call, then one token per step with a jitted step function.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from promethios_jax.model import heads as heads_lib
from promethios_jax.model import model as model_lib


@dataclasses.dataclass
class GenerationResult:
    prompt_ids: list  # the prompt as given
    ids: list  # generated ids, without the eos
    text: str | None  # tokenizer.decode(ids), when a tokenizer is given
    stop_reason: str  # "eos" | "length"
    escalate: bool  # the escalation head's probability >= hitl_threshold
    # Every registry head's reading at the last prompt token (heads.verdict): hitl_prob,
    # decision and decision_probs, ..., uncertainty and bias (sigmoid per dimension).
    verdict: dict

    def __getattr__(self, name):
        verdict = self.__dict__.get("verdict")
        if verdict is not None and name in verdict:
            return verdict[name]
        raise AttributeError(f"GenerationResult has no attribute {name!r}")

    def to_dict(self) -> dict:
        """Flat: the fields above with the verdict's keys in place of `verdict`."""
        out = dataclasses.asdict(self)
        out.update(out.pop("verdict"))
        return out


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def sample_token(logits, rng, temperature, top_p):
    """Greedy where temperature == 0, else nucleus sampling at that temperature. logits [B, V]."""
    logits = logits.astype(jnp.float32)
    greedy = jnp.argmax(logits, axis=-1)
    scaled = logits / jnp.maximum(temperature, 1e-6)
    order = jnp.argsort(-scaled, axis=-1)
    sorted_logits = jnp.take_along_axis(scaled, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    # Keep the smallest prefix whose mass reaches top_p (always the top token).
    keep_sorted = (jnp.cumsum(probs, axis=-1) - probs) < top_p
    keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
    sampled = jax.random.categorical(rng, jnp.where(keep, scaled, -jnp.inf), axis=-1)
    return jnp.where(temperature > 0, sampled, greedy).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=(0,))
def _prefill(graphdef, state, tokens, segment_ids, positions, telemetry, cache, rng, temperature, top_p):
    model = nnx.merge(graphdef, state)
    last = jnp.full((tokens.shape[0], 1), tokens.shape[1] - 1, jnp.int32)
    out, cache = model.decode(tokens, cache, 0, kv_segment_ids=_kv_segments(segment_ids, cache),
                              segment_ids=segment_ids, positions=positions, telemetry=telemetry,
                              logits_positions=last)
    token = sample_token(out.logits[:, -1], rng, temperature, top_p)
    # The heads read at the last prompt row (head_positions=None), which left padding
    # makes every prompt's last token.
    heads = {name: logits[:, 0] for name, logits in out.heads.items()}
    return token, heads, cache


def _kv_segments(prompt_segments, cache):
    """Segment ids of every cache row: the prompt's (0 = left padding), then 1 for generated rows."""
    b, p = prompt_segments.shape
    total = model_lib.cache_length(cache)
    return jnp.concatenate([prompt_segments, jnp.ones((b, total - p), jnp.int32)], axis=1)


@functools.partial(jax.jit, static_argnums=(0,), donate_argnums=(7,))
def _step(graphdef, state, token, index, kv_segments, positions, telemetry, cache, rng, temperature, top_p):
    """One token per row at cache row `index`: returns (next token, new cache)."""
    model = nnx.merge(graphdef, state)
    b = token.shape[0]
    out, cache = model.decode(token[:, None], cache, index, kv_segment_ids=kv_segments,
                              segment_ids=jnp.ones((b, 1), jnp.int32), positions=positions[:, None],
                              telemetry=telemetry)
    return sample_token(out.logits[:, -1], rng, temperature, top_p), cache


def generate(model, tokenizer, prompt_ids_batch: Sequence[Sequence[int]], telemetry=None, max_new_tokens: int = 64,
             temperature: float = 0.0, top_p: float = 1.0, rng=None, hitl_threshold: float = 0.5, eos_id=None,
             pad_id=None, bucket: int = 16) -> list[GenerationResult]:
    """Generates up to max_new_tokens per prompt with a KV cache.

    model: a GovernanceTransformer; tokenizer: anything with decode / eos_id / pad_id (or
    None: ids only); prompt_ids_batch: lists of token ids, each ending with the token at
    which the heads read; telemetry: [B, T] per-prompt vectors (or None). Greedy when
    temperature == 0, else nucleus sampling (rng: a jax key, default PRNGKey(0)).
    Stops a row at eos_id (default tokenizer.eos_id). Prompt and cache lengths are
    rounded up to `bucket` so that a few compiled shapes serve all calls.
    """
    prompts = [list(map(int, p)) for p in prompt_ids_batch]
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate: every prompt needs at least one token")
    if eos_id is None and tokenizer is not None:
        eos_id = tokenizer.eos_id
    if pad_id is None:
        pad_id = tokenizer.pad_id if tokenizer is not None else 0
    rng = jax.random.PRNGKey(0) if rng is None else rng
    b = len(prompts)
    p_len = _round_up(max(len(p) for p in prompts), bucket)
    cache_len = p_len + _round_up(max(max_new_tokens, 1), bucket)

    tokens = np.full((b, p_len), pad_id, np.int32)
    segments = np.zeros((b, p_len), np.int32)
    positions = np.zeros((b, p_len), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, p_len - len(p):] = p
        segments[i, p_len - len(p):] = 1
        positions[i, p_len - len(p):] = np.arange(len(p))
    lengths = np.array([len(p) for p in prompts], np.int32)
    if telemetry is not None:
        telemetry = jnp.asarray(telemetry, jnp.float32)
        if telemetry.ndim != 2 or telemetry.shape[0] != b:
            raise ValueError(f"generate: telemetry must be [B={b}, T], got {telemetry.shape}")

    graphdef, state = nnx.split(model)
    cache = model.init_cache(b, cache_len)
    temperature = jnp.float32(temperature)
    top_p = jnp.float32(top_p)
    token, heads, cache = _prefill(graphdef, state, jnp.asarray(tokens), jnp.asarray(segments),
                                   jnp.asarray(positions), telemetry, cache, jax.random.fold_in(rng, 0),
                                   temperature, top_p)
    kv_segments = _kv_segments(jnp.asarray(segments), cache)

    generated = [[] for _ in range(b)]
    done = np.zeros(b, bool)
    stop = ["length"] * b
    for t in range(max_new_tokens):
        host = np.asarray(jax.device_get(token))
        for i in range(b):
            if done[i]:
                continue
            if eos_id is not None and host[i] == eos_id:
                done[i], stop[i] = True, "eos"
            else:
                generated[i].append(int(host[i]))
        if done.all() or t == max_new_tokens - 1:
            break
        # The token sampled at step t sits in cache row p_len + t, at position len(prompt) + t.
        token, cache = _step(graphdef, state, token, jnp.int32(p_len + t), kv_segments,
                             jnp.asarray(lengths + t), telemetry, cache, jax.random.fold_in(rng, t + 1),
                             temperature, top_p)

    heads = jax.device_get(heads)
    results = []
    for i, p in enumerate(prompts):
        verdict = {}
        for h in heads_lib.HEADS:
            verdict.update(heads_lib.verdict(h, heads[h.name][i]))
        results.append(GenerationResult(
            prompt_ids=p, ids=generated[i],
            text=tokenizer.decode(generated[i]) if tokenizer is not None else None,
            stop_reason=stop[i], escalate=verdict[f"{heads_lib.ESCALATION}_prob"] >= hitl_threshold,
            verdict=verdict))
    return results
