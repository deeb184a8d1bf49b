"""Safetensors files of a Hugging Face directory, read and written without torch.

Reading is a small parser over a memory map, not the `safetensors` library: its numpy
API has no bfloat16, and Llama checkpoints are mostly bf16 (read here through
ml_dtypes, cast to float32 on request). Writing uses `safetensors.numpy`, in shards of
at most a given size with HF's index file.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

from promethios_jax.model.hf_llama import ConversionError

HF_CONFIG = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
GOVERNANCE_FILE = "governance.safetensors"
PROMETHIOS_CONFIG = "promethios_config.json"
DEFAULT_MAX_SHARD = 5 * 10**9  # HF's classic "5GB"

_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def _st_dtype(code: str):
    if code in _ST_DTYPES:
        return np.dtype(_ST_DTYPES[code])
    if code == "BF16":
        return np.dtype(ml_dtypes.bfloat16)
    raise ConversionError(f"safetensors dtype {code} is not supported")


class SafetensorsFile:
    """One .safetensors file: header parsed, data memory-mapped, tensors read on demand."""

    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        self.offset = 8 + n
        self.metadata = header.pop("__metadata__", None)
        self.header = header
        self._mm = None

    def shape(self, name) -> tuple:
        return tuple(self.header[name]["shape"])

    def get(self, name) -> np.ndarray:
        if self._mm is None:
            self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        info = self.header[name]
        start, end = info["data_offsets"]
        dtype = _st_dtype(info["dtype"])
        raw = self._mm[self.offset + start:self.offset + end]
        return raw.view(dtype).reshape(info["shape"])


class SafetensorsReader:
    """All tensors of a HF directory: `model.safetensors`, a sharded index, or any *.safetensors."""

    def __init__(self, hf_dir, exclude=(GOVERNANCE_FILE,)):
        hf_dir = Path(hf_dir)
        self.files: dict[str, SafetensorsFile] = {}
        self.where: dict[str, str] = {}
        index = hf_dir / INDEX_FILE
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            for name, fname in weight_map.items():
                if fname not in self.files:
                    if not (hf_dir / fname).exists():
                        raise ConversionError(f"{index} maps {name} to {fname}, which does not exist")
                    self.files[fname] = SafetensorsFile(hf_dir / fname)
                if name not in self.files[fname].header:
                    raise ConversionError(f"{index} maps {name} to {fname}, which does not hold it")
                self.where[name] = fname
        else:
            paths = [hf_dir / SINGLE_FILE] if (hf_dir / SINGLE_FILE).exists() else sorted(
                p for p in hf_dir.glob("*.safetensors") if p.name not in exclude)
            if not paths:
                raise ConversionError(
                    f"{hf_dir} holds no {SINGLE_FILE}, {INDEX_FILE} or other *.safetensors "
                    "(PyTorch .bin checkpoints are not read: re-save with save_pretrained(safe_serialization=True))")
            for p in paths:
                f = SafetensorsFile(p)
                self.files[p.name] = f
                for name in f.header:
                    self.where[name] = p.name

    def __contains__(self, name) -> bool:
        return name in self.where

    def keys(self):
        return list(self.where)

    def shape(self, name) -> tuple:
        return self.files[self.where[name]].shape(name)

    def get(self, name, dtype=np.float32) -> np.ndarray:
        return np.asarray(self.files[self.where[name]].get(name), dtype=dtype)


def parse_size(text) -> int:
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]i?B|B)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ConversionError(f"--max_shard_size={text!r}: use bytes or e.g. 500MB, 5GB")
    unit = (m.group(2) or "B").upper()
    base = 1024 if "I" in unit else 1000
    power = {"B": 0, "K": 1, "M": 2, "G": 3, "T": 4}[unit[0]]
    return int(float(m.group(1)) * base**power)


class ShardWriter:
    """Streams tensors into safetensors shards of at most `max_shard` bytes (a larger single
    tensor gets a shard of its own); one file ends up as model.safetensors, several as
    model-0000i-of-0000N.safetensors with model.safetensors.index.json."""

    def __init__(self, out: Path, max_shard: int):
        self.out, self.max_shard = out, max_shard
        self.pending: list[tuple[str, np.ndarray]] = []
        self.size = 0
        self.written: list[tuple[Path, list[str]]] = []
        self.total = 0

    def add(self, name: str, x: np.ndarray) -> None:
        if self.pending and self.size + x.nbytes > self.max_shard:
            self._flush()
        self.pending.append((name, x))
        self.size += x.nbytes
        self.total += x.nbytes

    def _flush(self) -> None:
        path = self.out / f".shard-{len(self.written):05d}.tmp"
        save_file(dict(self.pending), str(path), metadata={"format": "pt"})
        self.written.append((path, [n for n, _ in self.pending]))
        self.pending, self.size = [], 0

    def close(self) -> list[str]:
        if self.pending:
            self._flush()
        if len(self.written) == 1:
            os.replace(self.written[0][0], self.out / SINGLE_FILE)
            return [SINGLE_FILE]
        files, weight_map = [], {}
        for i, (path, names) in enumerate(self.written):
            fname = f"model-{i + 1:05d}-of-{len(self.written):05d}.safetensors"
            os.replace(path, self.out / fname)
            files.append(fname)
            weight_map.update({n: fname for n in names})
        (self.out / INDEX_FILE).write_text(json.dumps(
            {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2))
        return files
