"""The dataset on disk: the manifest and one split's JSON records across ArrayRecord shards.

Imports neither the tokenizer nor the pipeline: both read records through this module.
A missing or corrupt shard raises `DataError` naming the file (and the record index
where known).
"""
from __future__ import annotations

import bisect
import json
from pathlib import Path

import grain
import numpy as np

MANIFEST = "manifest.json"


class DataError(RuntimeError):
    """Missing, corrupt or unusable data; the message names the file or key."""


def read_manifest(data_dir) -> dict:
    path = Path(data_dir) / MANIFEST
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
            raise DataError(f"{Path(data_dir) / MANIFEST}: no split {split!r} "
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
