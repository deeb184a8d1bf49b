"""The multi-objective loss: LM cross-entropy on response tokens plus the governance heads.

Split in sums and counts so that gradient accumulation is exact: the train step takes the
counts over the whole global batch and each micro-batch contributes sums / counts.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from promethios_jax.model import heads as heads_lib

PARTS = heads_lib.LOSS_PARTS  # lm, then each registry head


def _f32(x):
    return jnp.asarray(x, jnp.float32)


def _label_mask(batch, key, kind):
    """Which head slots count for a part: real examples (head_mask), and for class labels
    only those with a label (a negative label means unknown)."""
    mask = _f32(batch["head_mask"])
    if kind in ("binary", "softmax"):
        mask = mask * (jnp.asarray(batch[key]) >= 0)
    return mask


def lm_token_losses(logits, targets):
    """-log p(target) per position, float32 [B, L]."""
    logits = _f32(logits)
    logz = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, jnp.asarray(targets)[..., None], axis=-1)[..., 0]
    return logz - target_logit


def _head_losses(logits, labels, kind):
    """Per-slot loss [B, S] (summed over dimensions for the multi-label heads)."""
    logits = _f32(logits)
    if kind == "binary":  # sigmoid cross-entropy: softplus(x) - y x
        y = _f32(jnp.maximum(labels, 0))
        return jax.nn.softplus(logits) - y * logits
    if kind == "softmax":
        y = jnp.maximum(jnp.asarray(labels), 0)
        return jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, y[..., None], axis=-1)[..., 0]
    if kind == "soft_multilabel":  # per-dimension sigmoid cross-entropy with targets in [0, 1]
        y = _f32(labels)
        return jnp.sum(jax.nn.softplus(logits) - y * logits, axis=-1)
    raise ValueError(kind)


def loss_sums(outputs, batch) -> dict:
    """Summed (not averaged) loss of each part over this batch; see loss_counts."""
    sums = {"lm": jnp.sum(lm_token_losses(outputs.logits, batch["targets"]) * _f32(batch["loss_mask"]))}
    for h in heads_lib.HEADS:
        if h.label_key not in batch:
            sums[h.name] = jnp.zeros((), jnp.float32)
            continue
        per_slot = _head_losses(outputs.heads[h.name], batch[h.label_key], h.kind)
        sums[h.name] = jnp.sum(per_slot * _label_mask(batch, h.label_key, h.kind))
    return sums


def loss_counts(batch) -> dict:
    """The denominators matching loss_sums: response tokens, and labelled head slots."""
    counts = {"lm": jnp.sum(_f32(batch["loss_mask"]))}
    for h in heads_lib.HEADS:
        key = h.label_key
        counts[h.name] = jnp.sum(_label_mask(batch, key, h.kind)) if key in batch else jnp.zeros((), jnp.float32)
    return counts


def combine(sums, counts, loss_cfg, model=None, num_micro: int = 1):
    """(total, parts): parts[k] = sums[k] / counts[k] (0 where the count is 0).

    total = sum_k w_k parts[k] with w_k = loss_cfg[k]; or, with loss_cfg.uncertainty_weighting,
    Kendall et al.: sum over the parts with w_k > 0 of exp(-s_k) parts[k] + s_k, with the
    learned log-variances s_k of model.loss_log_vars. The s_k term is divided by num_micro
    so that summing the totals of the micro-batches of one step adds it once.
    """
    parts = {}
    for k in PARTS:
        c = _f32(counts[k])
        parts[k] = jnp.where(c > 0, _f32(sums[k]) / jnp.where(c > 0, c, 1.0), 0.0)
    total = jnp.zeros((), jnp.float32)
    if loss_cfg.get("uncertainty_weighting", False):
        log_vars = getattr(model, "loss_log_vars", None)
        if log_vars is None:
            raise ValueError(
                "loss.uncertainty_weighting=True needs the model's learned log-variances: build "
                "GovernanceTransformer from a config whose model.learned_loss_weights is True "
                "(base_config ties it to loss.uncertainty_weighting) and pass model= to combine()")
        for k in PARTS:
            if float(loss_cfg[k]) <= 0:
                continue
            s = getattr(log_vars, k)[...]
            active = _f32(counts[k]) > 0  # no data for a part: do not push its s_k down
            total = total + jnp.where(active, jnp.exp(-s) * parts[k] + s / num_micro, 0.0)
    else:
        for k in PARTS:
            total = total + float(loss_cfg[k]) * parts[k]
    return total, parts
