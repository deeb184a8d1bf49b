"""AdamW with its moments kept in a chosen dtype.

Full fine-tuning keeps fp32 master weights, gradients and two Adam moments: about 16
bytes per parameter. Keeping both moments in bfloat16 brings that to 12 (the lever that
fits CodeLlama-34B on 8 x 80 GB, see configs/finetune_codellama_34b.py). The moment
update itself runs in float32; only the stored state is rounded.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

MOMENT_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class ScaleByAdamState(NamedTuple):
    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates


def scale_by_adam(b1: float, b2: float, eps: float, dtype=jnp.bfloat16) -> optax.GradientTransformation:
    """optax.scale_by_adam with `mu` and `nu` stored in `dtype`."""

    def init(params):
        zeros = lambda p: jnp.zeros(p.shape, dtype)  # noqa: E731
        return ScaleByAdamState(jnp.zeros((), jnp.int32), jax.tree.map(zeros, params),
                                jax.tree.map(zeros, params))

    def update(updates, state, params=None):
        del params
        count = optax.safe_increment(state.count)
        mu = jax.tree.map(lambda m, g: b1 * m.astype(jnp.float32) + (1 - b1) * g.astype(jnp.float32),
                          state.mu, updates)
        nu = jax.tree.map(lambda v, g: b2 * v.astype(jnp.float32) + (1 - b2) * jnp.square(g.astype(jnp.float32)),
                          state.nu, updates)
        c1 = 1 - b1 ** count.astype(jnp.float32)
        c2 = 1 - b2 ** count.astype(jnp.float32)
        out = jax.tree.map(lambda m, v, g: ((m / c1) / (jnp.sqrt(v / c2) + eps)).astype(g.dtype), mu, nu, updates)
        cast = lambda t: jax.tree.map(lambda x: x.astype(dtype), t)  # noqa: E731
        return out, ScaleByAdamState(count, cast(mu), cast(nu))

    return optax.GradientTransformation(init, update)


def adamw(learning_rate, *, b1: float, b2: float, eps: float, weight_decay: float, mask=None,
          moments_dtype: str = "float32") -> optax.GradientTransformation:
    """optax.adamw, or the same update with moments stored in `moments_dtype`."""
    if moments_dtype not in MOMENT_DTYPES:
        raise ValueError(f"config.train.moments_dtype={moments_dtype!r}: use one of {', '.join(MOMENT_DTYPES)}")
    if moments_dtype == "float32":
        return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=mask)
    return optax.chain(scale_by_adam(b1, b2, eps, MOMENT_DTYPES[moments_dtype]),
                       optax.add_decayed_weights(weight_decay, mask),
                       optax.scale_by_learning_rate(learning_rate))
