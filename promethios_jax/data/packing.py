"""Packing examples into rows: fitting an example to the row length, the per-epoch
packing plan, and writing an example into a batch row (data/batch.py's fields).

The prompt (<bos>, request, tags, <assess>; tags first in the older layout) is never
cut: it is exactly the prompt that generation and serving build, so nothing about the
response, its length included, reaches the heads. An example longer than `max_seq_len`
loses the tail of its response only; `fit` returns None for one whose prompt leaves no
room for a response token.
"""
from __future__ import annotations

import numpy as np

from promethios_jax.data import schema
from promethios_jax.data.tokenizer import encode_example_arrays

PACK_WINDOW = 16  # open rows first-fit considers; older rows are closed


def fit(prompt_len: int, response_len: int, max_len: int) -> int | None:
    """Response tokens kept so that the whole prompt and the response fit `max_len`.

    The prompt is never cut; None when not even one response token fits after it.
    """
    room = max_len - prompt_len
    if room < 1:
        return None
    return min(response_len, room)


def encode_fitted(rec: dict, tokenizer, max_len: int):
    """(prompt, response) ids fitted to `max_len`, or None if the example cannot fit."""
    prompt, response = encode_example_arrays(rec, tokenizer)
    keep = fit(len(prompt), len(response), max_len)
    if keep is None:
        return None
    return prompt, response[:keep]


def _labels(rec: dict) -> tuple:
    lab = rec["labels"]
    return (int(lab["hitl"]), schema.DECISIONS.index(lab["decision"]),
            schema.CONFIDENCE_BANDS.index(lab["confidence"]), schema.TOOLS.index(lab["tool"]),
            schema.CONFLICTS.index(lab["conflict"]),
            [float(lab["uncertainty"][k]) for k in schema.UNCERTAINTY_DIMS],
            [float(lab["bias"][k]) for k in schema.BIAS_CATEGORIES])


def place(out: dict, row: int, slot: int, offset: int, seg_id: int, rec: dict, prompt, response) -> int:
    """Writes one example into `out[row]` at `offset` as segment `seg_id`; returns its length."""
    n_p, n = len(prompt), len(prompt) + len(response)
    end = offset + n
    tok = out["tokens"][row]
    tok[offset:offset + n_p] = prompt
    tok[offset + n_p:end] = response
    out["targets"][row, offset:end - 1] = tok[offset + 1:end]  # the last target stays <pad>, unmasked
    out["loss_mask"][row, offset + n_p - 1:end - 1] = 1.0  # targets that are response tokens
    out["segment_ids"][row, offset:end] = seg_id
    out["positions"][row, offset:end] = np.arange(n, dtype=np.int32)
    out["telemetry"][row, offset:end] = schema.telemetry_vector(rec["telemetry"], rec["domain"])
    out["head_positions"][row, slot] = offset + n_p - 1  # the <assess> token
    out["head_mask"][row, slot] = 1.0
    hitl, decision, confidence, tool, conflict, unc, bias = _labels(rec)
    out["hitl"][row, slot], out["decision"][row, slot] = hitl, decision
    out["confidence"][row, slot], out["tool"][row, slot], out["conflict"][row, slot] = confidence, tool, conflict
    out["uncertainty"][row, slot], out["bias"][row, slot] = unc, bias
    return n


def pack_plan(lengths: np.ndarray, seed: int, epoch: int, max_len: int, max_segments: int,
              window: int = PACK_WINDOW, order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One epoch's rows as CSR (members, row_starts): first-fit over a seeded shuffle, or
    over `order` (an epoch's example indices, repeats allowed: a stage's category mix).

    `lengths[i] <= 0` marks an example that is skipped. Rows are numbered in the order
    they open; members keep their insertion order.
    """
    lengths = np.asarray(lengths)
    if order is None:
        order = np.random.default_rng([int(seed), int(epoch)]).permutation(len(lengths))
    order = np.asarray(order, np.int64)
    order = order[lengths[order] > 0]
    lens = lengths.tolist()
    min_len = int(lengths[lengths > 0].min()) if len(order) else 1
    rows: list[list[int]] = []
    space: list[int] = []
    opened: list[int] = []
    for i in order.tolist():
        n = lens[i]
        for r in opened:
            if space[r] >= n:
                rows[r].append(i)
                space[r] -= n
                if space[r] < min_len or len(rows[r]) >= max_segments:
                    opened.remove(r)
                break
        else:
            rows.append([i])
            space.append(max_len - n)
            if space[-1] >= min_len and max_segments > 1:
                opened.append(len(rows) - 1)
                if len(opened) > window:
                    opened.pop(0)
    starts = np.zeros(len(rows) + 1, np.int64)
    starts[1:] = np.cumsum([len(r) for r in rows])
    members = np.fromiter((i for r in rows for i in r), np.int64, count=int(starts[-1]))
    return members, starts
