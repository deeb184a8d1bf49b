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

from promethios_jax import aot, distributed, gpu_aot, profiling, sharding, stages, trainable
from promethios_jax import checkpoint as ckpt
from promethios_jax import config as config_lib
from promethios_jax import metrics as metrics_lib
from promethios_jax import state as state_lib
from promethios_jax import workdir as workdir_lib
from promethios_jax.data import generate, pipeline
from promethios_jax.data import tokenizer as tokenizer_lib
from promethios_jax.data import prompt
from promethios_jax.data.records import DataError
from promethios_jax.data.tokenizer import TokenizerError

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
    """The dataset directory: config.data.path, or WORKDIR/data generated on first use;
    a tokenizer trained on the data ("sentencepiece:N") is trained there on first use."""
    data_dir = workdir_lib.data_dir(config, workdir)
    if config.data.path and not (data_dir / "manifest.json").exists():
        raise TrainError(f"config.data.path={config.data.path!r} holds no manifest.json: "
                         "generate it with python -m promethios_jax.data.generate --out=DIR")
    if jax.process_index() == 0:
        if not (data_dir / "manifest.json").exists():
            t0 = time.time()
            d = config.data
            m = generate.generate_dataset(str(data_dir), d.num_examples, d.seed, d.heldout_fraction,
                                          prompt_layout=d.prompt_layout)
            print(f"generated {m['counts']['total']} examples into {data_dir} in {time.time() - t0:.1f}s", flush=True)
        tokenizer_lib.ensure_trained(config, data_dir)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("data_ready")
    prompt.check_data_layout(data_dir, config.data.prompt_layout)
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


def enter_stage(state: dict, setup: state_lib.TrainSetup) -> dict:
    """The state as the next stage starts it: the parameters and counters carry over, the
    optimizer state is the stage's own, fresh (what trains and the schedule may change)."""
    def build(old):
        return {**old, "opt_state": setup.tx.init(old["params"])}

    donate = (0,) if jax.default_backend() != "cpu" else ()  # CPU cannot donate; spare the warning
    return jax.jit(build, out_shardings=setup.shardings, donate_argnums=donate)(state)


class StageRunner:
    """The compiled step (memory checked) and the data of the stage being trained."""

    def __init__(self, plan: stages.Plan, mesh, allow_oversubscribe: bool, primary: bool):
        self.plan, self.mesh, self.allow, self.primary = plan, mesh, allow_oversubscribe, primary
        self.index = self.compiled = self.loader = self.batch_sh = None

    @property
    def config(self):
        return self.plan.configs[self.index]

    def compile(self, k: int):
        self.close()
        self.index = k
        self.compiled = aot.compile_step(self.config, self.mesh)
        fit = aot.check_fit(self.config, self.mesh, self.compiled, allow=self.allow)
        self.batch_sh = {name: a.sharding for name, a in self.compiled.batch.items()}
        if self.primary:
            need = fit["bytes_per_device"]
            print(f"compiled the train step in {self.compiled.compile_s:.1f}s"
                  + (f" ({need / 2**30:.2f} GiB per device)" if need is not None else ""), flush=True)

    def open_data(self, data_dir: Path, position: dict | None = None, where: str = ""):
        self.loader = pipeline.make_train_iterator(self.config, str(data_dir), jax.process_index(),
                                                   jax.process_count())
        if position is not None:
            self.loader.set_state(position, where=where)

    def close(self):
        if self.loader is not None:
            self.loader.close()
            self.loader = None


def train(config, workdir: str, stop_after: int | None = None, allow_oversubscribe: bool = False) -> dict:
    """Runs (or resumes) training through its stages (stages.py); returns the last logged metrics.

    Order: validation (config and backend), the ahead-of-time compile and the memory
    check, then data, then the state (restored or initialised): a run that cannot work
    is refused before anything is generated or allocated. Epochs need the data to count
    steps, so a run counted in epochs generates its data before the compile."""
    wd = workdir_lib.ensure_writable(workdir)
    config_lib.validate(config, jax.device_count(), jax.process_count(), backend=jax.default_backend())
    mesh = sharding.make_mesh(config)
    primary = jax.process_index() == 0
    data_dir = None
    if any(s.epochs is not None for s in stages.parse_stages(config)):
        data_dir = prepare_data(config, wd)
        plan = stages.make_plan(config, pipeline.fitted_lengths(str(data_dir), config)[0], str(data_dir))
    else:
        plan = stages.make_plan(config)
    multi = len(plan.stages) > 1
    # A checkpoint holds the optimizer state of the stage of its last step. Listed without
    # a manager: nothing may be created in the workdir before the fit check.
    saved = workdir_lib.checkpoint_steps(wd)
    k_state = plan.stage_of_state(saved[-1] if saved else 0)
    k, _ = plan.locate(saved[-1] if saved else 0)
    total_steps = plan.total_steps if stop_after is None else min(plan.total_steps, stop_after)
    runner = StageRunner(plan, mesh, allow_oversubscribe, primary)
    if k < len(plan.stages):
        runner.compile(k)
    if data_dir is None:
        data_dir = prepare_data(config, wd)
    manager = ckpt.make_manager(wd, config.checkpoint)
    tok_record = tokenizer_lib.checkpoint_record(config, str(data_dir))

    def restore(k_from):
        abstract = (runner.compiled.setup if runner.index == k_from
                    else state_lib.abstract_train_state(plan.configs[k_from], mesh)).abstract
        return ckpt.restore_latest(manager, abstract)

    restored = restore(k_state) if saved else None
    if restored is not None and plan.stage_of_state(restored[2]) != k_state:
        # An unreadable newest checkpoint made it fall back across a stage boundary.
        k_state = plan.stage_of_state(restored[2])
        restored = ckpt.restore_latest(manager, state_lib.abstract_train_state(plan.configs[k_state], mesh).abstract,
                                       step=restored[2])
    step = 0 if restored is None else restored[2]
    if restored is not None:
        workdir_lib.check_tokenizer(wd, step, tok_record, config.data.tokenizer)
    k, _ = plan.locate(step)
    if k < len(plan.stages) and runner.index != k:  # a fallback to an older checkpoint moved the stage
        runner.compile(k)
    setup = runner.compiled.setup if runner.compiled is not None else state_lib.abstract_train_state(
        plan.configs[k_state], mesh)
    n_params = setup.param_count
    if restored is None:
        state = jax.jit(setup.init, out_shardings=setup.shardings)()
        print(f"initialised {n_params:,} parameters on mesh {dict(mesh.shape)}", flush=True)
    else:
        state, it_state, _ = restored
        if runner.index is not None and runner.index != k_state:
            state = enter_stage(state, setup)  # resumed at a stage boundary
    if runner.index is not None:
        mid_stage = restored is not None and runner.index == k_state
        runner.open_data(data_dir, it_state if mid_stage else None, f"checkpoint step {step}")
    if restored is not None:
        position = f" (data position: batch {runner.loader.batches_consumed})" if runner.loader is not None else ""
        print(f"resumed from step {step}{position} on mesh {dict(mesh.shape)}"
              + (f", stage {plan.stages[k].name!r}" if multi and k < len(plan.stages) else ""), flush=True)
    if primary and step < plan.total_steps:
        workdir_lib.clear_done(wd)  # a resumed run with more steps: eval --watch must keep waiting

    writer = metrics_lib.MetricsWriter(str(wd), enabled=primary)
    if step == 0:
        writer.write_config(config, n_params)

    def mark_stage(k_now: int, step_now: int):
        if not multi:
            return
        s = plan.stages[k_now]
        on, total = trainable.count(state["params"], runner.compiled.setup.trainable)
        writer.write_event(step_now, "stage", index=k_now, name=s.name, steps=plan.steps[k_now], trains=s.trains,
                           trainable_params=on)
        print(f"stage {k_now + 1}/{len(plan.stages)} {s.name!r} from step {step_now}: {plan.steps[k_now]} steps, "
              f"{on:,} of {total:,} parameters train ({s.trains})", flush=True)

    if runner.index is not None and plan.start(runner.index) == step:
        mark_stage(runner.index, step)

    stop = _StopFlag()
    old_handlers = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    tracker = metrics_lib.tracker_from_config(config, jax.device_count(), start_step=step)
    progress = metrics_lib.ProgressLine(plan.total_steps, enabled=primary)
    profiler = profiling.Profiler.from_config(str(wd), config.profile, enabled=primary)
    nonfinite = NonFiniteWatch(config.train.nan_policy, state, step, manager, wd, primary)
    last = {}
    first_step = step

    def save(step_now: int):
        nonfinite.check(state, step_now)  # under "stop", never save a state past a non-finite step
        with tracker.checkpoint():
            ckpt.save(manager, step_now, state, runner.loader.get_state(), config, force=True, tokenizer=tok_record)

    try:
        while step < total_steps:
            profiler.step(step, wait_for=state)
            with tracker.data_wait():
                batch = sharding.host_local_to_global(next(runner.loader), runner.batch_sh)
            with profiling.annotate(step):
                state, m = runner.compiled.executable(state, batch)
            step += 1
            if step == first_step + 1:
                # Leave the first dispatch out of the throughput figures.
                jax.block_until_ready(m)
                tracker.reset(step)
            stage_end = step == plan.start(runner.index) + plan.steps[runner.index]
            stopping = stop.signal is not None
            if jax.process_count() > 1:
                # Every process must stop (and save) at the same step: they agree at the log
                # steps, which all of them take, signalled or not.
                stopping = step % config.train.log_every == 0 and bool(
                    np.any(multihost_utils.process_allgather(np.array(stopping))))
            if step % config.train.log_every == 0 or step == total_steps or stopping or stage_end:
                m = {k_: float(v) for k_, v in jax.device_get(m).items()}
                m.pop("finite")
                m["nonfinite_skipped"] = int(jax.device_get(state["nonfinite_count"]))
                scalars = metrics_lib.train_scalars(m)
                if multi:
                    scalars["train/stage"] = runner.index
                scalars.update(tracker.update(step))
                scalars.update(metrics_lib.device_memory_stats())
                writer.write_scalars(step, scalars)
                progress.update(step, scalars)
                last = {"step": step, **scalars}
                nonfinite.check(state, step)  # after the write, so the bad step's row is in the logs
            if step % config.checkpoint.every_steps == 0 or step == total_steps or stopping or stage_end:
                save(step)  # every stage boundary has its checkpoint
            if stopping:
                break
            if stage_end and step < total_steps:
                runner.compile(plan.locate(step)[0])
                state = enter_stage(state, runner.compiled.setup)
                runner.open_data(data_dir)
                mark_stage(runner.index, step)
                tracker.reset(step)  # leave the new stage's compile out of the throughput figures
    finally:
        profiler.close()
        runner.close()
        try:
            # Still under our handlers: a signal now must not kill the commit of the last save.
            manager.wait_until_finished()
            manager.close()
        finally:
            for s, h in old_handlers.items():
                signal.signal(s, h)
            progress.close()
            writer.close()
    if step >= plan.total_steps and primary:
        workdir_lib.mark_done(wd, step)
        for s in plan.stages:
            if s.evaluate:
                print(f"stage {s.name!r}: score the final checkpoint with python -m eval --workdir={wd} "
                      "(eval --watch picks it up)", flush=True)
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
    # One compile per distinct set of trainable parts among the stages: what trains sets
    # the optimizer state, and so the memory. The largest is returned.
    reports = {}
    for i, s in enumerate(stages.parse_stages(config)):
        if s.evaluate or s.trains in reports:
            continue
        report = aot.dry_run(stages.stage_config(config, s, i), mesh)
        reports[s.trains] = report
        print(f"{'' if s.name == 'train' else f'stage {s.name!r}: '}model params: {report['params']:,} "
              f"({report['trainable_params']:,} train: {s.trains}); mesh {report['mesh']}; "
              f"per-device memory {report['gib_per_device']} GiB (optimizer state "
              f"{report['optimizer_state_bytes_per_device'] / 2**30:.2f} GiB); "
              f"{report['flops_per_device_step']:.3e} FLOPs per device per step")
        print(json.dumps(report))
    return max(reports.values(), key=lambda r: r["bytes_per_device"] or 0)


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
    except (TrainError, config_lib.ConfigError, workdir_lib.WorkdirError, DataError, TokenizerError,
            stages.StageError, trainable.TrainableError, distributed.DistributedError, gpu_aot.GpuAotError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    return 0


def run():
    app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
    run()
