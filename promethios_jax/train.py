"""Entry point and loop: `python -m promethios_jax.train --config=configs/tiny.py --workdir=DIR`.

Everything that can be refused is refused before the first allocation: the config (and
what the backend can honour) at validation, then the train step is compiled ahead of
time (`promethios_jax.aot`) and its per-device memory checked against the devices; the
loop then runs that compiled executable. Nothing imports this module: the state, the
step and the compile live in `state`, `step` and `aot`.
"""
from __future__ import annotations

import json
import logging
import signal
import sys
import time
from pathlib import Path

import jax
import numpy as np
from absl import app, flags
from absl import logging as absl_logging
from jax.experimental import multihost_utils
from ml_collections import config_flags

from promethios_jax import aot, distributed, gpu_aot, profiling, sharding
from promethios_jax import checkpoint as ckpt
from promethios_jax import config as config_lib
from promethios_jax import metrics as metrics_lib
from promethios_jax import workdir as workdir_lib
from promethios_jax.data import generate, pipeline
from promethios_jax.data.records import DataError

_REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = str(_REPO_CONFIGS / "tiny.py")

_CONFIG = config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Config file (ml-collections get_config()).")
_WORKDIR = flags.DEFINE_string("workdir", "workdir", "Run directory: data, checkpoints, TensorBoard, metrics.jsonl.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Compile the train step for the mesh, report memory and FLOPs, exit.")
_TARGET = flags.DEFINE_enum("target", None, sorted(gpu_aot.TARGETS), "With --dry_run: compile for this GPU with XLA's "
                            "GPU compiler on this host (needs the gpu-aot extra; see promethios_jax/gpu_aot.py).")
_TOPOLOGY = flags.DEFINE_string("topology", "1x1x8", "With --target: SLICESxHOSTSxGPUS_PER_HOST, e.g. 1x1x8, 1x4x8.")
_OVERSUBSCRIBE = flags.DEFINE_bool("allow_oversubscribe", False, "Run even when the compiled step needs more memory "
                                   "per device than a device holds (it will likely fail to allocate).")
distributed.define_flags()


class TrainError(RuntimeError):
    pass


def prepare_data(config, workdir: Path) -> Path:
    """The dataset directory: config.data.path, or WORKDIR/data generated on first use."""
    data_dir = workdir_lib.data_dir(config, workdir)
    if config.data.path:
        if not (data_dir / "manifest.json").exists():
            raise TrainError(f"config.data.path={config.data.path!r} holds no manifest.json: "
                             "generate it with python -m promethios_jax.data.generate --out=DIR")
        return data_dir
    if jax.process_index() == 0 and not (data_dir / "manifest.json").exists():
        t0 = time.time()
        manifest = generate.generate_dataset(str(data_dir), config.data.num_examples, config.data.seed,
                                             config.data.heldout_fraction)
        print(f"generated {manifest.get('counts', {}).get('total', config.data.num_examples)} examples "
              f"into {data_dir} in {time.time() - t0:.1f}s", flush=True)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("data_ready")
    return data_dir


class _StopFlag:
    """SIGTERM/SIGINT: the loop finishes its step, saves, waits for the save to commit,
    and returns (exit 0). A second signal stops at once, without waiting for a save."""

    def __init__(self):
        self.signal = None

    def __call__(self, signum, frame):
        name = signal.Signals(signum).name
        if self.signal is not None:
            print(f"received {name} again: stopping now; an unfinished save is discarded, "
                  "the last committed checkpoint is kept", file=sys.stderr, flush=True)
            raise KeyboardInterrupt
        self.signal = signum
        print(f"received {name}: finishing this step, saving, exiting", flush=True)


class NonFiniteWatch:
    """The host side of the NaN policy. The step never applies a non-finite update (both
    policies) and counts it in state["nonfinite_count"]; `check` reads the count (at log
    steps and before saves), warns under "skip" and raises TrainError under "stop"."""

    def __init__(self, policy: str, state, step: int, manager, workdir: Path, primary: bool):
        self.policy, self.manager, self.workdir, self.primary = policy, manager, workdir, primary
        self.start = self.seen = int(jax.device_get(state["nonfinite_count"]))
        self.checked_step = step

    def check(self, state, step_now: int) -> int:
        count = int(jax.device_get(state["nonfinite_count"]))
        new, since = count - self.seen, self.checked_step
        self.seen, self.checked_step = count, step_now
        if new <= 0:
            return count
        if self.start == 0 and self.policy == "stop":
            where = f"step {int(jax.device_get(state['first_nonfinite_step']))}"
        else:
            where = f"step {step_now}" if since + 1 == step_now else f"{new} step(s) in {since + 1}..{step_now}"
        if self.policy == "stop":
            self.manager.wait_until_finished()
            good = self.manager.latest_step()
            kept = (f"the last good checkpoint, step {good}, is kept in {workdir_lib.checkpoint_dir(self.workdir)}"
                    if good is not None else "no checkpoint had been saved yet")
            raise TrainError(f"non-finite loss or gradient at {where}; stopping (config.train.nan_policy='stop'). "
                             f"Nothing after it was saved; {kept}. Set config.train.nan_policy='skip' to skip "
                             "such updates instead")
        if self.primary:
            print(f"WARNING: non-finite loss or gradient at {where}: update skipped "
                  f"({count} skipped in all, train/nonfinite_skipped)", file=sys.stderr, flush=True)
        return count


def train(config, workdir: str, stop_after: int | None = None, allow_oversubscribe: bool = False) -> dict:
    """Runs (or resumes) training; returns the last logged metrics.

    Order: validation (config and backend), the ahead-of-time compile and the memory
    check, then data, then the state (restored or initialised): a run that cannot work
    is refused before anything is generated or allocated."""
    wd = workdir_lib.ensure_writable(workdir)
    config_lib.validate(config, jax.device_count(), jax.process_count(), backend=jax.default_backend())
    mesh = sharding.make_mesh(config)
    primary = jax.process_index() == 0

    compiled = aot.compile_step(config, mesh)
    fit = aot.check_fit(config, mesh, compiled, allow=allow_oversubscribe)
    if primary:
        need = fit["bytes_per_device"]
        print(f"compiled the train step in {compiled.compile_s:.1f}s"
              + (f" ({need / 2**30:.2f} GiB per device)" if need is not None else ""), flush=True)
    setup = compiled.setup
    batch_sh = {k: a.sharding for k, a in compiled.batch.items()}
    data_dir = prepare_data(config, wd)
    n_params = setup.param_count
    manager = ckpt.make_manager(wd, config.checkpoint)
    loader = pipeline.make_train_iterator(config, str(data_dir), jax.process_index(), jax.process_count())
    restored = ckpt.restore_latest(manager, setup.abstract)
    if restored is None:
        state = jax.jit(setup.init, out_shardings=setup.shardings)()
        print(f"initialised {n_params:,} parameters on mesh {dict(mesh.shape)}", flush=True)
    else:
        state, it_state, step = restored
        loader.set_state(it_state, where=f"checkpoint step {step}")
        print(f"resumed from step {step} (data position: batch {loader.batches_consumed}) on mesh "
              f"{dict(mesh.shape)}", flush=True)
    step = int(jax.device_get(state["step"]))
    if primary and step < config.train.steps:
        workdir_lib.clear_done(wd)  # a resumed run with more steps: eval --watch must keep waiting

    writer = metrics_lib.MetricsWriter(str(wd), enabled=primary)
    if step == 0:
        writer.write_config(config, n_params)

    stop = _StopFlag()
    old_handlers = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    total_steps = config.train.steps if stop_after is None else min(config.train.steps, stop_after)
    tracker = metrics_lib.tracker_from_config(config, jax.device_count(), start_step=step)
    progress = metrics_lib.ProgressLine(config.train.steps, enabled=primary)
    profiler = profiling.Profiler.from_config(str(wd), config.profile, enabled=primary)
    nonfinite = NonFiniteWatch(config.train.nan_policy, state, step, manager, wd, primary)
    last = {}
    first_step = step

    def save(step_now: int):
        nonfinite.check(state, step_now)  # under "stop", never save a state past a non-finite step
        with tracker.checkpoint():
            ckpt.save(manager, step_now, state, loader.get_state(), config, force=True)

    try:
        while step < total_steps:
            profiler.step(step, wait_for=state)
            with tracker.data_wait():
                batch = sharding.host_local_to_global(next(loader), batch_sh)
            with profiling.annotate(step):
                state, m = compiled.executable(state, batch)
            step += 1
            if step == first_step + 1:
                # Leave the first dispatch out of the throughput figures.
                jax.block_until_ready(m)
                tracker.reset(step)
            stopping = stop.signal is not None
            if jax.process_count() > 1:
                # Every process must stop (and save) at the same step: they agree at the log
                # steps, which all of them take, signalled or not.
                stopping = step % config.train.log_every == 0 and bool(
                    np.any(multihost_utils.process_allgather(np.array(stopping))))
            if step % config.train.log_every == 0 or step == total_steps or stopping:
                m = {k: float(v) for k, v in jax.device_get(m).items()}
                m.pop("finite")
                m["nonfinite_skipped"] = int(jax.device_get(state["nonfinite_count"]))
                scalars = metrics_lib.train_scalars(m)
                scalars.update(tracker.update(step))
                scalars.update(metrics_lib.device_memory_stats())
                writer.write_scalars(step, scalars)
                progress.update(step, scalars)
                last = {"step": step, **scalars}
                nonfinite.check(state, step)  # after the write, so the bad step's row is in the logs
            if step % config.checkpoint.every_steps == 0 or step == total_steps or stopping:
                save(step)
            if stopping:
                break
    finally:
        profiler.close()
        try:
            # Still under our handlers: a signal now must not kill the commit of the last save.
            manager.wait_until_finished()
            manager.close()
        finally:
            for s, h in old_handlers.items():
                signal.signal(s, h)
            progress.close()
            writer.close()
    if step >= config.train.steps and primary:
        workdir_lib.mark_done(wd, step)
    cdir = workdir_lib.checkpoint_dir(wd)
    if stop.signal is None:
        print(f"finished at step {step}; checkpoints in {cdir}", flush=True)
    else:
        print(f"stopped by {signal.Signals(stop.signal).name} at step {step}; saved and committed "
              f"{cdir / str(step)}", flush=True)
    return last


def dry_run(config) -> dict:
    config_lib.validate(config, jax.device_count(), jax.process_count())
    if config.model.attention_impl == "cudnn" and jax.default_backend() != "gpu":
        # cuDNN cannot compile here; the XLA path materialises the scores, so its
        # figure is an upper bound on what the cuDNN path needs.
        print("note: attention_impl='cudnn' needs a GPU; compiling with 'xla' instead "
              "(an upper bound on attention memory)")
        config.model.attention_impl = "xla"
    mesh = sharding.make_mesh(config)
    report = aot.dry_run(config, mesh)
    print(f"model params: {report['params']:,}; mesh {report['mesh']}; "
          f"per-device memory {report['gib_per_device']} GiB; "
          f"{report['flops_per_device_step']:.3e} FLOPs per device per step")
    print(json.dumps(report))
    return report


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Orbax logs every save at INFO through absl; the progress line is the user's view.
    absl_logging.set_verbosity(absl_logging.WARNING)
    config_name = config_flags.get_config_filename(flags.FLAGS["config"])
    try:
        if _TARGET.value:
            # The target's compile-only devices, not this host's: no distributed start.
            if not _DRY_RUN.value:
                raise TrainError("--target compiles for a GPU on this host: use it with --dry_run")
            gpu_aot.dry_run(_CONFIG.value, config_name, _TARGET.value, _TOPOLOGY.value)
            return 0
        distributed.initialize()
        if _DRY_RUN.value:
            dry_run(_CONFIG.value)
        else:
            train(_CONFIG.value, _WORKDIR.value, allow_oversubscribe=_OVERSUBSCRIBE.value)
    except aot.DoesNotFit as e:
        print(f"error: --config={config_name}: {e}", file=sys.stderr, flush=True)
        return 2
    except (TrainError, config_lib.ConfigError, workdir_lib.WorkdirError, DataError,
            distributed.DistributedError, gpu_aot.GpuAotError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    return 0


def run():
    app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
    run()
