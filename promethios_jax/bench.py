"""Train-step benchmark: steady-state tokens/s, step time, TFLOP/s, MFU and peak memory.

    python -m promethios_jax.bench --config=configs/1_3b.py [--steps=10] [--repeats=5] [--warmup=3]
        [--config.train.global_batch_size=16 --config.train.grad_accum_steps=1 ...]

What is timed is the train step exactly as training builds it (`aot.compile_step`: the
same model, loss, optimizer, shardings and donation), on the mesh from the config.

The batches are synthetic (`data/synthetic.py`), so that the figure is the model's and
the step's, not the input pipeline's (that one has its own benchmark,
`promethios_jax.data.bench`). They have training's shapes and a fixed layout: even rows hold one document, odd rows two packed
documents (5/8 and 3/8 of the row), every slot belongs to a document (no padding); each
document has a prompt (its first quarter) whose last token carries the governance head
slot, LM targets on the response, random tokens, telemetry and head labels drawn inside
their label spaces. Two such batches are placed on the mesh before timing and used in
turn; no host-to-device transfer is timed.

Timing: compile (lower + compile, reported apart), then `--warmup` steps, then
`--repeats` windows of `--steps` steps each; every window ends with
`jax.block_until_ready` on the state and the step's metrics, and the figures are the
median window. Tokens per step = global batch x max_seq_len (every slot of the packed
rows, as the train loop's tracker counts them); FLOPs per token come from
`flops.model_flops_per_token` (model FLOPs: remat recomputation is not counted). MFU is
against the device's bf16 peak (`config.monitor.peak_tflops` when > 0, else the table in
flops.py), null where the peak is unknown (CPU). Peak memory is the largest
`peak_bytes_in_use` over the local devices, null where the backend keeps no statistics
(CPU); `xla_memory_gib` is the compiled step's own per-device estimate (arguments +
outputs + temporaries - aliased), available everywhere.

Output: a table, then as the last line one JSON object (tokens_per_s, step_time_s,
device_kind, mfu, ...). With `attention_impl='cudnn'` on a backend without cuDNN the
step is built with 'xla' instead, and the JSON says so.

Flags: --config (and --config.* overrides) and the multi-host flags as train's.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import jax
from absl import app, flags
from ml_collections import config_flags

from promethios_jax import aot, distributed, flops, metrics, sharding
from promethios_jax import config as config_lib
from promethios_jax.data import synthetic

DEFAULT_CONFIG = str(Path(__file__).resolve().parent.parent / "configs" / "tiny.py")

NUM_BATCHES = 2


def _define_flags():
    """The bench's own flags, defined only when run as a program (so importing this module
    next to other absl programs cannot clash)."""
    if "repeats" in flags.FLAGS:
        return
    config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Config file (ml-collections get_config()).")
    distributed.define_flags()
    flags.DEFINE_integer("steps", 10, "Steps per timed window.", lower_bound=1)
    flags.DEFINE_integer("repeats", 5, "Timed windows; the figures are the median window.", lower_bound=1)
    flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.", lower_bound=0)
    flags.DEFINE_integer("batch_seed", 0, "Seed of the synthetic batches.")


# ---------------------------------------------------------------------------------------
# Placing batches


def place_batch(batch: dict, batch_abs: dict) -> dict:
    """Puts a global numpy batch on the mesh with the step's input shardings (each
    process supplies the shards of its own devices, so this works on many hosts)."""
    out = {}
    for k, abs_ in batch_abs.items():
        arr = batch[k]
        assert arr.shape == abs_.shape and arr.dtype == abs_.dtype, (k, arr.shape, arr.dtype, abs_)
        out[k] = jax.make_array_from_callback(arr.shape, abs_.sharding, lambda idx, a=arr: a[idx])
    return out


# ---------------------------------------------------------------------------------------
# The measurement


def run_benchmark(config, steps: int = 10, repeats: int = 5, warmup: int = 3, batch_seed: int = 0,
                  config_name: str = "") -> dict:
    """Compiles, warms up and times the train step; returns the report (the JSON line)."""
    config_lib.validate(config, jax.device_count(), jax.process_count())
    notes = []
    if config.model.attention_impl == "cudnn" and jax.default_backend() != "gpu":
        notes.append("attention_impl='cudnn' needs a GPU; measured with 'xla'")
        config.model.attention_impl = "xla"
    mesh = sharding.make_mesh(config)
    step = aot.compile_step(config, mesh)
    compiled, batch_abs, compile_s = step.executable, step.batch, step.compile_s
    xla_bytes = step.memory()["bytes_per_device"]

    state = jax.jit(step.setup.init, out_shardings=step.setup.shardings)()
    batches = [place_batch(synthetic.batch(config, batch_seed + i), batch_abs) for i in range(NUM_BATCHES)]
    jax.block_until_ready((state, batches))

    i = 0
    m = None
    for _ in range(warmup):
        state, m = compiled(state, batches[i % NUM_BATCHES])
        i += 1
    jax.block_until_ready((state, m))

    windows = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            state, m = compiled(state, batches[i % NUM_BATCHES])
            i += 1
        jax.block_until_ready((state, m))
        windows.append((time.perf_counter() - t0) / steps)
    last_loss = float(jax.device_get(m["loss"]))

    n_dev = jax.device_count()
    seq_len = config.model.max_seq_len
    tokens_per_step = config.train.global_batch_size * seq_len
    step_time = statistics.median(windows)
    tps = tokens_per_step / step_time
    fpt = flops.model_flops_per_token(config.model, seq_len)
    device_kind = jax.devices()[0].device_kind
    peak = flops.resolve_peak_tflops(config.monitor, device_kind)
    util = flops.mfu(tps / n_dev, fpt, peak)
    mem_stats = metrics.device_memory_stats()
    peak_bytes = mem_stats.get("memory/peak_bytes_in_use")
    limit_bytes = mem_stats.get("memory/bytes_limit")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "tokens_per_s": tps,
        "step_time_s": step_time,
        "device_kind": device_kind,
        "mfu": util,
        "tflops_per_device": tps / n_dev * fpt / 1e12,
        "tokens_per_s_per_device": tps / n_dev,
        "peak_tflops": peak,
        "peak_memory_gib": peak_bytes / 2**30 if peak_bytes is not None else None,
        "memory_limit_gib": limit_bytes / 2**30 if limit_bytes is not None else None,
        "xla_memory_gib": xla_bytes / 2**30 if xla_bytes is not None else None,
        "config": config_name,
        "global_batch_size": config.train.global_batch_size,
        "grad_accum_steps": config.train.grad_accum_steps,
        "seq_len": seq_len,
        "tokens_per_step": tokens_per_step,
        "params": step.setup.param_count,
        "flops_per_token": fpt,
        "compute_dtype": config.model.compute_dtype,
        "param_dtype": config.model.param_dtype,
        "attention_impl": config.model.attention_impl,
        "remat_policy": config.model.remat_policy,
        "scan_layers": bool(config.model.scan_layers),
        "mesh": {k: int(v) for k, v in mesh.shape.items()},
        "num_devices": n_dev,
        "backend": jax.default_backend(),
        "steps": steps,
        "repeats": repeats,
        "warmup": warmup,
        "step_times_s": windows,
        "compile_s": compile_s,
        "final_loss": last_loss,
        "jax_version": jax.__version__,
        "load_avg_1m": load,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "synthetic_batches": True,
        "notes": notes,
    }


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e6 else f"{v:,.0f}"
    return str(v)


def format_table(report: dict, keys=None) -> str:
    keys = keys or ("config", "device_kind", "num_devices", "mesh", "params", "global_batch_size",
                    "grad_accum_steps", "seq_len", "compute_dtype", "attention_impl", "remat_policy",
                    "compile_s", "step_time_s", "tokens_per_s", "tokens_per_s_per_device",
                    "tflops_per_device", "peak_tflops", "mfu", "peak_memory_gib", "xla_memory_gib",
                    "final_loss", "load_avg_1m")
    width = max(len(k) for k in keys)
    lines = [f"{k:<{width}}  {_fmt(report.get(k))}" for k in keys]
    times = report.get("step_times_s")
    if times:
        lines.append(f"{'windows (s/step)':<{width}}  " + " ".join(f"{t:.4g}" for t in times))
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        distributed.initialize()
        config = flags.FLAGS.config
        name = config_flags.get_config_filename(flags.FLAGS["config"])
        overrides = config_flags.get_override_values(flags.FLAGS["config"])
        report = run_benchmark(config, flags.FLAGS.steps, flags.FLAGS.repeats, flags.FLAGS.warmup,
                               flags.FLAGS.batch_seed, config_name=name)
        report["overrides"] = overrides
    except (distributed.DistributedError, config_lib.ConfigError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    for note in report["notes"]:
        print(f"note: {note}")
    print(format_table(report))
    print(json.dumps(report), flush=True)
    return 0


def run():
    _define_flags()
    app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
    run()
