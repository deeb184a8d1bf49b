"""Growing the vocabulary of a pretrained parameter tree (embedding and LM-head rows).

New rows start at the mean of the base's rows: a token the model has never seen then
embeds like an average token and gets an average logit, rather than a random direction
and logit (Hewitt, "Initializing new word embeddings for pretrained language models",
2021). The base's rows, and so the ids of its tokens, never change.
"""
from __future__ import annotations

from typing import Iterable

import jax.numpy as jnp
import numpy as np

EMBED_PATH = ("embed_tokens", "embedding")  # [V, D]
LM_HEAD_PATH = ("lm_head", "kernel")  # [D, V], absent when the embeddings are tied


class VocabError(ValueError):
    """A vocabulary change the parameter tree cannot take."""


def _get(tree: dict, path: tuple):
    for k in path:
        if not isinstance(tree, dict) or k not in tree:
            return None
        tree = tree[k]
    return tree


def _with(tree: dict, path: tuple, value) -> dict:
    out = dict(tree)
    out[path[0]] = value if len(path) == 1 else _with(tree[path[0]], path[1:], value)
    return out


def vocab_rows(params: dict) -> int:
    emb = _get(params, EMBED_PATH)
    if emb is None:
        raise VocabError(f"the parameter tree has no {'.'.join(EMBED_PATH)}")
    return int(emb.shape[0])


def _grow(x, axis: int, new_size: int, mean_rows: int, reset_ids: list[int]):
    xp = np if isinstance(x, np.ndarray) else jnp
    base = xp.take(x, xp.arange(mean_rows), axis=axis)
    mean = xp.mean(base.astype(xp.float32), axis=axis, keepdims=True).astype(x.dtype)
    extra = new_size - x.shape[axis]
    shape = list(x.shape)
    shape[axis] = extra
    out = xp.concatenate([x, xp.broadcast_to(mean, shape)], axis=axis)
    if reset_ids:
        idx = np.asarray(reset_ids)
        where = (idx,) if axis == 0 else (slice(None), idx)
        if xp is np:
            out = out.copy()
            out[where] = mean
        else:
            out = out.at[where].set(mean)
    return out


def grow_vocab(params: dict, new_size: int, *, mean_rows: int | None = None,
               reset_ids: Iterable[int] = ()) -> dict:
    """`params` with `new_size` embedding rows (and LM-head columns when untied).

    Rows `>= old size` and the rows in `reset_ids` (added tokens that fall inside the
    base's unused padding rows) are set to the mean of rows `[0, mean_rows)` (default:
    every old row). Works on numpy and jax arrays; returns a new tree, `params` is kept.
    """
    old = vocab_rows(params)
    mean_rows = old if mean_rows is None else int(mean_rows)
    if new_size < old:
        raise VocabError(f"cannot shrink the vocabulary from {old} to {new_size} rows: "
                         "the base's token ids would lose their rows")
    if not 0 < mean_rows <= old:
        raise VocabError(f"mean_rows={mean_rows} must be in 1..{old}")
    reset = sorted({int(i) for i in reset_ids})
    bad = [i for i in reset if not mean_rows <= i < old]
    if bad:
        raise VocabError(f"reset_ids {bad[:4]} are not padding rows of the base (ids {mean_rows}..{old - 1}): "
                         "a base token's row must not change")
    out = _with(params, EMBED_PATH, _grow(_get(params, EMBED_PATH), 0, new_size, mean_rows, reset))
    head = _get(params, LM_HEAD_PATH)
    if head is not None:
        if head.shape[1] != old:
            raise VocabError(f"lm_head.kernel has {head.shape[1]} columns but the embedding {old} rows")
        out = _with(out, LM_HEAD_PATH, _grow(head, 1, new_size, mean_rows, reset))
    return out
