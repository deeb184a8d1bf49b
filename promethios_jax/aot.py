"""Ahead-of-time compile of the train step: the executable the loop runs, and what it needs.

`compile_step(config, mesh)` lowers the jitted step against the abstract state and batch
(nothing allocated) and compiles it once; the train loop, the benchmark and the dry run
(`python -m promethios_jax.train --dry_run`) all run or inspect that executable. Its
memory analysis gives the per-device bytes of a step, which `check_fit` compares with
what a device holds (`device_memory_limit`) before any state exists, so that a run that
cannot fit is refused with the levers that would help instead of dying in an allocation.
"""
from __future__ import annotations

import dataclasses
import math
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

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


def compile_step(config, mesh, compiler_options: dict | None = None) -> CompiledStep:
    """`compiler_options`: XLA flags for this compile only (gpu_aot passes the launch flags)."""
    t0 = time.perf_counter()
    setup = abstract_train_state(config, mesh)
    batch_abs = batch_lib.abstract_batch(config, mesh)
    executable = jit_step(config, setup, batch_abs).lower(setup.abstract, batch_abs).compile(
        compiler_options=compiler_options)
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


class DoesNotFit(RuntimeError):
    """The compiled step needs more memory per device than a device holds."""


def _host_available_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (Linux), else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def device_memory_limit(devices=None) -> tuple[int | None, str]:
    """(bytes one device can hold, where the figure comes from); (None, why) when unknown.

    GPU and TPU report their limit (`memory_stats()["bytes_limit"]`). XLA's CPU devices
    of a process all allocate from the host's memory: its available memory (MemAvailable)
    divided among them.
    """
    devices = list(devices if devices is not None else jax.local_devices())
    d = devices[0]
    stats = d.memory_stats() if hasattr(d, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), f"{d.device_kind} memory_stats()['bytes_limit']"
    if d.platform == "cpu":
        avail = _host_available_bytes()
        if avail is not None:
            return avail // len(devices), f"available host memory (MemAvailable) / {len(devices)} local CPU device(s)"
    return None, f"{d.platform} devices report no memory limit"


def _gib(n) -> str:
    return f"{n / 2**30:.2f} GiB"


def fit_message(config, mesh, mem: dict, limit: int, source: str, n_params: int) -> str:
    t, m = config.train, config.model
    shape = dict(mesh.shape)
    rows = int(t.global_batch_size) // max(1, shape.get("data", 1) * shape.get("fsdp", 1))
    state_part = mem.get("argument_bytes")
    temp_part = mem.get("temp_bytes")
    parts = (f" (arguments: state and batch {_gib(state_part)}; temporaries {_gib(temp_part)})"
             if state_part is not None and temp_part is not None else "")
    return (
        f"the train step does not fit: it needs {_gib(mem['bytes_per_device'])} per device{parts}, a device holds "
        f"{_gib(limit)} ({source}).\n"
        f"  config: {n_params:,} parameters (d_model={m.d_model}, n_layers={m.n_layers}, vocab_size={m.vocab_size}, "
        f"max_seq_len={m.max_seq_len}, param_dtype={m.param_dtype}, compute_dtype={m.compute_dtype}); mesh {shape}; "
        f"global_batch_size={t.global_batch_size} ({rows} rows per data-parallel device), "
        f"grad_accum_steps={t.grad_accum_steps}, remat_policy={m.remat_policy!r}\n"
        "  levers: a larger fsdp axis (config.mesh.fsdp, over more devices: parameters and optimizer state are "
        "split over it); a smaller per-device batch (config.train.global_batch_size) or more accumulation steps "
        "(config.train.grad_accum_steps: the same global batch in smaller micro-batches); a remat policy "
        "(config.model.remat_policy='full' or 'dots_saveable': recompute activations in the backward pass).\n"
        "  To run anyway, pass --allow_oversubscribe.")


def check_fit(config, mesh, compiled: CompiledStep, allow: bool = False, log=print) -> dict:
    """Compares the compiled step's per-device bytes with a device's limit; DoesNotFit when
    it needs more (unless `allow`, which only says so). All processes decide together."""
    mem = compiled.memory()
    need = mem["bytes_per_device"]
    local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    limit, source = device_memory_limit(local)
    fits = need is None or limit is None or need <= limit
    if jax.process_count() > 1:
        fits = bool(np.all(multihost_utils.process_allgather(np.array(fits))))
    info = {"bytes_per_device": need, "limit_bytes": limit, "limit_source": source, "fits": fits}
    if not fits:
        msg = fit_message(config, mesh, mem, limit if limit is not None else 0, source, compiled.setup.param_count)
        if not allow:
            raise DoesNotFit(msg)
        log(f"WARNING (--allow_oversubscribe): {msg.splitlines()[0]}")
    return info


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
