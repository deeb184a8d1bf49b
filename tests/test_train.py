"""The train path end to end on the simulated 8-device mesh: steps, checkpoints, resume,
metrics, and the bad inputs that must be refused before any compile."""
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from promethios_jax import config as config_lib
from promethios_jax.config import ConfigError
from promethios_jax.model import GovernanceTransformer
from tests.util import small_config

REPO = Path(__file__).resolve().parent.parent


def read_losses(workdir):
    rows = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from promethios_jax.data import generate

    d = tmp_path_factory.mktemp("data")
    generate.generate_dataset(str(d), 300, 0, 0.05)
    return str(d)


def test_train_checkpoints_metrics_and_resume(tmp_path, data_dir):
    from promethios_jax import train

    cfg = small_config()
    cfg.data.path = data_dir
    wd = tmp_path / "run"
    train.train(cfg, str(wd), stop_after=3)
    assert (wd / "checkpoints" / "3").is_dir()
    assert not (wd / "TRAINING_DONE").exists()
    first = read_losses(wd)
    assert sorted(first) == [1, 2, 3]
    assert any(p.name.startswith("events.out.tfevents") for p in wd.rglob("*"))

    train.train(cfg, str(wd))  # resumes at 3, runs to 6
    assert (wd / "checkpoints" / "6").is_dir()
    assert json.loads((wd / "TRAINING_DONE").read_text())["step"] == 6
    resumed = read_losses(wd)

    ref = tmp_path / "ref"
    train.train(cfg, str(ref))
    uninterrupted = read_losses(ref)
    assert sorted(uninterrupted) == list(range(1, 7))
    # Same mesh: the continuation is bit-exact, data order included.
    for s in range(1, 7):
        assert resumed[s] == uninterrupted[s], (s, resumed[s], uninterrupted[s])
    assert all(np.isfinite(v) for v in uninterrupted.values())


def test_loss_falls_and_the_run_is_monitored(tmp_path, data_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from promethios_jax import train

    cfg = small_config()
    cfg.data.path = data_dir
    cfg.train.steps = 30
    cfg.train.learning_rate = 3e-3
    cfg.train.log_every = 5
    cfg.checkpoint.every_steps = 30
    cfg.monitor.hourly_cost_usd = 20.0
    cfg.monitor.peak_tflops = 1.0  # the CPU has no peak in the table; MFU needs one
    cfg.profile.start_step = 6
    cfg.profile.num_steps = 2
    wd = tmp_path / "run"
    train.train(cfg, str(wd))
    losses = read_losses(wd)
    assert losses[30] < 0.8 * losses[5], losses

    acc = EventAccumulator(str(wd / "tb" / "train"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    want = {"train/loss", "train/learning_rate", "train/grad_norm", "train/param_norm",
            "perf/tokens_per_s", "perf/tokens_per_s_per_device", "perf/step_time_s", "perf/tflops_per_device",
            "perf/mfu", "perf/data_wait_s", "perf/checkpoint_s", "cost/usd", "cost/eta_s"}
    want |= {f"train/loss_{p}" for p in ("lm", "hitl", "decision", "confidence", "uncertainty", "bias", "tool")}
    assert want <= tags, want - tags
    assert acc.Scalars("cost/usd")[-1].value > 0
    assert {"config/text_summary", "params/text_summary"} <= set(acc.Tags()["tensors"])
    assert list(wd.rglob("*.xplane.pb")), "profile keys leave a trace"


@pytest.mark.parametrize("mesh", [{"data": 2, "fsdp": 2, "tensor": 2}, {"data": 1, "fsdp": 4, "tensor": 2}])
def test_same_losses_on_every_mesh(tmp_path, data_dir, mesh):
    from promethios_jax import train

    base = small_config(data=8, fsdp=1, tensor=1)
    base.data.path = data_dir
    base.train.steps = 3
    train.train(base, str(tmp_path / "base"))
    other = small_config(**mesh)
    other.data.path = data_dir
    other.train.steps = 3
    train.train(other, str(tmp_path / "other"))
    a, b = read_losses(tmp_path / "base"), read_losses(tmp_path / "other")
    for s in a:
        assert abs(a[s] - b[s]) <= 1e-4 * abs(a[s]), (s, a[s], b[s])


def test_grad_accumulation_matches_one_large_batch(tmp_path, data_dir):
    from promethios_jax import train

    one = small_config()
    one.data.path = data_dir
    one.train.steps = 3
    train.train(one, str(tmp_path / "one"))
    acc = small_config(data=4, fsdp=1, tensor=2)
    acc.data.path = data_dir
    acc.train.steps = 3
    acc.train.grad_accum_steps = 2
    train.train(acc, str(tmp_path / "acc"))
    a, b = read_losses(tmp_path / "one"), read_losses(tmp_path / "acc")
    for s in a:
        assert abs(a[s] - b[s]) <= 1e-4 * abs(a[s]), (s, a[s], b[s])


def test_validation_refuses_bad_meshes_and_batches():
    from promethios_jax.config import validate

    c = small_config(data=3, fsdp=1, tensor=1)
    with pytest.raises(ConfigError, match="needs 3 devices, but 8"):
        validate(c, 8)
    c = small_config(data=2, fsdp=1, tensor=4)
    c.model.n_kv_heads = 2
    with pytest.raises(ConfigError, match="divisible by config.mesh.tensor=4"):
        validate(c, 8)
    c = small_config(data=8, fsdp=1, tensor=1)
    c.train.global_batch_size = 12
    with pytest.raises(ConfigError, match="global_batch_size=12"):
        validate(c, 8)


def test_data_in_another_prompt_layout_is_refused(tmp_path):
    from promethios_jax import train
    from promethios_jax.data import generate
    from promethios_jax.data.records import DataError

    d = tmp_path / "old"
    generate.generate_dataset(str(d), 40, 0, 0.1, prompt_layout="tags_request")
    c = small_config()
    c.data.path = str(d)
    with pytest.raises(DataError, match="lays prompts out as 'tags_request' but config.data.prompt_layout="
                                               "'request_tags'"):
        train.prepare_data(c, tmp_path / "run")
    c.data.prompt_layout = "tags_request"
    assert train.prepare_data(c, tmp_path / "run") == d
    c.data.prompt_layout = "tags_last"
    with pytest.raises(ConfigError, match="prompt_layout='tags_last'"):
        config_lib.validate(c, 8)


def test_checkpoints_saved_before_the_layout_key_keep_their_layout():
    from promethios_jax.workdir import merge_config

    assert merge_config({"data": {"tokenizer": "byte"}}).data.prompt_layout == "tags_request"
    assert merge_config({"data": {"prompt_layout": "request_tags"}}).data.prompt_layout == "request_tags"
    assert config_lib.base_config().data.prompt_layout == "request_tags"


def _cli(*args, env=None, timeout=120):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "promethios_jax.train", *args], cwd=REPO, env=e,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_unknown_key_is_named(tmp_path):
    r = _cli(f"--workdir={tmp_path}", "--config.train.stepz=3")
    assert r.returncode != 0
    assert "stepz" in r.stderr


def test_cli_mesh_mismatch_is_named_before_compile(tmp_path):
    r = _cli(f"--workdir={tmp_path}", "--config.mesh.data=3")
    assert r.returncode == 2, r.stderr
    assert "needs 3 devices, but 8 are available" in r.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_cli_unwritable_workdir_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = _cli(f"--workdir={blocker}/run")
    assert r.returncode == 2, r.stderr
    assert "cannot be written" in r.stderr and str(blocker) in r.stderr


def test_first_step_runs_the_ahead_of_time_compiled_step(tmp_path, data_dir, caplog):
    """The loop compiles the step once (aot.compile_step) and runs that executable: with
    jax_log_compiles on, `train_step` is compiled exactly once over a 3-step run."""
    import logging

    import jax

    from promethios_jax import train

    cfg = small_config()
    cfg.data.path = data_dir
    cfg.train.steps = 3
    jax.config.update("jax_log_compiles", True)
    try:
        with caplog.at_level(logging.WARNING):
            train.train(cfg, str(tmp_path / "run"))
    finally:
        jax.config.update("jax_log_compiles", False)
    compiles = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Compiling jit(train_step)")]
    assert len(compiles) == 1, compiles
    assert sorted(read_losses(tmp_path / "run")) == [1, 2, 3]


def test_cli_cudnn_on_cpu_is_refused_before_data_and_compile(tmp_path):
    r = _cli(f"--workdir={tmp_path}", "--config.model.attention_impl=cudnn")
    assert r.returncode == 2, r.stderr
    assert "config.model.attention_impl='cudnn'" in r.stderr and "attention_impl='xla'" in r.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_cli_an_8b_step_on_one_cpu_device_is_refused_before_any_parameter(tmp_path):
    """configs/8b.py on one CPU device (XLA attention: cuDNN is refused first) needs far
    more than the host holds: one message with the need, the limit and the levers, exit 2,
    and neither data nor a parameter nor a checkpoint was made."""
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
    r = _cli(f"--workdir={tmp_path}", "--config=configs/8b.py", "--config.model.attention_impl=xla", env=env,
             timeout=900)
    assert r.returncode == 2, r.stderr[-3000:]
    err = r.stderr
    assert "error: --config=configs/8b.py: the train step does not fit" in err
    assert re.search(r"needs [\d.]+ GiB per device .* a device holds [\d.]+ GiB \(available host memory", err)
    for lever in ("config.mesh.fsdp", "config.train.global_batch_size", "config.train.grad_accum_steps",
                  "config.model.remat_policy", "--allow_oversubscribe"):
        assert lever in err, lever
    # The count is the model's own (it moved when the telemetry width did); nothing allocated here.
    spec_config = config_lib.load_config_file(str(REPO / "configs" / "8b.py"))
    abstract = nnx.eval_shape(lambda: GovernanceTransformer(spec_config.model, rngs=nnx.Rngs(0)))
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    assert f"{n_params:,} parameters" in err
    assert "initialised" not in r.stdout and "generated" not in r.stdout
    assert not (tmp_path / "data").exists() and not (tmp_path / "checkpoints").exists()
