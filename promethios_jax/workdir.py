"""The run directory's layout, in one place.

    WORKDIR/
      checkpoints/<step>/{state,data_iter,config,integrity}   Orbax, one directory per step
      tb/train, tb/eval                                        TensorBoard runs
      metrics.jsonl                                            the train scalars, one row per log step
      eval/<step>.json, ...                                    the eval job's results
      data/                                                    the generated dataset (unless config.data.path)
      tokenizer/                                               an imported base's tokenizer (convert import);
                                                               tokenizer/<fingerprint>/: a checkpoint's own copy
      TRAINING_DONE                                            {"step": N}: the run reached config.train.steps

Only names and small files here; nothing imports jax.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from pathlib import Path

import ml_collections

from promethios_jax.config import base_config
from promethios_jax.data.prompt import LEGACY_PROMPT_LAYOUT

CHECKPOINTS = "checkpoints"
TB = "tb"
EVAL = "eval"
DATA = "data"
METRICS = "metrics.jsonl"
DONE = "TRAINING_DONE"
TOKENIZER = "tokenizer"


class WorkdirError(RuntimeError):
    """A run directory that cannot be used or read as asked."""


def checkpoint_dir(workdir) -> Path:
    return Path(workdir).absolute() / CHECKPOINTS


def step_dir(workdir, step: int) -> Path:
    return checkpoint_dir(workdir) / str(int(step))


def tb_dir(workdir, run: str) -> Path:
    return Path(workdir) / TB / run


def eval_dir(workdir) -> Path:
    return Path(workdir) / EVAL


def metrics_path(workdir) -> Path:
    return Path(workdir) / METRICS


def data_dir(config, workdir) -> Path:
    """config.data.path, else WORKDIR/data."""
    return Path(config.data.path) if config.data.path else Path(workdir).absolute() / DATA


def tokenizer_dir(workdir) -> Path:
    return Path(workdir).absolute() / TOKENIZER


def checkpoint_steps(workdir) -> list[int]:
    """Committed checkpoint steps, ascending. Orbax writes a step into a temporary
    directory and renames it to the bare number when complete, so digit names are whole."""
    cdir = checkpoint_dir(workdir)
    if not cdir.is_dir():
        return []
    return sorted(int(p.name) for p in cdir.iterdir() if p.name.isdigit() and p.is_dir())


def ensure_writable(workdir) -> Path:
    path = Path(workdir).absolute()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_probe.{os.getpid()}"  # per process: several may start at once
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise WorkdirError(f"workdir {path} cannot be written: {e.strerror or e}") from e
    return path


# ----------------------------------------------------------------------- the done marker

def mark_done(workdir, step: int) -> None:
    tmp = Path(workdir) / f".{DONE}.tmp"
    tmp.write_text(json.dumps({"step": int(step)}))
    os.replace(tmp, Path(workdir) / DONE)


def clear_done(workdir) -> None:
    (Path(workdir) / DONE).unlink(missing_ok=True)


def training_done(workdir) -> int | None:
    """The final step named by WORKDIR/TRAINING_DONE (JSON {"step": N} or a bare N), or None."""
    try:
        value = json.loads((Path(workdir) / DONE).read_text().strip())
    except (OSError, ValueError):
        return None
    if isinstance(value, dict):
        value = value.get("step")
    return int(value) if isinstance(value, (int, float)) else None


# ----------------------------------------------------------------------- saved configs

def merge_config(saved: dict) -> ml_collections.ConfigDict:
    """base_config() updated with a saved (JSON) config, so keys added since still get
    their defaults and older runs still load."""
    config = base_config()

    def update(node, values):
        for k, v in values.items():
            if k in node and isinstance(node[k], ml_collections.ConfigDict) and isinstance(v, dict):
                update(node[k], v)
            elif isinstance(v, dict):
                node[k] = ml_collections.ConfigDict(v)
            else:
                node[k] = v

    update(config, saved)
    if isinstance(saved.get("data"), dict) and "prompt_layout" not in saved["data"]:
        config.data.prompt_layout = LEGACY_PROMPT_LAYOUT  # saved before the layout was a choice
    return config


def read_config(workdir, step: int | None = None) -> tuple[ml_collections.ConfigDict, int]:
    """The resolved config saved with a checkpoint (the newest, or `step`), merged onto
    base_config(); WorkdirError when there is none."""
    cdir = checkpoint_dir(workdir)
    steps = checkpoint_steps(workdir)
    if not steps:
        why = f"{cdir} does not exist" if not cdir.is_dir() else f"{cdir} holds none"
        raise WorkdirError(f"no checkpoints in {workdir}: {why} (train first)")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise WorkdirError(f"no checkpoint for step {step} in {cdir}; available: {steps}")
    path = _item_file(workdir, step, "config")
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise WorkdirError(f"checkpoint step {step}: cannot read its config ({path}): {e}") from e
    config = merge_config(saved)
    _use_saved_tokenizer(workdir, step, config)
    return config, step


def _item_file(workdir, step: int, item: str) -> Path:
    """The JSON file of a checkpoint's JSON item (Orbax names it `metadata`)."""
    path = step_dir(workdir, step) / item / "metadata"
    if not path.exists():
        cands = list(path.parent.glob("*"))
        path = cands[0] if cands else path
    return path


def saved_tokenizer(workdir, step: int) -> dict | None:
    """The tokenizer record a checkpoint stores (data/tokenizer.checkpoint_record), or
    None when it has none (saved before checkpoints held their tokenizer)."""
    path = _item_file(workdir, step, "tokenizer")
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        record["files"], record["vocab_size"], record["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise WorkdirError(f"checkpoint step {step}: its tokenizer record {path} cannot be read: {e}") from e
    return record


def check_tokenizer(workdir, step: int, record: dict, spec: str) -> None:
    """A resumed run must tokenize as its checkpoint was trained (the same ids):
    `record` is this run's tokenizer record, `spec` its config.data.tokenizer."""
    saved = saved_tokenizer(workdir, step)
    if saved is not None and saved["fingerprint"] != record["fingerprint"]:
        raise WorkdirError(f"checkpoint step {step} was trained with the tokenizer {saved['fingerprint']} "
                           f"(config.data.tokenizer={saved.get('spec')!r}), but this run's config.data.tokenizer="
                           f"{spec!r} is {record['fingerprint']}: resuming would change what the ids mean; use "
                           "the checkpoint's tokenizer or another --workdir")


def _use_saved_tokenizer(workdir, step: int, config) -> None:
    """Points config.data.tokenizer at the tokenizer the checkpoint was trained with: its
    original file when that is unchanged, else the checkpoint's copy written out under
    WORKDIR/tokenizer/<fingerprint>/."""
    spec = config.data.tokenizer
    record = saved_tokenizer(workdir, step)
    if record is None:
        if spec == "byte":  # no file to lose: older checkpoints of the byte tokenizer still load
            return
        raise WorkdirError(
            f"checkpoint step {step} holds no tokenizer ({step_dir(workdir, step) / 'tokenizer'} is missing), so the "
            f"ids it was trained with (config.data.tokenizer={spec!r}) cannot be checked or rebuilt; restore that "
            "directory from a copy of the checkpoint")
    files = record["files"]
    if files and record["vocab_size"] > config.model.vocab_size:
        raise WorkdirError(
            f"checkpoint step {step}: its tokenizer ({record.get('name')}, {record['vocab_size']} ids) does not match "
            f"config.model.vocab_size={config.model.vocab_size}: the model has no rows for ids "
            f">= {config.model.vocab_size}")
    if not files:
        config.data.tokenizer = "byte"
        return
    first = next(iter(files))
    where = Path(record["path"])
    home = where if record["target"] == "dir" else where.parent
    if not all(_sha256_of(home / name) == f["sha256"] for name, f in files.items()):
        home = _write_copy(workdir, step, record)
    config.data.tokenizer = str(home if record["target"] == "dir" else home / first)


def _sha256_of(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _write_copy(workdir, step: int, record: dict) -> Path:
    """Writes the record's files to WORKDIR/tokenizer/<fingerprint>/ (a temporary
    directory where the workdir is read-only); checks each file's SHA-256."""
    blobs = {}
    for name, f in record["files"].items():
        try:
            blob = base64.b64decode(f["data"], validate=True)
        except (ValueError, KeyError, TypeError) as e:
            raise WorkdirError(f"checkpoint step {step}: its tokenizer file {name} cannot be decoded: {e}") from e
        if hashlib.sha256(blob).hexdigest() != f["sha256"]:
            raise WorkdirError(f"checkpoint step {step}: its tokenizer file {name} is corrupt (SHA-256 mismatch)")
        blobs[name] = blob
    home = tokenizer_dir(workdir) / record["fingerprint"]
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError:
        home = Path(tempfile.mkdtemp(prefix=f"tokenizer-{record['fingerprint']}-"))
    for name, blob in blobs.items():
        if _sha256_of(home / name) != record["files"][name]["sha256"]:
            tmp = home / f".{name}.{os.getpid()}"
            tmp.write_bytes(blob)
            os.replace(tmp, home / name)
    return home
