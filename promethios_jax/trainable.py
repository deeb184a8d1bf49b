"""What trains: a mask over the parameter tree, and an optimizer that leaves the rest alone.

`config.train.trainable` (and each stage's `trains`) is "all" or a "+"-joined list of
groups of the parameter tree:

    lora         the low-rank adapters (lora_a, lora_b) inside the layer stacks (model/lora.py)
    embeddings   embed_tokens, lm_head
    layers       every decoder layer stack (layers_k), adapters excepted
    norm         the final norm
    backbone     embeddings + layers + norm (the Llama part)
    telemetry    telemetry_encoder (anchor conditioning)
    heads        the governance heads and, when learned, the loss weights (loss_log_vars)
    governance   telemetry + heads

so "lora+governance" is LoRA fine-tuning: the whole Llama frozen, its adapters and the
governance parts trained. Frozen parameters hold no optimizer state
(`optax.multi_transform` gives them `set_to_zero`, whose state is empty), get no gradient
(the step differentiates the `split` trainable part only), and keep their exact bits
(`apply_updates` returns them untouched).
"""
from __future__ import annotations

import math
import re

import jax
import optax

from promethios_jax.model.lora import LORA_LEAVES

# A leaf belongs to the first group whose pattern matches its "."-joined path.
GROUPS = {
    "lora": re.compile(rf"^layers_\d+\..*\.({'|'.join(LORA_LEAVES)})$"),
    "embeddings": re.compile(r"^(embed_tokens|lm_head)\."),
    "layers": re.compile(r"^layers_\d+\."),
    "norm": re.compile(r"^norm\."),
    "telemetry": re.compile(r"^telemetry_encoder\."),
    "heads": re.compile(r"^(heads|loss_log_vars)\."),
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


def group_of(path) -> str | None:
    """The group of a leaf at `path` (a key path or tuple of keys), None when none matches."""
    name = ".".join(str(getattr(k, "key", k)) for k in path)
    return next((g for g, pattern in GROUPS.items() if pattern.match(name)), None)


def mask(params: dict, spec: str, key: str = "config.train.trainable") -> dict:
    """A tree of bools shaped like `params`: True where the parameter trains."""
    groups = parse(spec, key)
    leaf_groups = jax.tree_util.tree_map_with_path(lambda path, _: group_of(path), params)
    flat = jax.tree_util.tree_leaves_with_path(params)
    unknown = sorted({jax.tree_util.keystr(p) for p, _ in flat if group_of(p) is None})
    if unknown:
        raise TrainableError(f"parameters {unknown} belong to no trainable group; extend trainable.GROUPS")
    named = {p.strip() for p in spec.split("+")}
    if "lora" in named and "lora" not in jax.tree.leaves(leaf_groups):
        raise TrainableError(f"{key}={spec!r} trains 'lora', but the model has no adapters: set "
                             "config.model.lora_rank > 0")
    out = jax.tree.map(lambda g: g in groups, leaf_groups)
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


def split(params: dict, trainable: dict) -> tuple[dict, dict]:
    """(trainable part, frozen part): `params` twice, with None in place of the other part's
    leaves, so that a gradient taken of the first covers the trainable leaves only."""
    pick = lambda want: jax.tree.map(lambda p, t: p if t == want else None, params, trainable)  # noqa: E731
    return pick(True), pick(False)


def join(train: dict, frozen: dict) -> dict:
    """The inverse of `split` (also for a gradient of the trainable part: frozen leaves then
    come from `frozen`)."""
    return jax.tree.map(lambda a, b: b if a is None else a, train, frozen, is_leaf=lambda x: x is None)


def apply_updates(params: dict, updates: dict, trainable: dict) -> dict:
    """`optax.apply_updates` on the trainable leaves; frozen leaves are returned as they are
    (adding a zero update would still turn -0.0 into 0.0)."""
    return jax.tree.map(lambda p, u, t: optax.apply_updates(p, u) if t else p, params, updates, trainable)


def count(params: dict, trainable: dict) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    sizes = jax.tree.map(lambda p: math.prod(p.shape), params)
    on = sum(s for s, t in zip(jax.tree.leaves(sizes), jax.tree.leaves(trainable)) if t)
    return on, sum(jax.tree.leaves(sizes))
