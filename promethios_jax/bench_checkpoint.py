"""How long the train loop waits on a checkpoint save, against its step time.

    python -m promethios_jax.bench_checkpoint --config=configs/350m.py \\
        --config.model.max_seq_len=256 --config.train.global_batch_size=1 --steps=13 --every=4

Runs the real loop (`python -m promethios_jax.train` in a subprocess, with the --config
and --config.* given here) for `--steps` steps with a save every `--every`, on the
devices there are, logging every step. From
metrics.jsonl: `perf/checkpoint_s` is the time the loop spent inside `save()` (the
blocking part: the device-to-host copy, the fingerprints, Orbax's bookkeeping) and
`perf/step_time_s` the step time without it. A watcher notes when each step directory
appears (the background write committed). The figure of merit:

    waited fraction = blocking time per save / time between saves
                    = blocking / (every * step time + blocking)          (target < 5%)

The last save of the run (at --steps) is left out: the loop ends there and waits for
it by design. The first measured save includes one-time set-up (the fingerprint jit);
it is shown on its own. `--mode=both` also runs with synchronous saves for contrast.
`--workdir` keeps the runs (default: a temporary directory, removed after).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import jax
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from promethios_jax import config as config_lib
from promethios_jax import workdir as workdir_lib
from promethios_jax.data import generate

DEFAULT_CONFIG = str(Path(__file__).resolve().parent.parent / "configs" / "tiny.py")
_CONFIG = config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Config file (ml-collections get_config()).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Keep the runs here (default: a temporary directory, removed after).")
_STEPS = flags.DEFINE_integer("steps", 13, "Steps to run (saves at every multiple of --every, and the last).")
_EVERY = flags.DEFINE_integer("every", 4, "checkpoint.every_steps for the benchmark.")
_MODE = flags.DEFINE_enum("mode", "async", ["async", "sync", "both"], "Save mode(s) to measure.")
_EXAMPLES = flags.DEFINE_integer("num_examples", 300, "Examples to generate when config.data.path is empty.")


def _watch_commits(cdir: Path, stop: threading.Event, seen: dict) -> None:
    while not stop.is_set():
        if cdir.is_dir():
            for p in cdir.iterdir():
                if p.name.isdigit() and int(p.name) not in seen:
                    seen[int(p.name)] = time.time()
        time.sleep(0.05)


def _config_args() -> list[str]:
    """This program's --config and --config.* flags, to hand to the train program."""
    name = config_flags.get_config_filename(flags.FLAGS["config"])
    overrides = config_flags.get_override_values(flags.FLAGS["config"])
    return [f"--config={name}"] + [f"--config.{k}={v}" for k, v in overrides.items()]


def measure(data_path: str, workdir: Path, steps: int, every: int, async_save: bool) -> dict:
    if workdir.exists():
        shutil.rmtree(workdir)
    commits: dict[int, float] = {}
    stop = threading.Event()
    cdir = workdir_lib.checkpoint_dir(workdir)
    watcher = threading.Thread(target=_watch_commits, args=(cdir, stop, commits), daemon=True)
    watcher.start()
    cmd = [sys.executable, "-m", "promethios_jax.train", f"--workdir={workdir}", *_config_args(),
           "--config.train.log_every=1", f"--config.train.steps={steps}", f"--config.checkpoint.every_steps={every}",
           f"--config.checkpoint.async_save={async_save}", "--config.checkpoint.max_to_keep=2",
           "--config.checkpoint.keep_period=0", f"--config.data.path={data_path}"]
    try:
        subprocess.run(cmd, check=True, env=dict(os.environ))
    finally:
        stop.set()
        watcher.join()
    rows = {r["step"]: r for r in map(json.loads, workdir_lib.metrics_path(workdir).read_text().splitlines())}
    saves = [s for s in range(every, steps, every) if s + 1 in rows]  # the last one is waited for by design
    blocking = [rows[s + 1]["perf/checkpoint_s"] for s in saves]
    step_times = [rows[s]["perf/step_time_s"] for s in sorted(rows) if s > 1 and "perf/step_time_s" in rows[s]]
    quiet = [rows[s]["perf/step_time_s"] for s in sorted(rows)
             if s > 1 and "perf/step_time_s" in rows[s] and (s - 1) not in saves]
    commit_s = [commits[s] - rows[s]["time"] for s in saves if s in commits]
    newest = workdir_lib.step_dir(workdir, workdir_lib.checkpoint_steps(workdir)[-1])
    state_bytes = sum(p.stat().st_size for p in newest.rglob("*") if p.is_file())
    step = statistics.median(step_times)
    steady = blocking[1:] or blocking
    block = statistics.median(steady)
    between = every * step + block
    return {
        "mode": "async" if async_save else "sync",
        "saves_measured": saves,
        "blocking_s_per_save": [round(b, 3) for b in blocking],
        "blocking_s_first": round(blocking[0], 3) if blocking else None,
        "blocking_s_median_later": round(block, 3),
        "step_time_s_median": round(step, 3),
        "step_time_s_median_no_save_in_flight": round(statistics.median(quiet), 3) if quiet else None,
        "step_time_s_after_each_save": [round(rows[s + 1]["perf/step_time_s"], 3) for s in saves],
        "commit_s_after_save_start": [round(c, 2) for c in commit_s],
        "every_steps": every,
        "time_between_saves_s": round(between, 3),
        "waited_fraction": round(block / between, 4),
        "waited_fraction_first_save": round(blocking[0] / (every * step + blocking[0]), 4) if blocking else None,
        "checkpoint_gib_on_disk": round(state_bytes / 2**30, 3),
    }


def main(argv):
    del argv
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every save at INFO
    config = _CONFIG.value
    keep = _WORKDIR.value is not None
    root = Path(_WORKDIR.value) if keep else Path(tempfile.mkdtemp(prefix="bench_ckpt_"))
    root.mkdir(parents=True, exist_ok=True)
    if not config.data.path:
        data = root / workdir_lib.DATA
        if not (data / "manifest.json").exists():
            generate.generate_dataset(str(data), _EXAMPLES.value, config.data.seed, config.data.heldout_fraction,
                                      prompt_layout=config.data.prompt_layout)
        config.data.path = str(data)
    config_lib.validate(config, jax.device_count(), jax.process_count())
    modes = {"async": [True], "sync": [False], "both": [True, False]}[_MODE.value]
    results = []
    try:
        for a in modes:
            r = measure(config.data.path, root / ("run_async" if a else "run_sync"), _STEPS.value, _EVERY.value, a)
            results.append(r)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    m = config.model
    print()
    print(f"checkpoint benchmark: d_model={m.d_model} n_layers={m.n_layers} vocab={m.vocab_size} "
          f"seq={m.max_seq_len} global_batch={config.train.global_batch_size} on {jax.device_count()} "
          f"{jax.devices()[0].platform} device(s)")
    for r in results:
        print(f"[{r['mode']}] checkpoint {r['checkpoint_gib_on_disk']} GiB on disk; step time {r['step_time_s_median']} s "
              f"(median; {r['step_time_s_median_no_save_in_flight']} s with no save in flight); "
              f"save every {r['every_steps']} steps")
        print(f"[{r['mode']}]   blocking time per save: {r['blocking_s_per_save']} s "
              f"(first {r['blocking_s_first']} s incl. one-time set-up; later median {r['blocking_s_median_later']} s)")
        print(f"[{r['mode']}]   committed {r['commit_s_after_save_start']} s after each save began; "
              f"step time right after each save: {r['step_time_s_after_each_save']} s")
        print(f"[{r['mode']}]   waited fraction = {r['blocking_s_median_later']} / {r['time_between_saves_s']} s = "
              f"{100 * r['waited_fraction']:.2f}% (first save: {100 * r['waited_fraction_first_save']:.2f}%; "
              "target < 5%)")
    print(json.dumps(results))
    sys.stdout.flush()


if __name__ == "__main__":
    app.run(main)
