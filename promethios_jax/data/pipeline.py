"""Grain input pipeline: ArrayRecord records -> packed, labelled training batches.

The order of the data is a pure function of (seed, epoch, row index), as in Levanter:

* Once, every training example is tokenized to learn its length (after fitting it
  into `max_seq_len`, see `packing.fit`).
* Per epoch, a packing plan shuffles the examples with `(shuffle_seed, epoch)` and
  packs them first-fit into rows of `max_seq_len` tokens and at most
  `max_segments_per_row` examples. Epochs follow each other: global row `g` is row
  `g - rows_before(epoch)` of its epoch's plan, so the stream is infinite.
* Global batch `b` is global rows `[b * G, (b + 1) * G)`; process `p` of `P` takes the
  contiguous block `p * G/P .. (p + 1) * G/P` of each, so the host batches of all
  processes, concatenated in process order, are the global batch.

The position is therefore one integer, `batches_consumed` (global batches), that
resumes exactly on any process count. A Grain `MapDataset` over host-local row
indices reads, tokenizes and packs each row, batches the rows (batching a MapDataset
keeps the output independent of the worker count) and prefetches, in worker processes
when `config.data.worker_count > 0`.

The prompt (<bos>, request, tags, <assess>; tags first in the older layout) is never
cut: it is exactly the prompt that generation and serving build
(`tokenizer.encode_example`), so nothing about the response, its length included,
reaches the heads. An example longer than `max_seq_len` loses the tail of its response
only; one whose prompt leaves no room for a response token is skipped in training (and refused by `eval_batches`). Both counts
are logged and kept in `iterator.stats`; nothing is dropped silently. A missing or
corrupt shard raises
`DataError` naming the file (and the record index where known).
"""
from __future__ import annotations

import bisect
import hashlib
import logging
import os
import threading
from pathlib import Path

import grain
import numpy as np
from absl import flags

from promethios_jax.data import batch as batch_lib
from promethios_jax.data import mix, packing, position
from promethios_jax.data.records import MANIFEST, DataError, ShardedRecords
from promethios_jax.data.tokenizer import build_tokenizer, encode_example_arrays

log = logging.getLogger(__name__)

_ROW_LIMIT = 2 ** 62  # the row stream is infinite; Grain needs a length


class PackedRows:
    """Global row index -> packed example row; picklable for Grain worker processes."""

    def __init__(self, data_dir, config, lengths: np.ndarray):
        self.data_dir = str(data_dir)
        self.max_len = int(config.model.max_seq_len)
        self.max_segments = int(config.data.max_segments_per_row)
        self.seed = int(config.data.shuffle_seed)
        self.lengths = lengths
        # A stage's category mix (stages.py): the epoch's examples come from data/mix.py.
        self.mix = tuple(tuple(x) for x in config.data.get("mix", ()))
        self.categories = example_categories(data_dir) if self.mix else None
        self._tokenizer_config = config
        self._init_runtime()

    def _init_runtime(self):
        self._records = None
        self._tokenizer = None
        self._plans: dict[int, tuple] = {}
        self._row_starts = [0]  # cumulative rows before each epoch
        self._lock = threading.Lock()

    def __getstate__(self):
        state = dict(self.__dict__)
        for k in ("_records", "_tokenizer", "_plans", "_row_starts", "_lock"):
            state.pop(k)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._init_runtime()

    @property
    def records(self) -> ShardedRecords:
        if self._records is None:
            self._records = ShardedRecords(self.data_dir, "train")
        return self._records

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = build_tokenizer(self._tokenizer_config, self.data_dir)
        return self._tokenizer

    def _plan(self, epoch: int):
        plan = self._plans.get(epoch)
        if plan is None:
            order = mix.mix_epoch(self.categories, self.mix, self.seed, epoch) if self.mix else None
            plan = packing.pack_plan(self.lengths, self.seed, epoch, self.max_len, self.max_segments,
                                     order=order)
            if len(self._plans) >= 4:
                self._plans.pop(min(self._plans))
            self._plans[epoch] = plan
        return plan

    def rows_in_epoch(self, epoch: int) -> int:
        with self._lock:
            return len(self._plan(epoch)[1]) - 1

    def locate(self, row: int) -> tuple[int, int]:
        """(epoch, row within the epoch) of a global row."""
        with self._lock:
            while self._row_starts[-1] <= row:
                epoch = len(self._row_starts) - 1
                self._row_starts.append(self._row_starts[-1] + len(self._plan(epoch)[1]) - 1)
            epoch = bisect.bisect_right(self._row_starts, row) - 1
            return epoch, row - self._row_starts[epoch]

    def examples(self, row: int) -> np.ndarray:
        """Training-split indices of the examples packed into global row `row`."""
        epoch, r = self.locate(row)
        with self._lock:
            members, starts = self._plan(epoch)
        return members[starts[r]:starts[r + 1]]

    def __call__(self, row: int) -> dict:
        out = batch_lib.empty(1, self.max_len, self.max_segments)
        offset = 0
        for slot, i in enumerate(self.examples(int(row)).tolist()):
            rec = self.records[i]
            fitted = packing.encode_fitted(rec, self.tokenizer, self.max_len)
            if fitted is None or offset + len(fitted[0]) + len(fitted[1]) > self.max_len:
                raise DataError(f"train record {i} ({rec.get('id')}) no longer fits the plan: "
                                "the shards changed after the iterator was built")
            offset += packing.place(out, 0, slot, offset, slot + 1, rec, *fitted)
        return {k: v[0] for k, v in out.items()}


def example_categories(data_dir, split: str = "train") -> np.ndarray:
    """The capability category of every example of a split, in file order."""
    records = ShardedRecords(data_dir, split)
    return np.array([records[i]["category"] for i in range(len(records))])


def _length_cache(data_dir, split: str, tokenizer) -> Path:
    """DATA_DIR/lengths-<split>-<data key>-<tokenizer key>.npy; the data key hashes the manifest,
    the tokenizer key its fingerprint and whether responses start with an outcome piece."""
    manifest = (Path(data_dir) / MANIFEST).read_bytes() if (Path(data_dir) / MANIFEST).is_file() else b""
    data_key = hashlib.sha1(manifest).hexdigest()[:12]
    tok = tokenizer.fingerprint + ("+outcome" if getattr(tokenizer, "outcome_token", False) else "")
    tok_key = hashlib.sha1(tok.encode()).hexdigest()[:12]
    return Path(data_dir) / f"lengths-{split}-{data_key}-{tok_key}.npy"


def _drop_stale_caches(cache: Path) -> None:
    """Removes the split's length caches of other data (a regenerated dir); other tokenizers' stay."""
    split, data_key = cache.name.split("-")[1:3]
    for old in cache.parent.glob(f"lengths-{split}-*.npy"):
        if old.name.split("-")[2] != data_key:
            old.unlink(missing_ok=True)


def raw_lengths(data_dir, split: str, tokenizer) -> np.ndarray:
    """int64[N, 2]: (prompt, response) token counts of every example of a split.

    Cached in DATA_DIR (see _length_cache), keyed by the manifest and the tokenizer, so
    that restarts skip the tokenizing pass; caches of older data in the dir are removed
    when a new one is written; a read-only dir just recomputes.
    """
    cache = _length_cache(data_dir, split, tokenizer)
    records = ShardedRecords(data_dir, split)
    if cache.is_file():
        try:
            out = np.load(cache)
            if out.shape == (len(records), 2):
                return out
        except (OSError, ValueError):
            pass
    out = np.zeros((len(records), 2), np.int64)
    for i in range(len(records)):
        prompt, response = encode_example_arrays(records[i], tokenizer)
        out[i] = len(prompt), len(response)
    try:
        tmp = cache.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, out)
        os.replace(tmp, cache)
        _drop_stale_caches(cache)
    except OSError:
        pass
    return out


def fitted_lengths(data_dir, config) -> tuple[np.ndarray, dict]:
    """Token length of every training example after fitting (0: skipped), and counts."""
    records = ShardedRecords(data_dir, "train")
    if not len(records):
        raise DataError(f"{data_dir}: the train split is empty")
    tok = build_tokenizer(config, data_dir)
    max_len = int(config.model.max_seq_len)
    raw = raw_lengths(data_dir, "train", tok)
    lengths = np.zeros(len(records), np.int64)
    for i, (p, r) in enumerate(raw.tolist()):
        keep = packing.fit(p, r, max_len)
        if keep is not None:
            lengths[i] = p + keep
    truncated = int((raw[:, 0] + raw[:, 1] > max_len).sum()) - int((lengths == 0).sum())
    skipped = int((lengths == 0).sum())
    stats = {"examples": len(records), "truncated": truncated, "skipped": skipped,
             "mean_tokens": float(lengths[lengths > 0].mean()) if skipped < len(records) else 0.0}
    if skipped == len(records):
        raise DataError(f"no training example fits config.model.max_seq_len={max_len}")
    if truncated or skipped:
        log.warning("data: %d of %d training examples lose the tail of their response to fit "
                    "max_seq_len=%d, %d skipped (the whole prompt and one response token do not fit)",
                    truncated, len(records), max_len, skipped)
    return lengths, stats


class TrainIterator(grain.DatasetIterator):
    """Host-local training batches; the position is `batches_consumed` (global batches).

    `get_state()` is the whole saved position (data/position.py: batches, the global
    batch size they count in, the stream keys); `set_state(state)` continues exactly
    after it, on any process count and any global batch size that divides the rows
    consumed (DataError otherwise). Both may be called before the first batch is read.
    """

    def __init__(self, build, start_batch: int, stats: dict, config, process_index: int, process_count: int):
        super().__init__()
        self._build = build
        self.batches_consumed = int(start_batch)
        self.stats = stats
        self._config = config
        self._process_index = process_index
        self._process_count = process_count
        self._it = None

    def __next__(self) -> dict:
        if self._it is None:
            self._it = iter(self._build(self.batches_consumed))
        batch = next(self._it)
        self.batches_consumed += 1
        return batch

    def get_state(self) -> dict:
        return position.position_state(self.batches_consumed, self._config, self._process_count)

    def set_state(self, state: dict, where: str = "the saved data position") -> None:
        """Continues after `state` (`where` names it in messages, e.g. "checkpoint step 200")."""
        n = position.resume_batch(state, self._config, where, announce=self._process_index == 0)
        self.close()
        self.batches_consumed = n

    def close(self) -> None:
        it, self._it = self._it, None
        if it is not None and hasattr(it, "close"):
            it.close()


def make_train_iterator(config, data_dir, process_index: int = 0, process_count: int = 1,
                        start_batch: int = 0) -> TrainIterator:
    """Infinite iterator of host batches of `global_batch_size // process_count` rows."""
    g = int(config.train.global_batch_size)
    if process_count < 1 or not 0 <= process_index < process_count:
        raise DataError(f"process_index={process_index} is not in [0, process_count={process_count})")
    if g <= 0 or g % process_count:
        raise DataError(f"config.train.global_batch_size={g} is not a positive multiple of the "
                        f"{process_count} processes")
    if config.data.max_segments_per_row < 1:
        raise DataError(f"config.data.max_segments_per_row={config.data.max_segments_per_row} must be >= 1")
    if start_batch < 0:
        raise DataError(f"start_batch={start_batch} must be >= 0")
    lengths, stats = fitted_lengths(data_dir, config)
    rows = PackedRows(data_dir, config, lengths)
    local = g // process_count
    workers = int(config.data.worker_count)
    buffer = max(1, int(config.data.prefetch_buffer_size))

    def global_row(j: int) -> int:
        b, r = divmod(j, local)
        return b * g + process_index * local + r

    def build(batch: int):
        ds = (grain.MapDataset.range(batch * local, _ROW_LIMIT)
              .map(global_row)
              .map(rows)
              .batch(local, drop_remainder=True))
        ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1 if workers else 2,
                                                  prefetch_buffer_size=buffer))
        if workers > 0:
            if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags; outside absl.app use defaults
                flags.FLAGS.mark_as_parsed()
            ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                             per_worker_buffer_size=buffer))
        return ds

    return TrainIterator(build, start_batch, stats, config, process_index, process_count)


def eval_batches(config, data_dir, split: str = "heldout", batch_size: int | None = None):
    """Unpacked batches (one example per row, S == 1) of a split, in file order.

    Each batch has the training keys plus `ids` (record ids of the real rows),
    `num_valid` (how many rows are real; the last batch may be partial, its padding
    rows have head_mask 0) and `prompt_lengths` int32 [B] (tokens through <assess>,
    where generation starts). Examples are fitted to max_seq_len like training ones
    (the prompt whole, the response's tail cut); one whose prompt cannot fit raises
    DataError.
    """
    return record_batches(config, ShardedRecords(data_dir, split), split, batch_size, data_dir)


def record_batches(config, records, name: str, batch_size: int | None = None, data_dir=None):
    """`eval_batches` over any sequence of records (the eval's perturbed requests, say);
    `name` labels them in errors; `data_dir` finds a tokenizer trained on first use."""
    b = int(batch_size or config.eval.batch_size)
    if b <= 0:
        raise DataError(f"batch_size={b} must be positive")
    tok = build_tokenizer(config, data_dir)
    max_len = int(config.model.max_seq_len)
    for start in range(0, len(records), b):
        out = batch_lib.empty(b, max_len, 1, batch_lib.EVAL_FIELDS)
        ids = []
        for row, i in enumerate(range(start, min(start + b, len(records)))):
            rec = records[i]
            fitted = packing.encode_fitted(rec, tok, max_len)
            if fitted is None:
                raise DataError(f"{name} record {i} ({rec.get('id')}): its prompt and one response token "
                                f"do not fit config.model.max_seq_len={max_len}")
            packing.place(out, row, 0, 0, 1, rec, *fitted)
            out["prompt_lengths"][row] = len(fitted[0])
            ids.append(rec["id"])
        out["ids"] = ids
        out["num_valid"] = len(ids)
        yield out
