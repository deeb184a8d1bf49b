"""The training data's position: what a checkpoint stores, and where a resumed run continues.

The row stream is a pure function of the stream keys below (see pipeline.py), so the
position is one integer, `batches_consumed` global batches. Global batch b is rows
[b*G, (b+1)*G) of a stream that depends on neither G nor the process count, so a
position moves between process counts as it is and between batch sizes through rows
consumed, when the new size divides them.
"""
from __future__ import annotations

import logging
import sys

from promethios_jax.data.records import DataError

log = logging.getLogger(__name__)

# What decides the order of training rows: the same batches_consumed means other data
# when one of these changes (docs/checkpoints.md).
STREAM_KEYS = (("model", "max_seq_len"), ("data", "max_segments_per_row"), ("data", "shuffle_seed"),
               ("data", "tokenizer"))


def stream(config) -> dict:
    return {f"{sec}.{key}": config[sec][key] for sec, key in STREAM_KEYS}


def position_state(batches_consumed: int, config, process_count: int) -> dict:
    """The saved position (the checkpoint's `data_iter` item): batches, what they count
    in, and the stream keys they were counted on."""
    n = int(batches_consumed)
    g = int(config.train.global_batch_size)
    return {
        "batches_consumed": n,
        "global_batch_size": g,
        "rows_consumed": n * g,
        "process_count": int(process_count),
        "iterator": {"batches_consumed": n},  # kept: checkpoints written before this module hold it
        "stream": stream(config),
    }


def resume_batch(state: dict, config, where: str = "the checkpoint", announce: bool = True) -> int:
    """The `batches_consumed` (in config's global batch size) at which a run resumed
    from `state` continues: exactly the next unseen row, or DataError.

    `where` names the state in messages ("checkpoint step 200"); with `announce`, a
    changed data order is warned about and a batch-size change noted on stderr/stdout.
    """
    if "batches_consumed" not in state:
        raise DataError(f"{where}: the saved data position holds no batches_consumed ({sorted(state)})")
    n = int(state["batches_consumed"])
    g = int(config.train.global_batch_size)
    g_saved = int(state.get("global_batch_size") or g)
    saved_stream = state.get("stream")
    if saved_stream and announce:
        now = stream(config)
        changed = [f"{k} {saved_stream[k]!r} -> {now[k]!r}" for k in now if k in saved_stream and saved_stream[k] != now[k]]
        if changed:
            _say(f"WARNING: {where}: the data order changed since it was saved ({'; '.join(changed)}): row "
                 f"{n * g_saved} of the new order is not where the old run stopped, so some examples of this "
                 "epoch are seen twice and others not at all", sys.stderr)
    if g_saved == g:
        return n
    rows = n * g_saved
    if rows % g:
        raise DataError(
            f"{where}: the run had consumed {n} batches of global_batch_size={g_saved} ({rows} rows); "
            f"config.train.global_batch_size={g} does not divide {rows}, so it cannot continue at exactly the "
            f"next row. Use a global batch size that divides {rows} (e.g. {g_saved}) for this resume")
    if announce:
        _say(f"global_batch_size changed {g_saved} -> {g}: data position {n} batches x {g_saved} rows = "
             f"{rows} rows = batch {rows // g} of {g} rows", sys.stdout)
    return rows // g


def _say(msg: str, stream_) -> None:
    log.debug(msg)
    print(msg, file=stream_, flush=True)
