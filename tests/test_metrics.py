"""TensorBoard and jsonl output, throughput/MFU/cost arithmetic, and the profiler trace."""
import glob
import io
import json
import os

import jax
import jax.numpy as jnp
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from promethios_jax import flops, metrics
from promethios_jax.config import base_config
from promethios_jax.model.heads import LOSS_PARTS
from promethios_jax.profiling import Profiler, annotate
from promethios_jax.workdir import tb_dir

# The tags docs/monitoring.md promises for a GPU run (memory/* and perf/mfu need a
# backend with memory statistics and a known peak; the test fakes both).
TRAIN_TAGS = (
    ["train/loss"] + [f"train/loss_{p}" for p in LOSS_PARTS]
    + ["train/learning_rate", "train/grad_norm", "train/param_norm",
       "perf/tokens_per_s", "perf/tokens_per_s_per_device", "perf/step_time_s",
       "perf/tflops_per_device", "perf/mfu", "perf/data_wait_s", "perf/checkpoint_s",
       "memory/bytes_in_use", "memory/peak_bytes_in_use", "cost/usd", "cost/eta_s"])


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class FakeDevice:
    def __init__(self, stats):
        self._stats = stats

    def memory_stats(self):
        return self._stats


def _tracker(clock, **kw):
    args = dict(tokens_per_step=1000, num_devices=4, flops_per_token=1e9, peak_tflops=100.0,
                hourly_cost_usd=20.0, total_steps=100, clock=clock)
    args.update(kw)
    return metrics.ThroughputTracker(**args)


def _one_log_point():
    clock = FakeClock()
    tracker = _tracker(clock)
    clock.t = 10.0
    step_metrics = {"loss": 2.5, **{f"loss_{p}": 0.1 for p in LOSS_PARTS},
                    "learning_rate": 1e-3, "grad_norm": jnp.float32(0.7), "param_norm": 12.0}
    scalars = metrics.train_scalars(step_metrics)
    scalars.update(tracker.update(10))
    scalars.update(metrics.device_memory_stats(
        [FakeDevice({"bytes_in_use": 5, "peak_bytes_in_use": 9})]))
    return scalars


def _accumulator(logdir):
    acc = EventAccumulator(logdir, size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_tensorboard_has_every_tag_and_the_config_text(tmp_path):
    workdir = str(tmp_path)
    with metrics.MetricsWriter(workdir) as writer:
        config = base_config()
        writer.write_config(config, param_count=1_234_567)
        writer.write_scalars(10, _one_log_point())
        writer.write_scalars(20, {"train/loss": 2.0})

    acc = _accumulator(str(tb_dir(workdir, "train")))
    assert set(TRAIN_TAGS) <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("train/loss")] == [10, 20]
    assert acc.Scalars("train/loss")[1].value == pytest.approx(2.0)
    text_tags = acc.Tags()["tensors"]
    assert any(t.startswith("config") for t in text_tags)
    assert any(t.startswith("params") for t in text_tags)


def test_jsonl_lines_append_across_runs(tmp_path):
    workdir = str(tmp_path)
    with metrics.MetricsWriter(workdir) as writer:
        writer.write_scalars(10, _one_log_point())
        writer.write_scalars(20, {"train/loss": float("nan")})
    with metrics.MetricsWriter(workdir) as writer:  # a resumed run goes on in the file
        writer.write_scalars(30, {"train/loss": jnp.float32(1.5)})

    lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
    assert [l["step"] for l in lines] == [10, 20, 30]
    assert lines[0]["loss"] == 2.5 and lines[0]["train/loss_hitl"] == pytest.approx(0.1)
    assert set(TRAIN_TAGS) <= set(lines[0])
    assert lines[1]["loss"] is None  # non-finite -> null keeps the file strict JSON
    assert lines[2]["loss"] == 1.5


def test_disabled_writer_writes_nothing(tmp_path):
    writer = metrics.MetricsWriter(str(tmp_path / "run"), enabled=False)
    writer.write_config(base_config(), 10)
    writer.write_scalars(1, {"train/loss": 1.0})
    writer.close()
    assert not (tmp_path / "run").exists()


def test_eval_writer_uses_its_own_run_and_no_jsonl(tmp_path):
    workdir = str(tmp_path)
    with metrics.MetricsWriter(workdir, run="eval", jsonl_name=None) as writer:
        writer.write_scalars(100, {"eval/hitl_accuracy": 0.9})
    assert not (tmp_path / "metrics.jsonl").exists()
    acc = _accumulator(str(tb_dir(workdir, "eval")))
    assert acc.Tags()["scalars"] == ["eval/hitl_accuracy"]


def test_throughput_mfu_cost_and_eta_by_hand():
    clock = FakeClock()
    tracker = _tracker(clock)
    with tracker.data_wait():
        clock.t += 1.0
    with tracker.checkpoint():
        clock.t += 2.0
    clock.t = 10.0
    out = tracker.update(10)
    # 10 steps in 10 s, 2 s of which were a checkpoint -> 0.8 s per step.
    assert out["perf/step_time_s"] == pytest.approx(0.8)
    assert out["perf/tokens_per_s"] == pytest.approx(1000 / 0.8)
    assert out["perf/tokens_per_s_per_device"] == pytest.approx(1000 / 0.8 / 4)
    assert out["perf/tflops_per_device"] == pytest.approx(312.5 * 1e9 / 1e12)
    assert out["perf/mfu"] == pytest.approx(312.5 * 1e9 / 100e12)
    assert out["perf/data_wait_s"] == pytest.approx(0.1)
    assert out["perf/checkpoint_s"] == pytest.approx(2.0)
    assert out["cost/usd"] == pytest.approx(20 * 10 / 3600) and out["cost/usd"] > 0
    assert out["cost/eta_s"] == pytest.approx(90 * 1.0)  # 90 steps left at 1 s each, wall
    # The next interval starts fresh.
    clock.t = 15.0
    out = tracker.update(20)
    assert out["perf/step_time_s"] == pytest.approx(0.5) and out["perf/checkpoint_s"] == 0.0


def test_no_mfu_without_a_peak_and_zero_cost_without_a_price():
    clock = FakeClock()
    tracker = _tracker(clock, peak_tflops=None, hourly_cost_usd=0.0)
    clock.t = 1.0
    out = tracker.update(1)
    assert "perf/mfu" not in out and out["cost/usd"] == 0.0


def test_tracker_from_config_uses_the_monitor_keys():
    config = base_config()
    config.monitor.hourly_cost_usd = 20.0
    config.monitor.peak_tflops = 0.0
    clock = FakeClock()
    tracker = metrics.tracker_from_config(config, num_devices=8,
                                          device_kind="NVIDIA H100 80GB HBM3", clock=clock)
    assert tracker.tokens_per_step == config.train.global_batch_size * config.model.max_seq_len
    assert tracker.peak_tflops == 989.0
    clock.t = 36.0
    assert tracker.update(1)["cost/usd"] == pytest.approx(0.2)
    config.monitor.peak_tflops = 123.0  # the override wins over the table
    assert metrics.tracker_from_config(config, 8, "NVIDIA H100 80GB HBM3").peak_tflops == 123.0


def test_model_flops_per_token_by_hand():
    m = base_config().model  # d=128, 4 layers, 4 heads, 2 kv heads, d_ff=384, V=512
    d, layers, h, kv, hd, ff, v, seq = 128, 4, 4, 2, 32, 384, 512, 512
    assert (m.d_model, m.n_layers, m.n_heads, m.n_kv_heads, m.d_ff, m.vocab_size) == (
        d, layers, h, kv, ff, v)
    t = m.telemetry_dim
    telemetry = t * d + 2 * d * d  # trunk T -> 128, one 128x128 projection per anchor (2, 4)
    matmul = layers * (d * h * hd + 2 * d * kv * hd + h * hd * d + 3 * d * ff) + d * v + telemetry
    assert flops.matmul_params(m) == matmul == 884_736 + 128 * t
    causal_attn = 6 * layers * seq * h * hd
    assert flops.model_flops_per_token(m, seq) == 6 * matmul + causal_attn
    assert flops.model_flops_per_token(m, seq, causal=False) == 6 * matmul + 2 * causal_attn
    m.tie_embeddings = True  # the LM head is still a matmul
    assert flops.matmul_params(m) == matmul


def test_mfu_formula():
    # 3000 tokens/s on one device at 1e11 FLOPs/token = 300 TFLOP/s of 989.
    assert flops.mfu(3000, 1e11, 989.0) == pytest.approx(300 / 989)
    assert flops.mfu(3000, 1e11, None) is None


@pytest.mark.parametrize("kind, peak", [
    ("NVIDIA H100 80GB HBM3", 989.0),
    ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA H200", 989.0),
    ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA A100 80GB PCIe", 312.0),
    ("cpu", None),
    ("Some Future Accelerator", None),
])
def test_peak_table(kind, peak):
    assert flops.peak_tflops(kind) == peak


def test_device_memory_stats():
    devices = [FakeDevice({"bytes_in_use": 5, "peak_bytes_in_use": 9, "bytes_limit": 80}),
               FakeDevice({"bytes_in_use": 7, "peak_bytes_in_use": 8, "bytes_limit": 80}),
               FakeDevice(None)]
    assert metrics.device_memory_stats(devices) == {
        "memory/bytes_in_use": 7.0, "memory/peak_bytes_in_use": 9.0, "memory/bytes_limit": 80.0}
    assert metrics.device_memory_stats() == {}  # CPU keeps no statistics


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_line_rewrites_on_a_terminal_and_prints_lines_otherwise():
    scalars = _one_log_point()
    tty = _Tty()
    line = metrics.ProgressLine(100, stream=tty)
    line.update(10, scalars)
    line.update(20, scalars)
    line.print("checkpoint saved")
    line.close()
    out = tty.getvalue()
    assert out.count("\r") == 3 and out.count("\n") == 2
    assert "step 20/100" in out and "loss 2.5000" in out and "tok/s" in out and "ETA" in out

    pipe = io.StringIO()
    line = metrics.ProgressLine(100, stream=pipe)
    line.update(10, scalars)
    line.update(20, scalars)
    assert "\r" not in pipe.getvalue() and len(pipe.getvalue().splitlines()) == 2

    quiet = io.StringIO()
    metrics.ProgressLine(100, stream=quiet, enabled=False).update(1, scalars)
    assert quiet.getvalue() == ""


def test_profiler_leaves_an_xplane_trace(tmp_path):
    workdir = str(tmp_path)
    profiler = Profiler(workdir, start_step=2, num_steps=2)
    f = jax.jit(lambda x: jnp.tanh(x @ x))
    x = jnp.ones((32, 32))
    for step in range(6):
        profiler.step(step, wait_for=x)
        assert profiler.active == (2 <= step < 4)
        with annotate(step):
            x = f(x)
    profiler.close()
    traces = glob.glob(os.path.join(str(tb_dir(workdir, "train")), "plugins", "profile", "*", "*.xplane.pb"))
    assert len(traces) == 1 and os.path.getsize(traces[0]) > 0


def test_profiler_off_by_default(tmp_path):
    cfg = base_config().profile
    profiler = Profiler.from_config(str(tmp_path), cfg)
    for step in range(3):
        profiler.step(step)
    assert not profiler.active and not os.path.exists(tmp_path / "tb")
