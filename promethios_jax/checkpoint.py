"""Orbax checkpoints: one directory per step holding `state`, `data_iter`, `config` and
`integrity` (docs/checkpoints.md).

`state` is a plain PyTree ({"step", "params", "opt_state", ...}) in Orbax's standard
format, so plain Orbax can read it without this project's code. Restores always
target shardings built from the *current* mesh, so a checkpoint moves between device
counts (the failure of orbax #648 when no target sharding is given).

`data_iter` holds the data position as the data iterator gives it (`get_state()`,
data/position.py); this module stores it and hands it back, nothing more.

`integrity` holds one fingerprint per array of `state` (promethios_jax/integrity.py),
taken on the devices at save time and checked after every restore: a garbled chunk can
decode without an error.

Nothing here deletes a checkpoint that restores: Orbax removes old steps (max_to_keep)
only after the newer save has committed, and a step that does not read back is moved
aside to `checkpoints/corrupt-<step>-<time>`, never deleted.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils

from promethios_jax import integrity, sharding
from promethios_jax import state as state_lib
from promethios_jax import workdir as workdir_lib
from promethios_jax.data import tokenizer as tokenizer_lib
from promethios_jax.workdir import WorkdirError, checkpoint_dir

log = logging.getLogger(__name__)

ITEMS = ("state", "data_iter", "config", "integrity", "tokenizer")
_TMP_STEP = re.compile(r"^(\d+)\.orbax-checkpoint-tmp")


class CheckpointError(WorkdirError):
    """A checkpoint that cannot be restored as asked (shape mismatch, none readable, unknown step)."""


def _primary() -> bool:
    return jax.process_index() == 0


def _warn(msg: str) -> None:
    log.debug(msg)
    if _primary():
        print(f"WARNING: {msg}", file=sys.stderr, flush=True)


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def _all_true(ok: bool) -> bool:
    """True on every process iff `ok` holds on every process (one host: `ok`)."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.array(ok))))


_ARRAY_SAVING_SET = False


def _configure_array_saving() -> None:
    """Single process: write each array from one replica, not split across replicas.

    Orbax's replica-parallel saving (its default off GPU) slices every replicated
    array per replica with one small jitted op each: on a data-parallel mesh the first
    save compiles a thousand of them (7.7 s of blocking time for the tiny model here,
    0.2 s without) and every later save dispatches them again, while all replicas live
    in this one process anyway. Several processes keep Orbax's default, where it
    spreads the writes over the hosts. Restores are unaffected (a save-side option).
    """
    global _ARRAY_SAVING_SET
    if _ARRAY_SAVING_SET or jax.process_count() > 1:
        return
    try:
        from orbax.checkpoint._src.metadata import array_metadata_store

        store = array_metadata_store.Store()  # as Orbax's default jax.Array handler
    except ImportError:  # pragma: no cover -- another Orbax layout
        store = None
    handler = ocp.type_handlers.ArrayHandler(use_replica_parallel=False, array_metadata_store=store)
    try:
        from orbax.checkpoint._src.serialization import type_handler_registry as registry

        registry.GLOBAL_TYPE_HANDLER_REGISTRY.add(jax.Array, handler, override=True, ignore_warnings=True)
    except (ImportError, AttributeError, TypeError):  # pragma: no cover
        ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)
    _ARRAY_SAVING_SET = True


def make_manager(workdir, ckpt_cfg=None, read_only: bool = False) -> ocp.CheckpointManager:
    """The run's CheckpointManager over WORKDIR/checkpoints.

    A writer also removes the `<step>.orbax-checkpoint-tmp` directory of a save that a
    killed process left unfinished (it was never a checkpoint: Orbax commits a step by
    renaming its tmp directory), after saying so.
    """
    ckpt_cfg = ckpt_cfg or ml_collections.ConfigDict(
        {"max_to_keep": None, "keep_period": 0, "async_save": False})
    if not read_only:
        _configure_array_saving()
        cdir = checkpoint_dir(workdir)
        if _primary() and cdir.is_dir():
            for p in sorted(cdir.iterdir()):
                m = _TMP_STEP.match(p.name)
                if m:
                    _warn(f"found an unfinished save of step {m.group(1)} ({p.name}: the process stopped "
                          "before it committed); it is not a checkpoint and is removed")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=ckpt_cfg.max_to_keep or None,
        keep_period=ckpt_cfg.keep_period or None,
        enable_async_checkpointing=bool(ckpt_cfg.async_save) and not read_only,
        create=not read_only,
        read_only=read_only,
        cleanup_tmp_directories=not read_only,
        # Saves are triggered by the train loop, which knows about SIGTERM and the last step.
        save_interval_steps=1,
    )
    # Handlers named up front so item_metadata() works before any save or restore.
    handlers = {"state": ocp.StandardCheckpointHandler(), "data_iter": ocp.JsonCheckpointHandler(),
                "config": ocp.JsonCheckpointHandler(), "integrity": ocp.JsonCheckpointHandler(),
                "tokenizer": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_handlers=handlers)


def save(manager: ocp.CheckpointManager, step: int, state, data_iter_state: dict, config, force=False,
         tokenizer: dict | None = None) -> bool:
    """Starts a save of one step (asynchronous when the manager is); returns whether it saved.

    `tokenizer` is the tokenizer's `checkpoint_record` (default: built from `config`; a
    tokenizer trained on first use needs the caller's, which knows the data directory).

    The call returns once the arrays are copied off the devices, so the caller may
    donate `state` to the next step right away. The step directory appears (by an
    atomic rename) only when every item is written; older steps beyond max_to_keep are
    removed only after that.
    """
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data_iter=ocp.args.JsonSave(data_iter_state),
        config=ocp.args.JsonSave(json.loads(config.to_json())),
        integrity=ocp.args.JsonSave(integrity.record(state)),
        tokenizer=ocp.args.JsonSave(tokenizer or tokenizer_lib.checkpoint_record(config)),
    )
    return manager.save(step, args=args, force=force)


# ---------------------------------------------------------------------------------------
# Restore


def _shape_mismatches(saved_meta, abstract, prefix="") -> list[str]:
    """Lists tensors whose saved shape differs from the target, by path."""
    problems = []
    flat_target = dict(integrity.leaf_paths(abstract))
    flat_saved = dict(integrity.leaf_paths(saved_meta))
    for path, tgt in flat_target.items():
        if path not in flat_saved:
            problems.append(f"{path}: missing from the checkpoint (expected shape {tuple(tgt.shape)})")
            continue
        got = getattr(flat_saved[path], "shape", None)
        if got is not None and tuple(got) != tuple(tgt.shape):
            problems.append(f"{path}: checkpoint has shape {tuple(got)}, the config expects {tuple(tgt.shape)}")
    for path in flat_saved:
        if path not in flat_target:
            problems.append(f"{path}: in the checkpoint but not in the model the config builds")
    return problems


def _restore_step(manager, step: int, abstract_state):
    meta = manager.item_metadata(step)
    state_meta = meta["state"] if meta is not None else None
    if state_meta is not None:
        tree = getattr(state_meta, "tree", state_meta)
        problems = _shape_mismatches(tree, abstract_state)
        if problems:
            raise CheckpointError(
                f"checkpoint step {step} does not fit the configured model:\n  " + "\n  ".join(problems))
    args = {"state": ocp.args.StandardRestore(abstract_state), "data_iter": ocp.args.JsonRestore()}
    checked = _has_item(manager, step, "integrity")
    if checked:
        args["integrity"] = ocp.args.JsonRestore()
    restored = manager.restore(step, args=ocp.args.Composite(**args))
    state, it = restored["state"], restored["data_iter"]
    if not isinstance(it, dict) or "batches_consumed" not in it:
        raise ValueError(f"data_iter holds no data position: {it!r}")
    saved_step = int(np.asarray(jax.device_get(state["step"])))
    if saved_step != step:
        raise ValueError(f"its state says step {saved_step}")
    if checked:
        integrity.verify(state, integrity.expected(restored["integrity"]), "state")
    return state, it


def _has_item(manager, step: int, item: str) -> bool:
    """Whether a step holds `item` (checkpoints written before it existed, or by other
    tools, may not)."""
    return (Path(str(manager.directory)) / str(step) / item).is_dir()


def _is_resource_error(e: BaseException) -> bool:
    """Out of memory is not corruption: it must not move a checkpoint aside."""
    text = str(e)
    return isinstance(e, MemoryError) or "RESOURCE_EXHAUSTED" in text or "Out of memory" in text


def _describe(e: BaseException | None) -> str:
    if e is None:
        return "it failed to read on another process"
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first[:300]}" if first else type(e).__name__


def quarantine(manager: ocp.CheckpointManager, step: int) -> Path:
    """Moves step `step` aside to checkpoints/corrupt-<step>-<time> (never deletes it).

    Out of the step numbering, it no longer collides with the next save of that step
    and no longer counts toward max_to_keep (where it would push out the checkpoint the
    run resumed from).
    """
    cdir = Path(str(manager.directory))
    src = cdir / str(step)
    dst = cdir / f"corrupt-{step}-{time.strftime('%Y%m%dT%H%M%S')}"
    if _primary() and src.exists():
        n = 0
        while dst.exists():
            n += 1
            dst = cdir / f"corrupt-{step}-{time.strftime('%Y%m%dT%H%M%S')}-{n}"
        os.rename(src, dst)
        _warn(f"moved the unreadable checkpoint of step {step} to {dst} (kept for inspection; "
              f"delete it yourself when you no longer need it)")
    _sync(f"promethios_quarantine_{step}")
    return dst


def restore_latest(manager: ocp.CheckpointManager, abstract_state, step: int | None = None):
    """Restores the newest checkpoint that reads back whole, or `step` if given.

    A corrupt or partial newer checkpoint is reported by step and skipped; once an
    older one has restored, the skipped ones are moved aside (`quarantine`), never
    deleted. When none restores, CheckpointError (nothing is moved): starting from
    scratch over a run's checkpoints is a decision for the user. A shape mismatch is a
    config error, not corruption, and is raised.
    Returns (state, data_iter_state, step) or None when there is no checkpoint.
    """
    steps = sorted(manager.all_steps(), reverse=True)
    if step is not None:
        if step not in steps:
            raise CheckpointError(
                f"no checkpoint for step {step} in {manager.directory}; available: {sorted(steps) or 'none'}")
        state, it = _restore_step(manager, step, abstract_state)
        return state, it, step
    skipped = []
    for s in steps:
        err = None
        try:
            state, it = _restore_step(manager, s, abstract_state)
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 -- any read failure means this step is unusable
            if _is_resource_error(e):
                raise
            err = e
        if _all_true(err is None):
            for bad in skipped:
                quarantine(manager, bad)
            if skipped:
                manager.reload()
            return state, it, s
        skipped.append(s)
        log.debug("restore of step %d failed", s, exc_info=err)
        _warn(f"checkpoint at step {s} is corrupt or partial ({_describe(err)}); falling back to the one before")
    if skipped:
        raise CheckpointError(
            f"no checkpoint in {manager.directory} reads back (tried steps {skipped}); nothing was moved or "
            "deleted. To start over, move them away or use another --workdir")
    return None


def load(workdir, step: int | None = None, mesh_shape: dict | None = None):
    """Builds the model from a workdir's checkpoint: returns (model, config).

    Parameters land on a mesh over the local devices (all of them on `fsdp` unless
    `mesh_shape` says otherwise), whatever device count trained them. Without `step`,
    the newest checkpoint that reads back (a corrupt newer one is named and skipped;
    this reader moves nothing).
    """
    if step is not None:
        return _load_step(workdir, step, mesh_shape)
    steps = workdir_lib.checkpoint_steps(workdir)[::-1]
    if not steps:
        workdir_lib.read_config(workdir)  # raises the "train first" error
    for i, s in enumerate(steps):
        try:
            return _load_step(workdir, s, mesh_shape)
        except CheckpointError as e:
            if "does not fit" in str(e) or i == len(steps) - 1:
                raise
            err = e
        except Exception as e:  # noqa: BLE001 -- an unreadable step: try the one before
            if _is_resource_error(e) or i == len(steps) - 1:
                raise
            err = e
        _warn(f"checkpoint at step {s} is corrupt or partial ({_describe(err)}); loading the one before")
    raise AssertionError("unreachable")


def _load_step(workdir, step: int, mesh_shape: dict | None):
    try:
        config, step = workdir_lib.read_config(workdir, step)
    except WorkdirError as e:
        raise CheckpointError(str(e)) from e
    config.mesh.update(mesh_shape or {"data": 1, "fsdp": -1, "tensor": 1})
    mesh = sharding.make_mesh(config)
    params = state_lib.abstract_params(config, mesh)
    target = params.shapes

    # Only the params are read (partial restore): eval never pays for the optimizer state.
    step_dir = workdir_lib.step_dir(workdir, step)
    state_dir = step_dir / "state"
    with ocp.PyTreeCheckpointer() as reader:
        tree = reader.metadata(state_dir).item_metadata.tree
        problems = _shape_mismatches(tree.get("params", {}), target)
        if problems:
            raise CheckpointError(
                f"checkpoint step {step} does not fit its config:\n  " + "\n  ".join(problems))
        restored = reader.restore(state_dir, args=ocp.args.PyTreeRestore(
            item={"params": target},
            restore_args=jax.tree.map(lambda t: ocp.ArrayRestoreArgs(sharding=t.sharding), {"params": target}),
            partial_restore=True))["params"]
    record_path = step_dir / "integrity" / "metadata"
    if record_path.exists():
        integrity.verify({"params": restored}, integrity.expected(json.loads(record_path.read_text())),
                f"checkpoint step {step}")
    model = nnx.merge(params.graphdef, restored)
    config.lock()
    return model, config
