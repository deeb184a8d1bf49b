"""Grain input pipeline: ArrayRecord records -> packed, labelled training batches.

The order of the data is a pure function of (seed, epoch, row index), as in Levanter:

* Once, every training example is tokenized to learn its length (after fitting it
  into `max_seq_len`, see `_fit`).
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

The prompt (<bos>, tags, request, <assess>) is never cut: it is exactly the prompt that
generation and serving build (`tokenizer.encode_example`), so nothing about the
response, its length included, reaches the heads. An example longer than
`max_seq_len` loses the tail of its response only; one whose prompt leaves no room for
a response token is skipped in training (and refused by `eval_batches`). Both counts
are logged and kept in `iterator.stats`; nothing is dropped silently. A missing or corrupt shard raises
`DataError` naming the file (and the record index where known).
"""
from __future__ import annotations

import bisect
import hashlib
import json
import logging
import os
import threading
from pathlib import Path

import grain
import numpy as np

from promethios_jax.data import schema
from promethios_jax.data.tokenizer import build_tokenizer, encode_example_arrays

log = logging.getLogger(__name__)

PACK_WINDOW = 16  # open rows first-fit considers; older rows are closed
_ROW_LIMIT = 2 ** 62  # the row stream is infinite; Grain needs a length


class DataError(RuntimeError):
    """Missing, corrupt or unusable data; the message names the file or key."""


def read_manifest(data_dir) -> dict:
    path = Path(data_dir) / "manifest.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: no manifest; generate the data with "
                        f"python -m promethios_jax.data.generate --out={data_dir}") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable manifest: {e}") from None


class ShardedRecords:
    """Random access to one split's JSON records across its ArrayRecord shards."""

    def __init__(self, data_dir, split: str):
        manifest = read_manifest(data_dir)
        shards = manifest.get("shards", {}).get(split)
        if shards is None:
            raise DataError(f"{Path(data_dir) / 'manifest.json'}: no split {split!r} "
                            f"(have {sorted(manifest.get('shards', {}))})")
        self.split = split
        self.paths = [str(Path(data_dir) / s["file"]) for s in shards]
        self._sources = []
        for path, s in zip(self.paths, shards):
            if not Path(path).is_file():
                raise DataError(f"{path}: shard of split {split!r} is missing")
            try:
                src = grain.sources.ArrayRecordDataSource([path])
                n = len(src)
            except Exception as e:  # array_record raises RuntimeError with the low-level reason
                raise DataError(f"{path}: cannot open shard: {e}") from None
            if n != s["records"]:
                raise DataError(f"{path}: holds {n} records, the manifest says {s['records']}")
            self._sources.append(src)
        self._starts = np.cumsum([0] + [s["records"] for s in shards]).tolist()

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} outside split {self.split!r} of {len(self)} records")
        k = bisect.bisect_right(self._starts, index) - 1
        local = index - self._starts[k]
        try:
            raw = self._sources[k][local]
        except Exception as e:
            raise DataError(f"{self.paths[k]}: record {local}: cannot read: {e}") from None
        try:
            return json.loads(raw)
        except ValueError as e:
            raise DataError(f"{self.paths[k]}: record {local}: not a JSON record: {e}") from None


def load_split(data_dir, split: str) -> list[dict]:
    """All records of a split, in file order, as JSON dicts."""
    recs = ShardedRecords(data_dir, split)
    return [recs[i] for i in range(len(recs))]


def _fit(prompt_len: int, response_len: int, max_len: int) -> int | None:
    """Response tokens kept so that the whole prompt and the response fit `max_len`.

    The prompt is never cut; None when not even one response token fits after it.
    """
    room = max_len - prompt_len
    if room < 1:
        return None
    return min(response_len, room)


def _encode_fitted(rec: dict, tokenizer, max_len: int):
    """(prompt, response) ids fitted to `max_len`, or None if the example cannot fit."""
    prompt, response = encode_example_arrays(rec, tokenizer)
    keep = _fit(len(prompt), len(response), max_len)
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


def _empty_rows(b: int, length: int, s: int) -> dict:
    t = schema.TELEMETRY_DIM
    z = lambda shape, dt: np.zeros(shape, dt)  # noqa: E731
    return {
        "tokens": z((b, length), np.int32), "targets": z((b, length), np.int32),
        "loss_mask": z((b, length), np.float32), "segment_ids": z((b, length), np.int32),
        "positions": z((b, length), np.int32), "telemetry": z((b, length, t), np.float32),
        "head_positions": z((b, s), np.int32), "head_mask": z((b, s), np.float32),
        "hitl": z((b, s), np.int32), "decision": z((b, s), np.int32), "confidence": z((b, s), np.int32),
        "tool": z((b, s), np.int32), "conflict": z((b, s), np.int32),
        "uncertainty": z((b, s, len(schema.UNCERTAINTY_DIMS)), np.float32),
        "bias": z((b, s, len(schema.BIAS_CATEGORIES)), np.float32),
    }


def _place(out: dict, row: int, slot: int, offset: int, seg_id: int, rec: dict, prompt, response) -> int:
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
              window: int = PACK_WINDOW) -> tuple[np.ndarray, np.ndarray]:
    """One epoch's rows as CSR (members, row_starts): first-fit over a seeded shuffle.

    `lengths[i] <= 0` marks an example that is skipped. Rows are numbered in the order
    they open; members keep their insertion order.
    """
    lengths = np.asarray(lengths)
    order = np.random.default_rng([int(seed), int(epoch)]).permutation(len(lengths))
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


class PackedRows:
    """Global row index -> packed example row; picklable for Grain worker processes."""

    def __init__(self, data_dir, config, lengths: np.ndarray):
        self.data_dir = str(data_dir)
        self.max_len = int(config.model.max_seq_len)
        self.max_segments = int(config.data.max_segments_per_row)
        self.seed = int(config.data.shuffle_seed)
        self.lengths = lengths
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
            self._tokenizer = build_tokenizer(self._tokenizer_config)
        return self._tokenizer

    def _plan(self, epoch: int):
        plan = self._plans.get(epoch)
        if plan is None:
            plan = pack_plan(self.lengths, self.seed, epoch, self.max_len, self.max_segments)
            if len(self._plans) >= 4:
                self._plans.pop(min(self._plans))
            self._plans[epoch] = plan
        return plan

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
        out = _empty_rows(1, self.max_len, self.max_segments)
        offset = 0
        for slot, i in enumerate(self.examples(int(row)).tolist()):
            rec = self.records[i]
            fitted = _encode_fitted(rec, self.tokenizer, self.max_len)
            if fitted is None or offset + len(fitted[0]) + len(fitted[1]) > self.max_len:
                raise DataError(f"train record {i} ({rec.get('id')}) no longer fits the plan: "
                                "the shards changed after the iterator was built")
            offset += _place(out, 0, slot, offset, slot + 1, rec, *fitted)
        return {k: v[0] for k, v in out.items()}


def raw_lengths(data_dir, split: str, tokenizer) -> np.ndarray:
    """int64[N, 2]: (prompt, response) token counts of every example of a split.

    Cached in DATA_DIR/lengths-<split>-<key>.npy, keyed by the manifest and the
    tokenizer, so that restarts skip the tokenizing pass; a read-only dir just recomputes.
    """
    manifest = (Path(data_dir) / "manifest.json").read_bytes() if (Path(data_dir) / "manifest.json").is_file() else b""
    key = hashlib.sha1(manifest + tokenizer.fingerprint.encode()).hexdigest()[:16]
    cache = Path(data_dir) / f"lengths-{split}-{key}.npy"
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
    except OSError:
        pass
    return out


def fitted_lengths(data_dir, config) -> tuple[np.ndarray, dict]:
    """Token length of every training example after fitting (0: skipped), and counts."""
    records = ShardedRecords(data_dir, "train")
    if not len(records):
        raise DataError(f"{data_dir}: the train split is empty")
    tok = build_tokenizer(config)
    max_len = int(config.model.max_seq_len)
    raw = raw_lengths(data_dir, "train", tok)
    lengths = np.zeros(len(records), np.int64)
    for i, (p, r) in enumerate(raw.tolist()):
        keep = _fit(p, r, max_len)
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

    `get_state()` is `{"batches_consumed": n}` and restores on any process count via
    `set_state` or `make_train_iterator(..., start_batch=n)`.
    """

    def __init__(self, build, start_batch: int, stats: dict):
        super().__init__()
        self._build = build
        self.batches_consumed = int(start_batch)
        self.stats = stats
        self._it = None

    def __next__(self) -> dict:
        if self._it is None:
            self._it = iter(self._build(self.batches_consumed))
        batch = next(self._it)
        self.batches_consumed += 1
        return batch

    def get_state(self) -> dict:
        return {"batches_consumed": self.batches_consumed}

    def set_state(self, state: dict) -> None:
        self.close()
        self.batches_consumed = int(state["batches_consumed"])

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
            from absl import flags
            if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags; outside absl.app use defaults
                flags.FLAGS.mark_as_parsed()
            ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                             per_worker_buffer_size=buffer))
        return ds

    return TrainIterator(build, start_batch, stats)


def eval_batches(config, data_dir, split: str = "heldout", batch_size: int | None = None):
    """Unpacked batches (one example per row, S == 1) of a split, in file order.

    Each batch has the training keys plus `ids` (record ids of the real rows),
    `num_valid` (how many rows are real; the last batch may be partial, its padding
    rows have head_mask 0) and `prompt_lengths` int32 [B] (tokens through <assess>,
    where generation starts). Examples are fitted to max_seq_len like training ones
    (the prompt whole, the response's tail cut); one whose prompt cannot fit raises
    DataError.
    """
    b = int(batch_size or config.eval.batch_size)
    if b <= 0:
        raise DataError(f"batch_size={b} must be positive")
    records = ShardedRecords(data_dir, split)
    tok = build_tokenizer(config)
    max_len = int(config.model.max_seq_len)
    for start in range(0, len(records), b):
        out = _empty_rows(b, max_len, 1)
        out["prompt_lengths"] = np.zeros(b, np.int32)
        ids = []
        for row, i in enumerate(range(start, min(start + b, len(records)))):
            rec = records[i]
            fitted = _encode_fitted(rec, tok, max_len)
            if fitted is None:
                raise DataError(f"{split} record {i} ({rec.get('id')}): its prompt and one response token "
                                f"do not fit config.model.max_seq_len={max_len}")
            _place(out, row, 0, 0, 1, rec, *fitted)
            out["prompt_lengths"][row] = len(fitted[0])
            ids.append(rec["id"])
        out["ids"] = ids
        out["num_valid"] = len(ids)
        yield out
