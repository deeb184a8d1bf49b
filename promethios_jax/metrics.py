"""What a person watching a run sees: TensorBoard scalars, metrics.jsonl, throughput,
MFU, memory, cost, and one terminal progress line.

Layout under the workdir (docs/monitoring.md has the tag list):
    DIR/tb/train/   train scalars, the config text, and the profiler trace
    DIR/tb/eval/    the eval job's scalars (tags under eval/)
    DIR/metrics.jsonl

Train and eval write to different TensorBoard run directories on purpose: TensorBoard
tails only the newest event file of a directory, so two live writers in one directory
would hide one another's updates. `tensorboard --logdir DIR` shows both runs.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from typing import Any, Mapping

import jax

from promethios_jax import flops
from promethios_jax import workdir as workdir_lib

def _to_float(value) -> float:
    # Accepts Python numbers, numpy scalars and 0-d jax arrays (already on host or not).
    return float(value)


class MetricsWriter:
    """Scalars and text to TensorBoard (tensorboardX) and, optionally, metrics.jsonl.

    Only the primary process should write: build it with
    `enabled=jax.process_index() == 0`; disabled, every method is a no-op and nothing
    is created on disk. metrics.jsonl is opened in append mode, so a resumed run goes on
    in the same file; steps repeated after a resume appear twice and the later line wins.
    The eval job passes `run="eval", jsonl_name=None`.
    """

    def __init__(self, workdir: str, enabled: bool = True, run: str = "train",
                 jsonl_name: str | None = workdir_lib.METRICS):
        self.enabled = enabled
        self.logdir = str(workdir_lib.tb_dir(workdir, run))
        self._tb = None
        self._jsonl = None
        if not enabled:
            return
        from tensorboardX import SummaryWriter  # imported here: disabled writers need none

        os.makedirs(self.logdir, exist_ok=True)
        self._tb = SummaryWriter(logdir=self.logdir, flush_secs=30)
        if jsonl_name:
            self._jsonl = open(os.path.join(workdir, jsonl_name), "a", encoding="utf-8")

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        """One TensorBoard point per tag, and one JSON line `{"step", "time", "loss"?, tags...}`.

        Flushed at once: log intervals are seconds apart, and a crash should lose nothing.
        Non-finite values are written to TensorBoard as they are and as null in JSON.
        """
        if not self.enabled:
            return
        step = int(step)
        values = {k: _to_float(v) for k, v in scalars.items()}
        for tag, value in values.items():
            self._tb.add_scalar(tag, value, step)
        self._tb.flush()
        if self._jsonl is not None:
            record = {"step": step, "time": round(time.time(), 3)}
            if "train/loss" in values:
                record["loss"] = values["train/loss"]
            record.update(values)
            record = {k: (v if not isinstance(v, float) or math.isfinite(v) else None)
                      for k, v in record.items()}
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()

    def write_text(self, tag: str, text: str, step: int = 0) -> None:
        if self.enabled:
            self._tb.add_text(tag, text, step)

    def write_config(self, config, param_count: int | None = None) -> None:
        """The resolved config (as YAML in a code block) and the parameter count, at start."""
        if not self.enabled:
            return
        body = config.to_yaml() if hasattr(config, "to_yaml") else str(config)
        # TensorBoard renders text as Markdown; indenting by 4 keeps the YAML verbatim.
        self.write_text("config", "\n".join("    " + line for line in body.splitlines()))
        if param_count is not None:
            self.write_text("params", f"{param_count:,} parameters ({param_count / 1e6:.2f} M)")
        self.flush()

    def flush(self) -> None:
        if self.enabled:
            self._tb.flush()
            if self._jsonl is not None:
                self._jsonl.flush()

    def close(self) -> None:
        if self.enabled and self._tb is not None:
            self._tb.close()
            if self._jsonl is not None:
                self._jsonl.close()
            self._tb = self._jsonl = None
            self.enabled = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def train_scalars(step_metrics: Mapping[str, Any]) -> dict[str, float]:
    """The train step's metrics under train/: `loss`, `loss_<part>` (model.heads.LOSS_PARTS),
    `learning_rate`, `grad_norm`, `param_norm` become train/loss, train/loss_lm, ..."""
    return {f"train/{k}": _to_float(v) for k, v in step_metrics.items()}


def device_memory_stats(devices=None) -> dict[str, float]:
    """memory/* scalars: the largest value over the local devices (the one that OOMs first).

    Empty where the backend keeps no statistics (CPU returns None).
    """
    if devices is None:
        devices = jax.local_devices()
    out: dict[str, float] = {}
    for device in devices:
        try:
            stats = device.memory_stats()
        except Exception:  # some backends raise instead of returning None
            stats = None
        for key in ("bytes_in_use", "peak_bytes_in_use", "bytes_limit"):
            if stats and key in stats:
                out[f"memory/{key}"] = max(out.get(f"memory/{key}", 0.0), float(stats[key]))
    return out


class ThroughputTracker:
    """perf/* and cost/* scalars over each log interval.

    Call `update(step)` at each log point, after the step's metrics are on the host (so
    the device work is really done). Wrap `next(data_iter)` in `data_wait()` and saves in
    `checkpoint()`. Step time and tokens/s leave checkpoint time out (it has its own
    tag); data wait stays in, since it is time the devices idle. The first interval
    includes compilation; call `reset(step)` after the first step to leave it out.

    Cost is this process's wall time since construction times the hourly price: a
    resumed run counts from its restart, not from step 0.
    """

    def __init__(self, tokens_per_step: int, num_devices: int, flops_per_token: float,
                 peak_tflops: float | None = None, hourly_cost_usd: float = 0.0,
                 total_steps: int = 0, start_step: int = 0, clock=time.monotonic):
        self.tokens_per_step = tokens_per_step
        self.num_devices = num_devices
        self.flops_per_token = flops_per_token
        self.peak_tflops = peak_tflops
        self.hourly_cost_usd = hourly_cost_usd
        self.total_steps = total_steps
        self._clock = clock
        self._run_start = clock()
        self.reset(start_step)

    def reset(self, step: int) -> None:
        """Start a new interval at `step` (its end time is now)."""
        self._last_step = step
        self._last_time = self._clock()
        self._data_wait = 0.0
        self._checkpoint = 0.0

    @contextlib.contextmanager
    def data_wait(self):
        t = self._clock()
        try:
            yield
        finally:
            self._data_wait += self._clock() - t

    @contextlib.contextmanager
    def checkpoint(self):
        t = self._clock()
        try:
            yield
        finally:
            self._checkpoint += self._clock() - t

    def cost_usd(self) -> float:
        return self.hourly_cost_usd * (self._clock() - self._run_start) / 3600.0

    def update(self, step: int) -> dict[str, float]:
        now = self._clock()
        steps = step - self._last_step
        wall = now - self._last_time
        out = {"perf/data_wait_s": 0.0, "perf/checkpoint_s": self._checkpoint,
               "cost/usd": self.cost_usd()}
        if steps > 0 and wall > 0:
            step_time = max(wall - self._checkpoint, 1e-9) / steps
            tps = self.tokens_per_step / step_time
            tps_dev = tps / self.num_devices
            out.update({
                "perf/step_time_s": step_time,
                "perf/tokens_per_s": tps,
                "perf/tokens_per_s_per_device": tps_dev,
                "perf/tflops_per_device": tps_dev * self.flops_per_token / 1e12,
                "perf/data_wait_s": self._data_wait / steps,
            })
            util = flops.mfu(tps_dev, self.flops_per_token, self.peak_tflops)
            if util is not None:
                out["perf/mfu"] = util
            if self.total_steps:
                out["cost/eta_s"] = max(self.total_steps - step, 0) * wall / steps
        self.reset(step)
        return out


def tracker_from_config(config, num_devices: int, device_kind: str | None = None,
                        start_step: int = 0, clock=time.monotonic) -> ThroughputTracker:
    """A tracker for the train loop: tokens per optimizer step = global batch x max_seq_len.

    `device_kind` defaults to the first device's; it picks the peak for MFU unless
    config.monitor.peak_tflops > 0.
    """
    if device_kind is None:
        device_kind = jax.devices()[0].device_kind

    seq_len = config.model.max_seq_len
    return ThroughputTracker(
        tokens_per_step=config.train.global_batch_size * seq_len,
        num_devices=num_devices,
        flops_per_token=flops.model_flops_per_token(config.model, seq_len),
        peak_tflops=flops.resolve_peak_tflops(config.monitor, device_kind),
        hourly_cost_usd=float(config.monitor.hourly_cost_usd),
        total_steps=config.train.steps,
        start_step=start_step,
        clock=clock,
    )


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def _si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.1f}"


def progress_text(step: int, total_steps: int, scalars: Mapping[str, float]) -> str:
    """`step 120/300 | loss 2.3456 | 12.3k tok/s | 45 ms/step | MFU 41.2% | $1.23 | ETA 3m12s`."""
    parts = [f"step {step}/{total_steps}" if total_steps else f"step {step}"]
    if "train/loss" in scalars:
        parts.append(f"loss {float(scalars['train/loss']):.4f}")
    if "perf/tokens_per_s" in scalars:
        parts.append(f"{_si(scalars['perf/tokens_per_s'])} tok/s")
    if "perf/step_time_s" in scalars:
        parts.append(f"{scalars['perf/step_time_s'] * 1e3:.0f} ms/step")
    if "perf/mfu" in scalars:
        parts.append(f"MFU {scalars['perf/mfu'] * 100:.1f}%")
    if scalars.get("cost/usd"):
        parts.append(f"${scalars['cost/usd']:.2f}")
    if "cost/eta_s" in scalars:
        parts.append(f"ETA {format_duration(scalars['cost/eta_s'])}")
    return " | ".join(parts)


class ProgressLine:
    """One line rewritten in place on a terminal; whole lines when output is a file or pipe.

    `print(msg)` writes a message above the progress line without garbling it.
    Disabled (non-primary processes), it prints nothing.
    """

    def __init__(self, total_steps: int = 0, stream=None, enabled: bool = True):
        self.total_steps = total_steps
        self.stream = stream if stream is not None else sys.stdout
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._shown = ""

    def update(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        self._shown = progress_text(step, self.total_steps, scalars)
        # "\r" + erase-to-end-of-line, so a shorter line leaves no tail of the old one.
        self.stream.write(("\r\x1b[K" + self._shown) if self.tty else self._shown + "\n")
        self.stream.flush()

    def print(self, message: str) -> None:
        if not self.enabled:
            return
        if self.tty and self._shown:
            self.stream.write("\r\x1b[K" + message + "\n" + self._shown)
        else:
            self.stream.write(message + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty and self._shown:
            self.stream.write("\n")
            self.stream.flush()
        self._shown = ""
