"""Gradient accumulation: one optimizer step over `n` micro-batches of the global batch.

Micro-batch i takes rows i, i+n, i+2n, ...: every device keeps an equal share of each
(the rows stay where the batch sharding put them). The loss parts are sums divided by
counts over the *whole* global batch, so summing the micro-batches' values is exact:
accumulation equals one large batch.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def split_micro(batch: dict, n: int, shardings: dict) -> dict:
    """[B, ...] -> [n, B/n, ...]; `shardings` (data.batch.micro_shardings) keeps the row
    axis sharded as the batch is."""
    def split(k, x):
        x = x.reshape((x.shape[0] // n, n) + x.shape[1:]).swapaxes(0, 1)
        return jax.lax.with_sharding_constraint(x, shardings[k])

    return {k: split(k, x) for k, x in batch.items()}


def accumulate(grad_fn, params, batch: dict, n: int, micro_shardings: dict | None = None):
    """((loss, parts), grads) summed over `n` micro-batches; `grad_fn(params, micro_batch)`
    returns ((loss, parts), grads) as `jax.value_and_grad(..., has_aux=True)` does."""
    if n == 1:
        return grad_fn(params, batch)
    micro = split_micro(batch, n, micro_shardings)
    shapes = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def body(acc, mb):
        return jax.tree.map(jnp.add, acc, grad_fn(params, mb)), None

    total, _ = jax.lax.scan(body, zeros, micro)
    return total
