"""What trains: a mask over the parameter tree, and an optimizer that leaves the rest alone.

`config.train.trainable` (and each stage's `trains`) is "all" or a "+"-joined list of
groups of the parameter tree's top-level entries:

    embeddings   embed_tokens, lm_head
    layers       every decoder layer stack (layers_k)
    norm         the final norm
    backbone     embeddings + layers + norm (the Llama part)
    telemetry    telemetry_encoder (anchor conditioning)
    heads        the governance heads and, when learned, the loss weights (loss_log_vars)
    governance   telemetry + heads

Frozen parameters hold no optimizer state (`optax.multi_transform` gives them
`set_to_zero`, whose state is empty), get no gradient computed for them
(`stop_frozen`), and keep their exact bits (`apply_updates` returns them untouched).
"""
from __future__ import annotations

import math
import re

import jax
import optax

GROUPS = {
    "embeddings": re.compile(r"^(embed_tokens|lm_head)$"),
    "layers": re.compile(r"^layers_\d+$"),
    "norm": re.compile(r"^norm$"),
    "telemetry": re.compile(r"^telemetry_encoder$"),
    "heads": re.compile(r"^(heads|loss_log_vars)$"),
}
ALIASES = {
    "all": tuple(GROUPS),
    "backbone": ("embeddings", "layers", "norm"),
    "governance": ("telemetry", "heads"),
}
TRAIN, FREEZE = "train", "freeze"


class TrainableError(ValueError):
    """A trainable-parts spec that names no known group, or selects nothing."""


def parse(spec: str, key: str = "config.train.trainable") -> tuple[str, ...]:
    """The groups a spec names, e.g. "heads+telemetry" -> ("heads", "telemetry")."""
    if not isinstance(spec, str) or not spec.strip():
        raise TrainableError(f"{key}={spec!r}: give 'all' or groups joined by '+' ({_known()})")
    groups: list[str] = []
    for part in (p.strip() for p in spec.split("+")):
        if part in ALIASES:
            groups += ALIASES[part]
        elif part in GROUPS:
            groups.append(part)
        else:
            raise TrainableError(f"{key}={spec!r}: unknown part {part!r}; known: {_known()}")
    return tuple(dict.fromkeys(groups))


def _known() -> str:
    return ", ".join([*ALIASES, *GROUPS])


def mask(params: dict, spec: str, key: str = "config.train.trainable") -> dict:
    """A tree of bools shaped like `params`: True where the parameter trains."""
    groups = parse(spec, key)
    unknown = [k for k in params if not any(GROUPS[g].match(k) for g in GROUPS)]
    if unknown:
        raise TrainableError(f"parameters {unknown} belong to no trainable group; extend trainable.GROUPS")
    out = {}
    for k, subtree in params.items():
        trains = any(GROUPS[g].match(k) for g in groups)
        out[k] = jax.tree.map(lambda _, t=trains: t, subtree)
    if not any(jax.tree.leaves(out)):
        raise TrainableError(f"{key}={spec!r} selects no parameter of this model")
    return out


def labels(trainable: dict) -> dict:
    return jax.tree.map(lambda t: TRAIN if t else FREEZE, trainable)


def masked(tx: optax.GradientTransformation, trainable: dict) -> optax.GradientTransformation:
    """`tx` for the trainable leaves; frozen leaves get zero updates and no state.

    With everything trainable this is `tx` itself, so the state of a plain run keeps its shape."""
    if all(jax.tree.leaves(trainable)):
        return tx
    return optax.multi_transform({TRAIN: tx, FREEZE: optax.set_to_zero()}, labels(trainable))


def mask_like_state(tree, trainable: dict, is_leaf=None):
    """`tree` (shaped like the params) as the masked optimizer's param-shaped states are:
    frozen leaves replaced by `optax.MaskedNode()` (unchanged when everything trains)."""
    if all(jax.tree.leaves(trainable)):
        return tree
    return jax.tree.map(lambda x, t: x if t else optax.MaskedNode(), tree, trainable, is_leaf=is_leaf)


def stop_frozen(params: dict, trainable: dict) -> dict:
    """Frozen leaves behind `stop_gradient`, so that no gradient is computed for them."""
    return jax.tree.map(lambda p, t: p if t else jax.lax.stop_gradient(p), params, trainable)


def apply_updates(params: dict, updates: dict, trainable: dict) -> dict:
    """`optax.apply_updates` on the trainable leaves; frozen leaves are returned as they are
    (adding a zero update would still turn -0.0 into 0.0)."""
    return jax.tree.map(lambda p, u, t: optax.apply_updates(p, u) if t else p, params, updates, trainable)


def count(params: dict, trainable: dict) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    sizes = jax.tree.map(lambda p: math.prod(p.shape), params)
    on = sum(s for s, t in zip(jax.tree.leaves(sizes), jax.tree.leaves(trainable)) if t)
    return on, sum(jax.tree.leaves(sizes))
