"""Ahead-of-time compile of the train step: the executable the loop runs, and what it needs.

`compile_step(config, mesh)` lowers the jitted step against the abstract state and batch
(nothing allocated) and compiles it once; the train loop, the benchmark and the dry run
(`python -m promethios_jax.train --dry_run`) all run or inspect that executable. Its
memory analysis gives the per-device bytes of a step, which `check_fit` compares with
what the devices hold before any state exists (docs/interfaces.md).
"""
from __future__ import annotations

import dataclasses
import math
import time

import jax

from promethios_jax import flops, trainable
from promethios_jax.data import batch as batch_lib
from promethios_jax.state import TrainSetup, abstract_train_state
from promethios_jax.step import make_train_step


@dataclasses.dataclass(frozen=True)
class CompiledStep:
    """The compiled train step with what it was compiled for. Call it as
    `state, metrics = compiled.executable(state, batch)` (the state is donated)."""
    executable: jax.stages.Compiled
    setup: TrainSetup
    batch: dict  # the abstract batch (ShapeDtypeStructs with shardings)
    compile_s: float

    def memory(self) -> dict:
        return memory_analysis(self.executable)


def jit_step(config, setup: TrainSetup, batch_abs: dict):
    batch_sh = jax.tree.map(lambda a: a.sharding, batch_abs)
    return jax.jit(make_train_step(config, setup), in_shardings=(setup.shardings, batch_sh),
                   out_shardings=(setup.shardings, None), donate_argnums=(0,))


def compile_step(config, mesh) -> CompiledStep:
    t0 = time.perf_counter()
    setup = abstract_train_state(config, mesh)
    batch_abs = batch_lib.abstract_batch(config, mesh)
    executable = jit_step(config, setup, batch_abs).lower(setup.abstract, batch_abs).compile()
    return CompiledStep(executable, setup, batch_abs, time.perf_counter() - t0)


def memory_analysis(executable) -> dict:
    """Per-device bytes of one call: arguments + outputs + temporaries - aliased (donated)."""
    mem = executable.memory_analysis()
    if mem is None:
        return {"bytes_per_device": None}
    parts = {"argument_bytes": int(mem.argument_size_in_bytes), "output_bytes": int(mem.output_size_in_bytes),
             "temp_bytes": int(mem.temp_size_in_bytes), "alias_bytes": int(mem.alias_size_in_bytes)}
    need = parts["argument_bytes"] + parts["output_bytes"] + parts["temp_bytes"] - parts["alias_bytes"]
    return {"bytes_per_device": need, **parts}


def model_flops_per_step(config) -> float:
    tokens = config.train.global_batch_size * config.model.max_seq_len
    return flops.model_flops_per_token(config.model, config.model.max_seq_len) * tokens


def dry_run_report(config, mesh, compiled: CompiledStep) -> dict:
    mem = compiled.memory()
    cost = compiled.executable.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    nbytes = mem["bytes_per_device"]
    setup = compiled.setup
    on, _ = trainable.count(setup.abstract["params"], setup.trainable)
    return {
        "params": setup.param_count,
        "trainable": config.train.trainable,
        "trainable_params": on,
        # Frozen parameters hold none: this is what config.train.trainable saves.
        "optimizer_state_bytes_per_device": optimizer_state_bytes_per_device(setup),
        "bytes_per_device": nbytes,
        "gib_per_device": round(nbytes / 2**30, 3) if nbytes is not None else None,
        **{k: mem.get(k) for k in ("argument_bytes", "output_bytes", "temp_bytes", "alias_bytes")},
        # XLA's cost analysis counts a while-loop body once (layer scan, accumulation
        # scan), so the per-step figure comes from the model's FLOP formula.
        "flops_per_device_step": model_flops_per_step(config) / mesh.size,
        "xla_cost_analysis_flops": float(cost.get("flops", float("nan"))) if cost else None,
        "tokens_per_step": config.train.global_batch_size * config.model.max_seq_len,
        "mesh": dict(mesh.shape),
        "compile_s": round(compiled.compile_s, 1),
    }


def optimizer_state_bytes_per_device(setup: TrainSetup) -> int:
    """Bytes of the optimizer state one device holds (its shards of every leaf)."""
    total = 0
    for a in jax.tree.leaves(setup.abstract["opt_state"]):
        shard = a.sharding.shard_shape(a.shape) if a.sharding is not None else a.shape
        total += math.prod(shard) * a.dtype.itemsize
    return int(total)


def dry_run(config, mesh) -> dict:
    return dry_run_report(config, mesh, compile_step(config, mesh))
