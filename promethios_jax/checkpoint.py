"""Orbax checkpoints: one directory per step holding `state`, `data_iter` and `config`.

`state` is a plain PyTree ({"step", "params", "opt_state", ...}) in Orbax's standard
format, so plain Orbax can read it without this project's code. Restores always
target shardings built from the *current* mesh, so a checkpoint moves between device
counts (the failure of orbax #648 when no target sharding is given).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

ITEMS = ("state", "data_iter", "config")


class CheckpointError(RuntimeError):
    pass


def checkpoint_dir(workdir) -> Path:
    return Path(workdir).absolute() / "checkpoints"


def make_manager(workdir, ckpt_cfg=None, read_only: bool = False) -> ocp.CheckpointManager:
    ckpt_cfg = ckpt_cfg or ml_collections.ConfigDict(
        {"max_to_keep": None, "keep_period": 0, "async_save": False})
    options = ocp.CheckpointManagerOptions(
        max_to_keep=ckpt_cfg.max_to_keep or None,
        keep_period=ckpt_cfg.keep_period or None,
        enable_async_checkpointing=bool(ckpt_cfg.async_save) and not read_only,
        create=not read_only,
        read_only=read_only,
        # Saves are triggered by the train loop, which knows about SIGTERM and the last step.
        save_interval_steps=1,
    )
    # Handlers named up front so item_metadata() works before any save or restore.
    handlers = {"state": ocp.StandardCheckpointHandler(), "data_iter": ocp.JsonCheckpointHandler(),
                "config": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_handlers=handlers)


def save(manager: ocp.CheckpointManager, step: int, state, data_iter_state: dict, config, force=False) -> bool:
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data_iter=ocp.args.JsonSave(data_iter_state),
        config=ocp.args.JsonSave(json.loads(config.to_json())),
    )
    return manager.save(step, args=args, force=force)


def _shape_mismatches(saved_meta, abstract, prefix="") -> list[str]:
    """Lists tensors whose saved shape differs from the target, by path."""
    problems = []
    flat_target = dict(_flatten(abstract))
    flat_saved = dict(_flatten(saved_meta))
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


def _flatten(tree):
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    for path, leaf in leaves:
        yield "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path), leaf


def _restore_step(manager, step: int, abstract_state):
    meta = manager.item_metadata(step)
    state_meta = meta["state"] if meta is not None else None
    if state_meta is not None:
        tree = getattr(state_meta, "tree", state_meta)
        problems = _shape_mismatches(tree, abstract_state)
        if problems:
            raise CheckpointError(
                f"checkpoint step {step} does not fit the configured model:\n  " + "\n  ".join(problems))
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data_iter=ocp.args.JsonRestore(),
    ))
    return restored["state"], restored["data_iter"]


def restore_latest(manager: ocp.CheckpointManager, abstract_state, step: int | None = None):
    """Restores the newest checkpoint that reads back whole, or `step` if given.

    A corrupt or partial newest checkpoint is reported by step and skipped, never
    deleted. A shape mismatch is a config error, not corruption, and is raised.
    Returns (state, data_iter_state, step) or None when there is no checkpoint.
    """
    steps = sorted(manager.all_steps(), reverse=True)
    if step is not None:
        if step not in steps:
            raise CheckpointError(
                f"no checkpoint for step {step} in {manager.directory}; available: {sorted(steps) or 'none'}")
        state, it = _restore_step(manager, step, abstract_state)
        return state, it, step
    for s in steps:
        try:
            state, it = _restore_step(manager, s, abstract_state)
            return state, it, s
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 -- any read failure means this step is unusable
            log.warning("checkpoint at step %d is corrupt or partial (%s: %s); trying the one before",
                        s, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
            print(f"WARNING: checkpoint at step {s} is corrupt or partial "
                  f"({type(e).__name__}); falling back to the one before", flush=True)
    return None


def read_config(workdir, step: int | None = None) -> tuple[ml_collections.ConfigDict, int]:
    """The resolved config saved with a checkpoint (the newest, or `step`)."""
    cdir = checkpoint_dir(workdir)
    if not cdir.is_dir():
        raise CheckpointError(f"no checkpoints in {workdir}: {cdir} does not exist (train first)")
    steps = sorted(int(p.name) for p in cdir.iterdir() if p.name.isdigit())
    if not steps:
        raise CheckpointError(f"no checkpoints in {cdir} (train first)")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise CheckpointError(f"no checkpoint for step {step} in {cdir}; available: {steps}")
    path = cdir / str(step) / "config" / "metadata"
    if not path.exists():
        cands = list((cdir / str(step) / "config").glob("*"))
        path = cands[0] if cands else path
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint step {step}: cannot read its config ({path}): {e}") from e
    return ml_collections.ConfigDict(cfg), step


def load(workdir, step: int | None = None, mesh_shape: dict | None = None):
    """Builds the model from a workdir's checkpoint: returns (model, config).

    Parameters land on a mesh over the local devices (all of them on `fsdp` unless
    `mesh_shape` says otherwise), whatever device count trained them.
    """
    from flax import nnx

    from promethios_jax import sharding
    from promethios_jax.model import GovernanceTransformer

    config, step = read_config(workdir, step)
    config.mesh.update(mesh_shape or {"data": 1, "fsdp": -1, "tensor": 1})
    mesh = sharding.make_mesh(config)
    abstract = nnx.eval_shape(lambda: GovernanceTransformer(config.model, rngs=nnx.Rngs(0)))
    graphdef, abs_state = nnx.split(abstract, nnx.Param)
    abs_params = nnx.to_pure_dict(abs_state)
    specs = sharding.param_specs(abs_params, nnx.to_pure_dict(nnx.get_partition_spec(abs_state)),
                                 config.sharding.rules, mesh)
    shardings = sharding.to_named(specs, mesh)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abs_params, shardings)

    # Only the params are read (partial restore): eval never pays for the optimizer state.
    state_dir = checkpoint_dir(workdir) / str(step) / "state"
    with ocp.PyTreeCheckpointer() as reader:
        tree = reader.metadata(state_dir).item_metadata.tree
        problems = _shape_mismatches(tree.get("params", {}), abs_params)
        if problems:
            raise CheckpointError(
                f"checkpoint step {step} does not fit its config:\n  " + "\n  ".join(problems))
        params = reader.restore(state_dir, args=ocp.args.PyTreeRestore(
            item={"params": target},
            restore_args=jax.tree.map(lambda t: ocp.ArrayRestoreArgs(sharding=t.sharding), {"params": target}),
            partial_restore=True))["params"]
    restored = {"state": {"params": params}}
    model = nnx.merge(graphdef, restored["state"]["params"])
    config.lock()
    return model, config


def mark_done(workdir, step: int) -> None:
    tmp = Path(workdir) / ".TRAINING_DONE.tmp"
    tmp.write_text(json.dumps({"step": int(step)}))
    os.replace(tmp, Path(workdir) / "TRAINING_DONE")


def np_scalar(x):
    return np.asarray(jax.device_get(x)).item()
