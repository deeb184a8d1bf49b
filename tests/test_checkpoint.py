"""Checkpoints that lose nothing (issue 6), on the simulated 8-device CPU host.

The end-to-end tests drive the real CLI, as a user would:

    python -m promethios_jax.train --config=configs/tiny.py --workdir=DIR \\
        --config.checkpoint.every_steps=4 --config.mesh.data=8 ...   # then kill -9 / SIGTERM / restart

and compare every step's loss in metrics.jsonl (the last line per step wins, as after a
restart the steps since the last checkpoint are logged twice) with one uninterrupted
run. The unit tests use a toy state and Orbax directly.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
STEPS, EVERY = 24, 4
MESH_811 = {"data": 8, "fsdp": 1, "tensor": 1}
MESH_222 = {"data": 2, "fsdp": 2, "tensor": 2}
TINY = [  # the small_config() of tests/test_train.py, as CLI overrides
    "--config.model.d_model=64", "--config.model.n_layers=2", "--config.model.n_heads=4",
    "--config.model.n_kv_heads=2", "--config.model.d_ff=128", "--config.model.max_seq_len=256",
    "--config.model.anchor_layers=1,2", "--config.model.uncertainty_layers=1,2", "--config.model.tool_layers=2,2",
    "--config.model.compute_dtype=float32", "--config.train.global_batch_size=8", "--config.train.warmup_steps=2",
    "--config.train.log_every=1",
]


# ---------------------------------------------------------------------------------------
# Helpers


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from promethios_jax.data import generate

    d = tmp_path_factory.mktemp("data")
    generate.generate_dataset(str(d), 300, 0, 0.05)
    return str(d)


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    # A persistent compilation cache shared by this module's runs: the restarts then load
    # the train step instead of compiling it again (the same executable either way).
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")))
    env.pop("PYTHONPATH", None)
    return env


def cli_args(workdir, data_dir, steps=STEPS, every=EVERY, mesh=MESH_811, extra=()):
    return [sys.executable, "-m", "promethios_jax.train", "--config=configs/tiny.py", f"--workdir={workdir}",
            f"--config.data.path={data_dir}", *TINY, f"--config.train.steps={steps}",
            f"--config.checkpoint.every_steps={every}", "--config.checkpoint.max_to_keep=3",
            "--config.checkpoint.keep_period=8",
            *(f"--config.mesh.{k}={v}" for k, v in mesh.items()), *extra]


def run_cli(args, env, timeout=420):
    r = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    return r


def start_cli(args, env, log_dir: Path):
    log_dir.mkdir(parents=True, exist_ok=True)
    out, err = open(log_dir / "stdout.txt", "w"), open(log_dir / "stderr.txt", "w")
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=err, text=True)


def read_losses(workdir) -> dict:
    """Step -> loss; after a restart the last line of a step wins."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["step"]: r.get("loss") for r in rows}


def committed_steps(workdir) -> list[int]:
    d = Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def wait_for(cond, proc, timeout=300.0, what="condition"):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = cond()
        if v:
            return v
        if proc.poll() is not None:
            raise AssertionError(f"the run exited (rc={proc.returncode}) before {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def assert_bit_exact(got: dict, want: dict, steps):
    for s in steps:
        assert got.get(s) == want[s], (s, got.get(s), want[s])


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir, cli_env):
    """One uninterrupted CLI run on the (8,1,1) mesh: its workdir and its losses."""
    wd = tmp_path_factory.mktemp("reference") / "run"
    r = run_cli(cli_args(wd, data_dir), cli_env)
    assert r.returncode == 0, r.stderr[-3000:]
    losses = read_losses(wd)
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert all(v is not None and np.isfinite(v) for v in losses.values())
    return wd, losses


def copy_run(src_wd, dst_wd, steps):
    """A workdir holding only `steps` of another run's checkpoints (no logs)."""
    (dst_wd / "checkpoints").mkdir(parents=True)
    for s in steps:
        shutil.copytree(src_wd / "checkpoints" / str(s), dst_wd / "checkpoints" / str(s))


def biggest_file(d: Path) -> Path:
    return max((p for p in d.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


# ---------------------------------------------------------------------------------------
# End to end through the CLI


@pytest.mark.slow
def test_cli_saves_every_steps_with_max_to_keep_and_keep_period(reference):
    wd, _ = reference
    # every_steps=4 saved 4, 8, ..., 24; max_to_keep=3 keeps the newest three (16, 20, 24)
    # and keep_period=8 the milestones 8, 16, 24 as well.
    assert committed_steps(wd) == [8, 16, 20, 24]
    step_dir = wd / "checkpoints" / "24"
    assert {p.name for p in step_dir.iterdir()} >= {"state", "data_iter", "config", "integrity"}
    it = json.loads((step_dir / "data_iter" / "metadata").read_text())
    assert it["batches_consumed"] == 24 and it["global_batch_size"] == 8 and it["rows_consumed"] == 192
    assert it["iterator"] == {"batches_consumed": 24}
    assert json.loads((wd / "TRAINING_DONE").read_text())["step"] == STEPS
    assert not list((wd / "checkpoints").glob("*tmp*"))


@pytest.mark.slow
def test_kill9_then_restart_is_bit_exact(tmp_path, data_dir, cli_env, reference):
    _, want = reference
    wd = tmp_path / "run"
    proc = start_cli(cli_args(wd, data_dir), cli_env, tmp_path / "first")
    try:
        wait_for(lambda: committed_steps(wd), proc, what="a first checkpoint")
        assert proc.poll() is None, "the run finished before the kill; make it longer"
    finally:
        proc.kill()  # SIGKILL: no handler, no final save, maybe a save half written
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_after = max(read_losses(wd), default=0)
    assert killed_after < STEPS and not (wd / "TRAINING_DONE").exists()
    resume_from = max(committed_steps(wd))

    r = run_cli(cli_args(wd, data_dir), cli_env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed from step {resume_from} (data position: batch {resume_from})" in r.stdout
    got = read_losses(wd)
    assert sorted(got) == list(range(1, STEPS + 1))
    assert_bit_exact(got, want, range(1, STEPS + 1))  # data order included


@pytest.mark.slow
def test_sigterm_finishes_the_step_saves_and_exits_0(tmp_path, data_dir, cli_env, reference):
    _, want = reference
    wd = tmp_path / "run"
    proc = start_cli(cli_args(wd, data_dir), cli_env, tmp_path / "first")
    try:
        wait_for(lambda: read_losses(wd), proc, what="the first logged step")
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = (tmp_path / "first" / "stdout.txt").read_text()
    assert rc == 0, (tmp_path / "first" / "stderr.txt").read_text()[-3000:]
    stopped = int(re.search(r"stopped by SIGTERM at step (\d+)", out).group(1))
    assert stopped < STEPS, "the run finished before the signal; make it longer"
    assert stopped in committed_steps(wd)
    assert (wd / "checkpoints" / str(stopped) / "commit_success.txt").exists()
    assert max(read_losses(wd)) == stopped  # it stopped right after the step it was in

    r = run_cli(cli_args(wd, data_dir), cli_env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed from step {stopped} " in r.stdout
    assert_bit_exact(read_losses(wd), want, range(1, STEPS + 1))


@pytest.mark.slow
def test_resume_from_811_mesh_onto_222_mesh(tmp_path, data_dir, cli_env, reference):
    ref_wd, want = reference
    wd = tmp_path / "run"
    copy_run(ref_wd, wd, [8])  # saved on the (8,1,1) mesh
    r = run_cli(cli_args(wd, data_dir, mesh=MESH_222), cli_env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from step 8 (data position: batch 8) on mesh {'data': 2, 'fsdp': 2, 'tensor': 2}" in r.stdout
    got = read_losses(wd)
    assert sorted(got) == list(range(9, STEPS + 1))
    for s in got:
        assert abs(got[s] - want[s]) <= 1e-4 * abs(want[s]), (s, got[s], want[s])


@pytest.mark.slow
def test_garbled_newest_checkpoint_falls_back_and_is_kept(tmp_path, data_dir, cli_env, reference, capsys):
    import promethios_jax

    ref_wd, want = reference
    wd = tmp_path / "run"
    copy_run(ref_wd, wd, [8, 16, 20, 24])
    # Garble the middle of every data file of step 24's state (sizes unchanged). Many
    # chunks still decode without an error, into other numbers: the fingerprints catch them.
    for victim in (wd / "checkpoints" / "24" / "state").rglob("d/*"):
        n = victim.stat().st_size
        with open(victim, "r+b") as f:
            f.seek(n // 10)
            f.write(bytes(range(256)) * ((n * 8 // 10) // 256))
    # The reader eval uses skips it too, and moves nothing.
    capsys.readouterr()
    promethios_jax.load(wd)
    err = capsys.readouterr().err
    assert "checkpoint at step 24 is corrupt or partial" in err and "loading the one before" in err
    assert (wd / "checkpoints" / "24").is_dir()

    r = run_cli(cli_args(wd, data_dir), cli_env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "checkpoint at step 24 is corrupt or partial" in r.stderr
    assert "resumed from step 20 " in r.stdout
    corrupt = list((wd / "checkpoints").glob("corrupt-24-*"))
    assert len(corrupt) == 1 and (corrupt[0] / "state").is_dir(), "the corrupt step must be kept"
    assert str(corrupt[0]) in r.stderr
    # Saving step 24 again neither collided with the corrupt one nor let it push the
    # good ones out.
    assert committed_steps(wd) == [8, 16, 20, 24]
    assert_bit_exact(read_losses(wd), want, range(21, STEPS + 1))


@pytest.mark.slow
def test_plain_orbax_reads_state_without_this_project(tmp_path, cli_env, reference):
    ref_wd, _ = reference
    path = ref_wd / "checkpoints" / "24" / "state"
    # One CPU device (not the 8 that saved it), no promethios_jax import.
    snippet = f"""
import jax, numpy as np, orbax.checkpoint as ocp
ckptr = ocp.StandardCheckpointer()
meta = ckptr.metadata({str(path)!r}).item_metadata.tree
device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta)
state = ckptr.restore({str(path)!r}, target)
print(sorted(state), int(state["step"]), len(jax.tree.leaves(state["params"])), len(jax.tree.leaves(state["opt_state"])),
      np.asarray(state["params"]["embed_tokens"]["embedding"]).shape)
"""
    env = {k: v for k, v in cli_env.items() if k != "XLA_FLAGS"}
    r = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    line = r.stdout.strip().splitlines()[-1]
    assert line.startswith("['first_nonfinite_step', 'nonfinite_count', 'opt_state', 'params', 'step'] 24 "), line
    assert line.endswith(", 64)"), line  # (vocab, d_model)


@pytest.mark.slow
def test_nan_skip_skips_on_device_and_counts(tmp_path, data_dir, cli_env):
    import jax
    from orbax.checkpoint import StandardCheckpointer

    wd = tmp_path / "run"
    # lr 1e30: step 1 runs at lr 0 (warm-up), step 2 blows the parameters up to ~1e29,
    # and from step 3 on every loss overflows.
    r = run_cli(cli_args(wd, data_dir, steps=6, every=2,
                         extra=["--config.train.learning_rate=1e30", "--config.train.nan_policy=skip"]), cli_env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "non-finite loss or gradient at step 3: update skipped" in r.stderr
    rows = {json.loads(x)["step"]: json.loads(x) for x in (wd / "metrics.jsonl").read_text().splitlines()}
    bad = [s for s, row in rows.items() if row["loss"] is None]
    assert bad == [3, 4, 5, 6]
    assert [rows[s]["train/nonfinite_skipped"] for s in range(1, 7)] == [0, 0, 1, 2, 3, 4]
    # The skipped updates never touched the parameters or the optimizer state.
    ckptr = StandardCheckpointer()
    s2, s6 = (ckptr.restore(wd / "checkpoints" / str(s) / "state") for s in (2, 6))
    assert int(s6["step"]) == 6 and int(s6["nonfinite_count"]) == 4 and int(s6["first_nonfinite_step"]) == 3
    for k in ("params", "opt_state"):
        for a, b in zip(jax.tree.leaves(s2[k]), jax.tree.leaves(s6[k])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_nan_stop_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path, data_dir, cli_env):
    wd = tmp_path / "run"
    r = run_cli(cli_args(wd, data_dir, steps=6, every=1,
                         extra=["--config.train.learning_rate=1e30", "--config.train.nan_policy=stop"]), cli_env)
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert "non-finite loss or gradient at step 3; stopping" in r.stderr
    assert "the last good checkpoint, step 2, is kept" in r.stderr
    assert committed_steps(wd) == [1, 2]
    assert not (wd / "TRAINING_DONE").exists()


# ---------------------------------------------------------------------------------------
# Unit tests on a toy state


def auto_mesh(shape, names):
    import jax
    from jax.sharding import AxisType

    return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(shape))  # as sharding.make_mesh


def toy_state(step: int, n: int = 200_000, mesh=None):
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P

    mesh = mesh or auto_mesh((8,), ("d",))
    rep, shard = NamedSharding(mesh, P()), NamedSharding(mesh, P("d"))
    return {"step": jax.device_put(jnp.asarray(step, jnp.int32), rep),
            "params": {"w": jax.device_put(jnp.arange(n, dtype=jnp.float32) * step, shard),
                       "b": jax.device_put(jnp.full((3, 5), float(step)), rep)}}


def abstract_of(tree):
    import jax

    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), tree)


def toy_manager(wd, max_to_keep=3, keep_period=0, async_save=False):
    from promethios_jax import checkpoint as ckpt
    from promethios_jax.config import base_config

    cfg = base_config()
    cfg.checkpoint.update(max_to_keep=max_to_keep, keep_period=keep_period, async_save=async_save)
    return ckpt.make_manager(wd, cfg.checkpoint), cfg


def toy_save(manager, cfg, step, **kw):
    from promethios_jax import checkpoint as ckpt

    ckpt.save(manager, step, toy_state(step, **kw), {"batches_consumed": step, "global_batch_size": 8}, cfg,
              force=True)


def test_old_checkpoint_is_deleted_only_after_the_newer_one_commits(tmp_path):
    manager, cfg = toy_manager(tmp_path, max_to_keep=1, async_save=True)
    toy_save(manager, cfg, 1, n=4_000_000)
    manager.wait_until_finished()
    seen, stop = [], threading.Event()

    def watch():  # samples the directory while step 2 is written in the background
        while not stop.is_set():
            seen.append(tuple(committed_steps(tmp_path)))

    t = threading.Thread(target=watch)
    t.start()
    while not seen:
        time.sleep(0.001)
    try:
        toy_save(manager, cfg, 2, n=4_000_000)  # async: returns before the write is done
        manager.wait_until_finished()
    finally:
        stop.set()
        t.join()
    manager.close()
    assert committed_steps(tmp_path) == [2]
    assert seen and all(s for s in seen), "a moment with no committed checkpoint on disk"
    assert (1,) in seen  # the watcher did see the write in progress


def test_keep_period_keeps_milestones_beyond_max_to_keep(tmp_path):
    manager, cfg = toy_manager(tmp_path, max_to_keep=2, keep_period=4)
    for s in range(2, 13, 2):
        toy_save(manager, cfg, s, n=64)
    manager.close()
    assert committed_steps(tmp_path) == [4, 8, 10, 12]


def test_truncated_newest_is_moved_aside_never_deleted_nor_counted(tmp_path, capsys):
    from promethios_jax import checkpoint as ckpt

    manager, cfg = toy_manager(tmp_path, max_to_keep=2)
    toy_save(manager, cfg, 3)
    toy_save(manager, cfg, 6)
    manager.close()
    victim = biggest_file(tmp_path / "checkpoints" / "6" / "state")
    os.truncate(victim, victim.stat().st_size // 2)

    manager, cfg = toy_manager(tmp_path, max_to_keep=2)
    state, it, step = ckpt.restore_latest(manager, abstract_of(toy_state(0)))
    err = capsys.readouterr().err
    assert step == 3 and it["batches_consumed"] == 3 and int(state["step"]) == 3
    np.testing.assert_array_equal(np.asarray(state["params"]["w"]), np.arange(200_000, dtype=np.float32) * 3)
    assert "checkpoint at step 6 is corrupt or partial" in err
    moved = list((tmp_path / "checkpoints").glob("corrupt-6-*"))
    assert len(moved) == 1 and str(moved[0]) in err
    assert (moved[0] / "state").is_dir() and victim.name in {p.name for p in moved[0].rglob("*")}
    # The run goes on and saves step 6 again: no collision with the corrupt one, and with
    # max_to_keep=2 the step it resumed from stays.
    toy_save(manager, cfg, 6)
    manager.close()
    assert committed_steps(tmp_path) == [3, 6]
    assert moved[0].is_dir()


def test_no_readable_checkpoint_refuses_and_moves_nothing(tmp_path):
    from promethios_jax import checkpoint as ckpt

    manager, cfg = toy_manager(tmp_path)
    toy_save(manager, cfg, 3)
    manager.close()
    os.remove(tmp_path / "checkpoints" / "3" / "state" / "manifest.ocdbt")
    manager, _ = toy_manager(tmp_path)
    with pytest.raises(ckpt.CheckpointError, match=r"no checkpoint .* reads back \(tried steps \[3\]\)"):
        ckpt.restore_latest(manager, abstract_of(toy_state(0)))
    manager.close()
    assert committed_steps(tmp_path) == [3]


def test_unfinished_save_is_reported_and_ignored(tmp_path, capsys):
    from promethios_jax import checkpoint as ckpt

    manager, cfg = toy_manager(tmp_path)
    toy_save(manager, cfg, 3)
    manager.close()
    partial = tmp_path / "checkpoints" / "6.orbax-checkpoint-tmp"  # as a kill -9 mid-save leaves it
    (partial / "state").mkdir(parents=True)
    manager, _ = toy_manager(tmp_path)
    assert "unfinished save of step 6" in capsys.readouterr().err
    _, _, step = ckpt.restore_latest(manager, abstract_of(toy_state(0)))
    manager.close()
    assert step == 3 and not partial.exists()


def test_fingerprint_does_not_depend_on_the_sharding():
    from promethios_jax import integrity

    a = toy_state(5, n=4096)
    b = toy_state(5, n=4096, mesh=auto_mesh((2, 4), ("x", "d")))
    assert integrity.fingerprint(a) == integrity.fingerprint(b)
    c = toy_state(5, n=4096)
    c["params"]["w"] = c["params"]["w"].at[17].add(1e-3)
    diff = integrity.fingerprint(c)
    assert [k for k in diff if diff[k] != integrity.fingerprint(a)[k]] == ["params/w"]
