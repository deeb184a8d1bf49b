"""Two processes on localhost (4 simulated devices each) train exactly like one process with 8,
and write one metrics.jsonl and one set of checkpoints."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

ARGS = [
    "--config=configs/tiny.py", "--config.model.d_model=64", "--config.model.n_layers=2",
    "--config.model.d_ff=128", "--config.model.max_seq_len=256", "--config.model.anchor_layers=(1,2)",
    "--config.model.uncertainty_layers=(1,2)", "--config.model.tool_layers=(2,2)",
    "--config.train.steps=4", "--config.train.global_batch_size=8", "--config.train.log_every=1",
    "--config.checkpoint.every_steps=2", "--config.mesh.data=2", "--config.mesh.fsdp=4",
]


def losses(workdir):
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert len({r["step"] for r in rows}) == len(rows), "one process writes metrics"
    return {r["step"]: r["loss"] for r in rows}


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    from promethios_jax.data import generate

    data = tmp_path / "data"
    generate.generate_dataset(str(data), 300, 0, 0.05)
    args = ARGS + [f"--config.data.path={data}"]
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("XLA_FLAGS", None)
    two = tmp_path / "two"
    r = subprocess.run(["bash", "launch/local_multiprocess.sh", "2", f"--workdir={two}", *args], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    one = tmp_path / "one"
    env1 = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    r = subprocess.run([sys.executable, "-m", "promethios_jax.train", f"--workdir={one}", *args], cwd=REPO,
                       env=env1, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = losses(one), losses(two)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for s in a:
        assert abs(a[s] - b[s]) <= 1e-4 * abs(a[s]), (s, a[s], b[s])
    assert sorted(p.name for p in (two / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "4"]
    assert len(list((two / "tb" / "train").glob("events.out.tfevents*"))) == 1
