"""The launch recipes parse, their XLA flags exist, and the local launcher works."""
import glob
import os
import re
import subprocess
import sys
import time

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch")
SHELL_SCRIPTS = sorted(glob.glob(os.path.join(LAUNCH, "*.sh")) + glob.glob(os.path.join(LAUNCH, "*.sbatch")))


def test_there_are_recipes():
    names = {os.path.basename(p) for p in SHELL_SCRIPTS}
    assert {"local_multiprocess.sh", "gpu_8x_h100.sh", "slurm.sbatch", "xla_gpu_flags.sh"} <= names


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=os.path.basename)
def test_shell_scripts_parse(script):
    subprocess.run(["bash", "-n", script], check=True)


def test_jobset_yaml_loads_and_sets_the_distributed_env():
    with open(os.path.join(LAUNCH, "k8s_jobset.yaml")) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    [jobset] = docs
    assert jobset["kind"] == "JobSet"
    [workers] = jobset["spec"]["replicatedJobs"]
    job = workers["template"]["spec"]
    assert job["completionMode"] == "Indexed" and job["parallelism"] == job["completions"]
    [container] = job["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert int(env["PROMETHIOS_NUM_PROCESSES"]["value"]) == job["parallelism"]
    assert "job-completion-index" in env["PROMETHIOS_PROCESS_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
    # Pod 0's JobSet hostname: <jobset>-<replicatedJob>-0-0.<jobset>.
    name = jobset["metadata"]["name"]
    assert env["PROMETHIOS_COORDINATOR"]["value"].startswith(f"{name}-{workers['name']}-0-0.{name}:")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8


def test_gpu_xla_flags_exist_in_this_jaxlib():
    flags = subprocess.run(
        ["bash", "-c", "source launch/xla_gpu_flags.sh && h100_xla_flags 2 8"],
        cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" in flags
    assert "--xla_gpu_all_gather_combine_threshold_bytes=67108864" in flags  # 1 GiB / 16
    # The CPU jaxlib parses every XLA flag (GPU ones included) and aborts on unknown ones.
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", "import jax; jax.numpy.ones(1).block_until_ready()"],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_slurm_keeps_all_gpus_in_one_process_per_node():
    text = open(os.path.join(LAUNCH, "slurm.sbatch")).read()
    assert "--ntasks-per-node=1" in text and "--distributed" in text
    # JAX's SLURM detection would otherwise pin each process to GPU SLURM_LOCALID.
    assert "JAX_LOCAL_DEVICE_IDS" in text


FAKE_TRAIN = '''
import os, sys, time
if os.environ.get("FAKE_FAIL"):
    if os.environ["PROMETHIOS_PROCESS_ID"] == "1":
        sys.exit(3)
    time.sleep(120)
import jax
jax.distributed.initialize(os.environ["PROMETHIOS_COORDINATOR"],
                           int(os.environ["PROMETHIOS_NUM_PROCESSES"]),
                           int(os.environ["PROMETHIOS_PROCESS_ID"]))
from jax.experimental import multihost_utils
ids = multihost_utils.process_allgather(jax.numpy.array([jax.process_index()]))
print("RESULT", sys.argv[1:], jax.device_count(), jax.local_device_count(), ids.ravel().tolist())
'''


def _launch(tmp_path, n, *args, **env):
    (tmp_path / "fake_train.py").write_text(FAKE_TRAIN)
    full_env = dict(os.environ, PYTHONPATH=str(tmp_path), PYTHON=sys.executable,
                    PROMETHIOS_MODULE="fake_train", **env)
    return subprocess.run(["bash", os.path.join(LAUNCH, "local_multiprocess.sh"), str(n), *args],
                          env=full_env, capture_output=True, text=True, timeout=120)


def test_local_launcher_joins_processes(tmp_path):
    workdir = tmp_path / "run"
    proc = _launch(tmp_path, 2, f"--workdir={workdir}", "--config.train.steps=3")
    assert proc.returncode == 0, proc.stderr
    for i in range(2):
        # Gloo's C++ status lines share the log unbuffered and can land inside our line.
        log = re.sub(r"\[Gloo\][^\n]*?peer ranks is : \d+\n", "",
                     (workdir / "launch_logs" / f"process_{i}.log").read_text())
        # 2 processes x 4 simulated devices = 8, and a cross-process gather works.
        assert f"RESULT ['--workdir={workdir}', '--config.train.steps=3'] 8 4 [0, 1]" in log
    assert "RESULT" in proc.stdout  # process 0 is shown on the console too


def test_local_launcher_stops_all_when_one_fails(tmp_path):
    start = time.monotonic()
    proc = _launch(tmp_path, 2, "--workdir", str(tmp_path / "run"), FAKE_FAIL="1")
    assert proc.returncode == 3
    assert "process 1 exited with status 3" in proc.stderr
    assert time.monotonic() - start < 60  # process 0 (sleeping 120 s) was stopped


def test_local_launcher_refuses_a_bad_process_count(tmp_path):
    assert _launch(tmp_path, 3).returncode == 2
