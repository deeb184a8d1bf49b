"""A category mix: which examples an epoch draws when a stage weighs the categories.

The pipeline packs the epoch's examples in the order given here instead of a plain
shuffle; like the shuffle, the order is a pure function of (seed, epoch), so the
position stays one integer and resumes exactly.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from promethios_jax.data import schema
from promethios_jax.data.records import DataError


def mix_epoch(categories: Sequence[str], mix: Sequence[tuple], seed: int, epoch: int) -> np.ndarray:
    """One epoch's example indices under a category mix: as many examples as the split
    has, category c taking the share weight_c / sum of weights, drawn without
    replacement from a seeded permutation of its examples (cycled when the share is
    larger than the category). Categories with weight 0 are left out."""
    categories = np.asarray(categories)
    n = len(categories)
    weights = dict(mix)
    total = sum(weights.values())
    present = {c: np.flatnonzero(categories == c) for c in weights if weights[c] > 0}
    empty = [c for c, idx in present.items() if len(idx) == 0]
    if empty:
        raise DataError(f"data_mix asks for category {empty[0]!r}, which the training split does not hold")
    # Largest remainder, so the shares add up to n exactly.
    exact = {c: n * weights[c] / total for c in present}
    counts = {c: int(math.floor(x)) for c, x in exact.items()}
    for c in sorted(exact, key=lambda c: counts[c] - exact[c])[:n - sum(counts.values())]:
        counts[c] += 1
    rng = np.random.default_rng([int(seed), int(epoch), 7])
    parts = []
    for c in schema.CATEGORIES:
        if c not in present:
            continue
        pool = present[c]
        reps = -(-counts[c] // len(pool))
        order = np.concatenate([rng.permutation(pool) for _ in range(reps)]) if reps else pool[:0]
        parts.append(order[:counts[c]])
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)
