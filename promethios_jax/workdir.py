"""The run directory's layout, in one place.

    WORKDIR/
      checkpoints/<step>/{state,data_iter,config,integrity}   Orbax, one directory per step
      tb/train, tb/eval                                        TensorBoard runs
      metrics.jsonl                                            the train scalars, one row per log step
      eval/<step>.json, ...                                    the eval job's results
      data/                                                    the generated dataset (unless config.data.path)
      TRAINING_DONE                                            {"step": N}: the run reached config.train.steps

Only names and small files here; nothing imports jax.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import ml_collections

from promethios_jax.config import base_config

CHECKPOINTS = "checkpoints"
TB = "tb"
EVAL = "eval"
DATA = "data"
METRICS = "metrics.jsonl"
DONE = "TRAINING_DONE"


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
        probe = path / ".write_probe"
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
    path = step_dir(workdir, step) / "config" / "metadata"
    if not path.exists():
        cands = list(path.parent.glob("*"))
        path = cands[0] if cands else path
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise WorkdirError(f"checkpoint step {step}: cannot read its config ({path}): {e}") from e
    return merge_config(saved), step
