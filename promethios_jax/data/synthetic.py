"""Random batches of the declared shape (data/batch.py), for benchmarks and compile checks.

Rows alternate between one document and two (split at SPLIT_FRACTION of the row), so
packing and segment masks are exercised; labels are drawn uniformly from each head's
classes (model/heads.py) and the soft labels from [0, 1].
"""
from __future__ import annotations

import numpy as np

from promethios_jax.data import batch as batch_lib
from promethios_jax.data import schema
from promethios_jax.model import heads as heads_lib
from promethios_jax.model.spec import ModelSpec

# Two documents per odd row, split at this fraction of the row.
SPLIT_FRACTION = 5 / 8


def _doc_spans(length: int, row: int, slots: int) -> list[tuple[int, int]]:
    if row % 2 == 0 or slots < 2 or length < 8:
        return [(0, length)]
    cut = int(length * SPLIT_FRACTION)
    return [(0, cut), (cut, length)]


def label_classes(spec: ModelSpec) -> dict:
    """{batch key: classes} of every class label: the heads' (registry order), then conflict."""
    classes = {h.label_key: h.num_classes(spec) for h in heads_lib.HEADS if h.num_classes(spec)}
    classes["conflict"] = len(schema.CONFLICTS)
    return classes


def batch(config, seed: int = 0) -> dict:
    """A global batch of numpy arrays with data.batch's shapes and dtypes."""
    spec = ModelSpec.from_config(config.model)
    sizes = batch_lib.sizes(config)
    b, length, s = sizes["batch"], sizes["length"], sizes["segments"]
    rng = np.random.default_rng(seed)
    out = batch_lib.empty(b, length, s)
    out["tokens"] = rng.integers(0, spec.vocab_size, (b, length), dtype=np.int32)
    classes = label_classes(spec)
    soft = [h.label_key for h in heads_lib.HEADS if h.kind == "soft_multilabel"]
    for row in range(b):
        for slot, (start, end) in enumerate(_doc_spans(length, row, s)):
            n = end - start
            prompt = max(1, n // 4)
            out["targets"][row, start:end - 1] = out["tokens"][row, start + 1:end]
            out["loss_mask"][row, start + prompt - 1:end - 1] = 1.0
            out["segment_ids"][row, start:end] = slot + 1
            out["positions"][row, start:end] = np.arange(n, dtype=np.int32)
            out["telemetry"][row, start:end] = rng.random(sizes["telemetry"], dtype=np.float32)
            out["head_positions"][row, slot] = start + prompt - 1
            out["head_mask"][row, slot] = 1.0
            for key, k in classes.items():
                out[key][row, slot] = rng.integers(0, k)
            for key in soft:
                out[key][row, slot] = rng.random(out[key].shape[-1], dtype=np.float32)
    return out
