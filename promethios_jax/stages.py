"""Training stages, epochs and learning-rate schedules, as pure functions of the config.

A run is a list of stages run in order. `config.stages` lists them, each a dict:

    name           required, unique
    steps | epochs exactly one (a stage with `evaluate=True` may have neither)
    learning_rate  peak learning rate            (default config.train.learning_rate)
    schedule       "cosine" | "linear" | "constant", after a linear warm-up
                                                 (default config.train.schedule)
    warmup_steps   (default config.train.warmup_steps)
    min_lr_ratio   end learning rate / peak      (default config.train.min_lr_ratio)
    loss           {part: weight} over config.loss (the rest keep config.loss's values)
    data_mix       {category: weight} over data.schema.CATEGORIES (default: the data as it is)
    trains         what trains, see `trainable`  (default config.train.trainable)
    evaluate       True: no training; the eval job scores the checkpoint here

Without `config.stages` the run is one stage, "train", from `config.train` (its
`epochs`, when positive, else its `steps`).

Epochs count packed rows: the pipeline packs each epoch's shuffled examples into rows
(`data.pipeline.pack_plan`), so `epochs` of a stage is `ceil(rows / global batch)`
steps, where `rows` is the rows of its whole epochs plus the fraction of the next.
"""
from __future__ import annotations

import bisect
import dataclasses
import math
from fractions import Fraction
from typing import Callable, Sequence

import numpy as np

from promethios_jax import trainable
from promethios_jax.data import schema
from promethios_jax.data.pipeline import PackedRows

SCHEDULES = ("cosine", "linear", "constant")
STAGE_KEYS = ("name", "steps", "epochs", "learning_rate", "schedule", "warmup_steps", "min_lr_ratio", "loss",
              "data_mix", "trains", "evaluate")


class StageError(ValueError):
    """A stage list, or an epoch count, that cannot work; the message names the stage and key."""


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    steps: int | None
    epochs: float | None
    learning_rate: float
    schedule: str
    warmup_steps: int
    min_lr_ratio: float
    loss: tuple = ()  # (part, weight) overrides of config.loss
    data_mix: tuple = ()  # (category, weight); empty: the data as generated
    trains: str = "all"
    evaluate: bool = False


def _get(node, key, default):
    try:
        value = node[key]
    except (KeyError, AttributeError):
        return default
    return default if value is None else value


def _as_dict(stage, where: str) -> dict:
    if hasattr(stage, "to_dict"):
        stage = stage.to_dict()
    if not isinstance(stage, dict):
        raise StageError(f"{where}: a stage is a dict of {', '.join(STAGE_KEYS)}; got {type(stage).__name__}")
    return dict(stage)


def parse_stage(raw, config, where: str) -> Stage:
    d = _as_dict(raw, where)
    unknown = sorted(set(d) - set(STAGE_KEYS))
    name = d.get("name")
    if unknown:
        raise StageError(f"{where} ({name!r}): unknown key {unknown[0]!r}; known keys: {', '.join(STAGE_KEYS)}")
    if not isinstance(name, str) or not name.strip():
        raise StageError(f"{where}: needs a non-empty 'name'")
    where = f"{where} ({name!r})"
    t = config.train
    evaluate = bool(d.get("evaluate", False))
    steps, epochs = d.get("steps"), d.get("epochs")
    if steps is not None and epochs is not None:
        raise StageError(f"{where}: give 'steps' or 'epochs', not both")
    if steps is None and epochs is None and not evaluate:
        raise StageError(f"{where}: needs 'steps' or 'epochs'")
    if steps is not None and (not isinstance(steps, (int, np.integer)) or steps < 0 or (steps == 0 and not evaluate)):
        raise StageError(f"{where}: steps={steps!r} must be a positive integer")
    if epochs is not None and (not isinstance(epochs, (int, float)) or not epochs > 0):
        raise StageError(f"{where}: epochs={epochs!r} must be a positive number")
    if evaluate and (epochs or steps):
        raise StageError(f"{where}: an evaluate stage does not train; drop its steps/epochs")
    schedule = d.get("schedule", _get(t, "schedule", "cosine"))
    if schedule not in SCHEDULES:
        raise StageError(f"{where}: schedule={schedule!r}; use one of {', '.join(SCHEDULES)}")
    lr = float(d.get("learning_rate", t.learning_rate))
    if not lr > 0 and not evaluate:
        raise StageError(f"{where}: learning_rate={lr} must be positive")
    min_ratio = float(d.get("min_lr_ratio", t.min_lr_ratio))
    if not 0 <= min_ratio <= 1:
        raise StageError(f"{where}: min_lr_ratio={min_ratio} must be in [0, 1]")
    warmup = int(d.get("warmup_steps", t.warmup_steps))
    if warmup < 0:
        raise StageError(f"{where}: warmup_steps={warmup} must be >= 0")
    loss = _as_dict(d.get("loss") or {}, f"{where} loss")
    bad = sorted(k for k in loss if k not in config.loss or k == "uncertainty_weighting")
    if bad:
        raise StageError(f"{where}: loss has unknown part {bad[0]!r}; known: "
                         f"{', '.join(k for k in config.loss if k != 'uncertainty_weighting')}")
    for k, v in loss.items():
        if not isinstance(v, (int, float)) or v < 0:
            raise StageError(f"{where}: loss.{k}={v!r} must be a number >= 0")
    mix = _as_dict(d.get("data_mix") or {}, f"{where} data_mix")
    bad = sorted(k for k in mix if k not in schema.CATEGORIES)
    if bad:
        raise StageError(f"{where}: data_mix has unknown category {bad[0]!r}; known: {', '.join(schema.CATEGORIES)}")
    if mix and (any(not isinstance(v, (int, float)) or v < 0 for v in mix.values()) or not sum(mix.values()) > 0):
        raise StageError(f"{where}: data_mix weights must be >= 0 with a positive sum, got {mix}")
    trains = d.get("trains", _get(t, "trainable", "all"))
    try:
        trainable.parse(trains, f"{where} trains")
    except trainable.TrainableError as e:
        raise StageError(str(e)) from None
    return Stage(name=name, steps=None if steps is None else int(steps),
                 epochs=None if epochs is None else float(epochs), learning_rate=lr, schedule=schedule,
                 warmup_steps=warmup, min_lr_ratio=min_ratio, loss=tuple(sorted(loss.items())),
                 data_mix=tuple((c, float(mix.get(c, 0.0))) for c in schema.CATEGORIES) if mix else (),
                 trains=trains, evaluate=evaluate)


def parse_stages(config) -> list[Stage]:
    """`config.stages`, validated; without it, one stage "train" from `config.train`."""
    raw = _get(config, "stages", ())
    if not raw:
        t = config.train
        epochs = float(_get(t, "epochs", 0.0))
        one = {"name": "train", **({"epochs": epochs} if epochs > 0 else {"steps": int(t.steps)})}
        if not epochs and int(t.steps) == 0:
            one = {"name": "train", "evaluate": True}
        return [parse_stage(one, config, "config.train")]
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
        raise StageError(f"config.stages must be a list of stage dicts, got {type(raw).__name__}")
    stages = [parse_stage(s, config, f"config.stages[{i}]") for i, s in enumerate(raw)]
    names = [s.name for s in stages]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise StageError(f"config.stages: stage name {dup[0]!r} is used twice")
    if not any(not s.evaluate for s in stages):
        raise StageError("config.stages: no stage trains")
    return stages


def stage_config(config, stage: Stage, index: int):
    """A copy of `config` as the stage trains it: its loss weights, its learning rate and
    schedule, its trainable parts, and its own shuffle seed (stages do not repeat each
    other's order)."""
    c = config.copy_and_resolve_references()
    for k, v in stage.loss:
        c.loss[k] = v
    c.train.learning_rate = stage.learning_rate
    c.train.min_lr_ratio = stage.min_lr_ratio
    c.train.warmup_steps = stage.warmup_steps
    with c.unlocked():
        c.train.schedule = stage.schedule
        c.train.trainable = stage.trains
    c.data.shuffle_seed = int(config.data.shuffle_seed) + index
    c.data.mix = stage.data_mix
    return c


# ---------------------------------------------------------------------------------------
# Epochs -> steps, and where a step falls


def steps_for_epochs(epochs: float, rows_per_epoch: Sequence[int], global_batch: int) -> int:
    """ceil(rows / global_batch): rows of the first floor(epochs) epochs plus the fraction
    of the next (`rows_per_epoch[e]`: rows the pipeline packs in epoch e)."""
    if not epochs > 0:
        raise StageError(f"epochs={epochs} must be positive")
    if global_batch <= 0:
        raise StageError(f"global batch size {global_batch} must be positive")
    frac = Fraction(epochs).limit_denominator(10**6)  # 0.1 epochs is a tenth, not 0.1000000000000000055
    full = math.floor(frac)
    need = full + (1 if frac > full else 0)
    if len(rows_per_epoch) < need:
        raise StageError(f"{epochs} epochs need the row counts of {need} epochs, got {len(rows_per_epoch)}")
    if any(r <= 0 for r in rows_per_epoch[:need]):
        raise StageError(f"an epoch with no rows: {list(rows_per_epoch[:need])}")
    rows = sum(Fraction(int(r)) for r in rows_per_epoch[:full])
    if frac > full:
        rows += (frac - full) * int(rows_per_epoch[full])
    return max(1, math.ceil(rows / global_batch))


def resolve_steps(stages: Sequence[Stage], global_batch: int,
                  rows_per_epoch: Callable[[int, Stage, int], Sequence[int]]) -> list[int]:
    """Each stage's step count; `rows_per_epoch(index, stage, n_epochs)` gives the rows of
    its first n epochs (only called for stages counted in epochs)."""
    out = []
    for i, s in enumerate(stages):
        if s.evaluate:
            out.append(0)
        elif s.steps is not None:
            out.append(s.steps)
        else:
            out.append(steps_for_epochs(s.epochs, rows_per_epoch(i, s, math.ceil(s.epochs)), global_batch))
    return out


def boundaries(steps: Sequence[int]) -> list[int]:
    """The global step at which each stage ends (cumulative)."""
    return np.cumsum([0, *steps]).tolist()[1:]


def locate(step: int, steps: Sequence[int]) -> tuple[int, int]:
    """(stage index, step within it) of the step that runs next after `step` finished ones.

    Stages without steps are passed over; at or past the end: (len(steps), 0)."""
    if step < 0:
        raise StageError(f"step {step} must be >= 0")
    ends = boundaries(steps)
    k = bisect.bisect_right(ends, step)
    if k >= len(steps):
        return len(steps), 0
    return k, step - (ends[k] - steps[k])


def stage_of_state(step: int, steps: Sequence[int]) -> int:
    """The stage whose optimizer state a checkpoint at `step` holds: the stage of its last
    finished step (stage 0's fresh state at step 0)."""
    if step == 0:
        return next((i for i, n in enumerate(steps) if n > 0), 0)
    return locate(step - 1, steps)[0]


# ---------------------------------------------------------------------------------------
# Learning rate


def make_schedule(kind: str, peak: float, warmup_steps: int, total_steps: int, min_lr_ratio: float):
    """Linear warm-up from 0 to `peak` then `kind` ("cosine", "linear", "constant") to
    `peak * min_lr_ratio` at `total_steps` (constant stays at `peak`)."""
    import optax

    if kind not in SCHEDULES:
        raise StageError(f"schedule {kind!r}: use one of {', '.join(SCHEDULES)}")
    warmup = max(1, int(warmup_steps))
    end = peak * min_lr_ratio
    if kind == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total_steps, warmup + 1), end)
    rest = max(int(total_steps) - warmup, 1)
    after = optax.constant_schedule(peak) if kind == "constant" else optax.linear_schedule(peak, end, rest)
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def epoch_rows(rows: PackedRows, n_epochs: int) -> list[int]:
    """Rows the pipeline packs in each of the first `n_epochs` epochs (a stage's
    `data.pipeline.PackedRows`: its seed, mix and lengths)."""
    return [rows.rows_in_epoch(e) for e in range(int(n_epochs))]


# ---------------------------------------------------------------------------------------
# The run's plan


@dataclasses.dataclass(frozen=True)
class Plan:
    """The stages with their step counts and the config each trains with
    (`configs[k].train.steps` is stage k's step count, `train.stage_start` its first step)."""
    stages: tuple
    steps: tuple
    configs: tuple

    @property
    def total_steps(self) -> int:
        return int(sum(self.steps))

    def start(self, k: int) -> int:
        return int(sum(self.steps[:k]))

    def locate(self, step: int) -> tuple[int, int]:
        return locate(step, self.steps)

    def stage_of_state(self, step: int) -> int:
        return stage_of_state(step, self.steps)


def make_plan(config, lengths: np.ndarray | None = None, data_dir=None) -> Plan:
    """The stages of `config`, their steps (epochs counted on the packed rows of `data_dir`,
    whose fitted `lengths` are given) and per-stage configs."""
    stage_list = parse_stages(config)
    configs = [stage_config(config, s, i) for i, s in enumerate(stage_list)]

    def rows_per_epoch(i, stage, n):
        if lengths is None:
            raise StageError(f"stage {stage.name!r} counts epochs: the plan needs the data")
        return epoch_rows(PackedRows(data_dir, configs[i], lengths), n)

    steps = resolve_steps(stage_list, int(config.train.global_batch_size), rows_per_epoch)
    for i, (c, n) in enumerate(zip(configs, steps)):
        c.train.steps = int(n)
        c.train.stage_start = int(sum(steps[:i]))
    return Plan(tuple(stage_list), tuple(int(n) for n in steps), tuple(configs))
