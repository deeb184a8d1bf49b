"""The benchmark harness (promethios_jax.bench) and its PyTorch peer (bench/torch_peer.py) on CPU.

Both run as the user runs them, in subprocesses started together (they share 2 cores);
each must end with one JSON line carrying the figures, with MFU null on CPU.
"""
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
PEER = REPO / "bench" / "torch_peer.py"

# configs/tiny.py, smaller: the test measures the harness, not the model.
OVERRIDES = ["--config.model.d_model=32", "--config.model.n_layers=2", "--config.model.d_ff=64",
             "--config.model.max_seq_len=64", "--config.model.anchor_layers=(1,2)",
             "--config.model.uncertainty_layers=(1,2)", "--config.model.tool_layers=(2,2)",
             "--config.train.global_batch_size=8"]
TIMING = ["--steps=2", "--repeats=2", "--warmup=1"]
REQUIRED = ("tokens_per_s", "step_time_s", "device_kind", "mfu", "tflops_per_device", "peak_memory_gib",
            "global_batch_size", "seq_len", "config")


def _small_config():
    """configs/tiny.py with OVERRIDES applied, as the harnesses see it."""
    spec = importlib.util.spec_from_file_location("tiny_config", REPO / "configs" / "tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.model.update(d_model=32, n_layers=2, d_ff=64, max_seq_len=64, anchor_layers=[1, 2],
                   uncertainty_layers=[1, 2], tool_layers=[2, 2])
    c.train.global_batch_size = 8
    return c


def _last_json(proc_out: str) -> dict:
    lines = [line for line in proc_out.strip().splitlines() if line.strip()]
    assert lines, "no output"
    return json.loads(lines[-1])


@pytest.fixture(scope="module")
def runs():
    """Starts both harnesses at once; returns {name: (returncode, stdout, stderr)}."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    # cuDNN attention on a CPU: the bench falls back to XLA attention and says so.
    cmds = {"jax": [sys.executable, "-m", "promethios_jax.bench", "--config=configs/tiny.py", *OVERRIDES, *TIMING,
                    "--config.model.attention_impl=cudnn"]}
    if importlib.util.find_spec("torch") and importlib.util.find_spec("transformers"):
        cmds["torch"] = [sys.executable, str(PEER), "--config=configs/tiny.py", "--nocompile", *OVERRIDES, *TIMING]
    procs = {k: subprocess.Popen(c, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k, c in cmds.items()}
    out = {}
    for k, p in procs.items():
        stdout, stderr = p.communicate(timeout=300)
        out[k] = (p.returncode, stdout, stderr)
    return out


def _check_report(report: dict):
    for key in REQUIRED:
        assert key in report, key
    assert report["tokens_per_s"] > 0 and math.isfinite(report["tokens_per_s"])
    assert report["step_time_s"] > 0
    assert report["device_kind"] == "cpu"
    assert report["mfu"] is None  # no bf16 peak is known for a CPU
    assert report["peak_memory_gib"] is None
    assert report["global_batch_size"] == 8 and report["seq_len"] == 64
    assert report["tokens_per_step"] == 8 * 64
    assert len(report["step_times_s"]) == 2
    assert report["step_time_s"] == pytest.approx(float(np.median(report["step_times_s"])))
    assert report["tokens_per_s"] == pytest.approx(report["tokens_per_step"] / report["step_time_s"])
    assert math.isfinite(report["final_loss"])


def test_jax_bench_cli(runs):
    rc, stdout, stderr = runs["jax"]
    assert rc == 0, stderr[-3000:]
    report = _last_json(stdout)
    _check_report(report)
    assert any(line.startswith("step_time_s") for line in stdout.splitlines()[:-1])  # the table first
    assert report["num_devices"] >= 1 and report["attention_impl"] == "xla"
    assert report["notes"] and "cudnn" in report["notes"][0]
    assert report["xla_memory_gib"] > 0
    assert report["overrides"]["model.d_model"] == 32
    from promethios_jax import flops

    assert report["flops_per_token"] == flops.model_flops_per_token(_small_config().model, 64)


def test_torch_peer_cli(runs):
    if "torch" not in runs:
        pytest.skip("torch and transformers are not installed")
    rc, stdout, stderr = runs["torch"]
    assert rc == 0, stderr[-3000:]
    report = _last_json(stdout)
    _check_report(report)
    assert any(line.startswith("step_time_s") for line in stdout.splitlines()[:-1])
    assert report["precision"] == "fp32" and report["compile"] is False and report["fused_adamw"] is False
    # LlamaForCausalLM's parameter count is our backbone's: the matmul weights plus the
    # embedding table (untied) and the RMSNorm gains.
    m = _small_config().model
    norms = (2 * m.n_layers + 1) * m.d_model
    peer = _load_peer()
    assert report["params"] == peer.backbone_matmul_params(m) + m.vocab_size * m.d_model + norms


def _load_peer():
    spec = importlib.util.spec_from_file_location("torch_peer", PEER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_peer_flops_and_peaks_match_the_jax_side():
    from promethios_jax import flops

    peer = _load_peer()
    assert peer.flops is flops  # one peak table for both harnesses
    import configs

    for name in ("1_3b", "8b"):
        cfg = importlib.import_module(f"configs.{name}").get_config()
        backbone = cfg.model.copy_and_resolve_references()
        backbone.anchor_layers = []  # no telemetry encoder: the peer's model has none
        assert peer.backbone_flops_per_token(cfg.model, 2048) == flops.model_flops_per_token(backbone, 2048)
        # The telemetry encoder, which only the JAX model has, is a small share of its FLOPs.
        assert flops.model_flops_per_token(cfg.model, 2048) / peer.backbone_flops_per_token(cfg.model, 2048) < 1.02
    del configs


def test_synthetic_batch_matches_the_step_and_the_label_spaces():
    import jax

    from promethios_jax import bench, sharding
    from promethios_jax.data import batch as batch_lib
    from promethios_jax.data import schema, synthetic

    c = _small_config()
    mesh = sharding.make_mesh(c)
    batch_abs = batch_lib.abstract_batch(c, mesh)
    batch = synthetic.batch(c, seed=3)
    assert set(batch) == set(batch_abs)
    for k, a in batch_abs.items():
        assert batch[k].shape == a.shape and batch[k].dtype == a.dtype, k
    m = c.model
    assert batch["tokens"].min() >= 0 and batch["tokens"].max() < m.vocab_size
    for key, n in (("hitl", 2), ("decision", m.n_decisions), ("confidence", m.n_confidence),
                   ("tool", m.n_tools), ("conflict", len(schema.CONFLICTS))):
        assert batch[key].min() >= 0 and batch[key].max() < n, key
    for key in ("uncertainty", "bias"):
        assert 0 <= batch[key].min() and batch[key].max() <= 1
    seg = batch["segment_ids"]
    assert (seg > 0).all()  # no padding: every slot belongs to a document
    docs = seg.max(axis=1)
    assert set(docs.tolist()) == {1, 2}
    for row in range(seg.shape[0]):
        n_docs = int(docs[row])
        assert batch["head_mask"][row].sum() == n_docs
        for slot in range(n_docs):
            pos = batch["head_positions"][row, slot]
            assert seg[row, pos] == slot + 1
            idx = np.nonzero(seg[row] == slot + 1)[0]
            np.testing.assert_array_equal(batch["positions"][row, idx], np.arange(len(idx)))
            # LM targets are the next token of the same document; the last one is unmasked.
            np.testing.assert_array_equal(batch["targets"][row, idx[:-1]], batch["tokens"][row, idx[1:]])
            assert batch["loss_mask"][row, idx[-1]] == 0 and batch["loss_mask"][row, pos] == 1
    placed = bench.place_batch(batch, batch_abs)
    np.testing.assert_array_equal(np.asarray(jax.device_get(placed["tokens"])), batch["tokens"])
    assert placed["tokens"].sharding == batch_abs["tokens"].sharding
