"""Entry point and loop: `python -m promethios_jax.train --config=configs/tiny.py --workdir=DIR`.

`train_step` is a pure function of (state, batch) -> (state, metrics), jitted once with
explicit in/out shardings and donation. Everything that can be refused is refused
before the first compile.
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import time
from functools import partial
from pathlib import Path

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from promethios_jax import config as config_lib
from promethios_jax import gpu_aot

_REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = str(_REPO_CONFIGS / "tiny.py")

_CONFIG = config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Config file (ml-collections get_config()).")
_WORKDIR = flags.DEFINE_string("workdir", "workdir", "Run directory: data, checkpoints, TensorBoard, metrics.jsonl.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Compile the train step for the mesh, report memory and FLOPs, exit.")
_TARGET = flags.DEFINE_enum("target", None, sorted(gpu_aot.TARGETS), "With --dry_run: compile for this GPU with XLA's "
                            "GPU compiler on this host (needs the gpu-aot extra; see promethios_jax/gpu_aot.py).")
_TOPOLOGY = flags.DEFINE_string("topology", "1x1x8", "With --target: SLICESxHOSTSxGPUS_PER_HOST, e.g. 1x1x8, 1x4x8.")
_COORD = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
_NPROC = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
_PID = flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
_DIST = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with cluster auto-detection "
                          "(SLURM, Kubernetes, ...) even without explicit coordinator flags.")

log = logging.getLogger("promethios_jax.train")


class TrainError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------
# Set-up helpers (no jax device work before distributed init)


def init_distributed():
    import jax

    coord = _COORD.value or os.environ.get("PROMETHIOS_COORDINATOR")
    nproc = _NPROC.value if _NPROC.value is not None else os.environ.get("PROMETHIOS_NUM_PROCESSES")
    pid = _PID.value if _PID.value is not None else os.environ.get("PROMETHIOS_PROCESS_ID")
    if coord or nproc is not None:
        if not (coord and nproc is not None and pid is not None):
            raise TrainError("multi-host needs all of coordinator address, process count and process id "
                             f"(got coordinator={coord!r}, num_processes={nproc!r}, process_id={pid!r})")
        kwargs = {}
        if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS") == "cpu":
            kwargs["initialization_timeout"] = 120
        jax.distributed.initialize(coord, int(nproc), int(pid), **kwargs)
    elif _DIST.value:
        jax.distributed.initialize()


def check_workdir(workdir: str) -> Path:
    path = Path(workdir).absolute()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise TrainError(f"workdir {path} cannot be written: {e.strerror or e}") from e
    return path


def prepare_data(config, workdir: Path) -> Path:
    """The dataset directory: config.data.path, or WORKDIR/data generated on first use."""
    import jax
    from jax.experimental import multihost_utils

    from promethios_jax.data import generate

    if config.data.path:
        data_dir = Path(config.data.path)
        if not (data_dir / "manifest.json").exists():
            raise TrainError(f"config.data.path={config.data.path!r} holds no manifest.json: "
                             "generate it with python -m promethios_jax.data.generate --out=DIR")
        return data_dir
    data_dir = workdir / "data"
    if jax.process_index() == 0 and not (data_dir / "manifest.json").exists():
        t0 = time.time()
        manifest = generate.generate_dataset(str(data_dir), config.data.num_examples, config.data.seed,
                                             config.data.heldout_fraction)
        print(f"generated {manifest.get('counts', {}).get('total', config.data.num_examples)} examples "
              f"into {data_dir} in {time.time() - t0:.1f}s", flush=True)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("data_ready")
    return data_dir


def make_optimizer(config, logical_specs):
    import jax
    import optax

    t = config.train
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=t.learning_rate, warmup_steps=max(1, t.warmup_steps),
        decay_steps=max(t.steps, t.warmup_steps + 1), end_value=t.learning_rate * t.min_lr_ratio)
    # Decay matrices only: norms, gains and per-layer vectors stay undecayed.
    decay_mask = jax.tree.map(lambda spec: len([a for a in spec if a != "layers"]) >= 2, logical_specs,
                              is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    tx = optax.chain(
        optax.clip_by_global_norm(t.grad_clip) if t.grad_clip > 0 else optax.identity(),
        optax.adamw(schedule, b1=t.b1, b2=t.b2, eps=t.eps, weight_decay=t.weight_decay, mask=decay_mask),
    )
    return tx, schedule


# ---------------------------------------------------------------------------------------
# The step


def make_train_step(config, graphdef, tx, schedule, mesh):
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec as P

    from promethios_jax.model import loss as loss_lib

    n_micro = config.train.grad_accum_steps

    def forward_sums(params, mb):
        model = nnx.merge(graphdef, params)
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):  # the cuDNN path pins q/k/v to it
            out = model(mb["tokens"], telemetry=mb["telemetry"], segment_ids=mb["segment_ids"],
                        positions=mb["positions"], head_positions=mb["head_positions"])
        return loss_lib.loss_sums(out, mb), model

    def micro_loss(params, mb, counts):
        sums, model = forward_sums(params, mb)
        total, parts = loss_lib.combine(sums, counts, config.loss, model, num_micro=n_micro)
        return total, parts

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def train_step(state, batch):
        params = state["params"]
        counts = loss_lib.loss_counts(batch)
        if n_micro == 1:
            (loss, parts), grads = grad_fn(params, batch, counts)
        else:
            # Micro-batch i takes rows i, i+n, ...: every device keeps an equal share of each.
            def split(x):
                x = x.reshape((x.shape[0] // n_micro, n_micro) + x.shape[1:]).swapaxes(0, 1)
                spec = P(None, ("data", "fsdp"), *([None] * (x.ndim - 2)))
                return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

            micro = jax.tree.map(split, batch)

            def body(carry, mb):
                g_acc, l_acc, p_acc = carry
                (l, p), g = grad_fn(params, mb, counts)
                return (jax.tree.map(jnp.add, g_acc, g), l_acc + l, jax.tree.map(jnp.add, p_acc, p)), None

            zeros_g = jax.tree.map(jnp.zeros_like, params)
            _, parts_shape = jax.eval_shape(lambda: micro_loss(params, jax.tree.map(lambda x: x[0], micro), counts))
            zeros_p = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), parts_shape)
            (grads, loss, parts), _ = jax.lax.scan(body, (zeros_g, jnp.zeros((), jnp.float32), zeros_p), micro)
            # Per-part means are linear in the sums, so summing over micro-batches is exact.
        grad_norm = optax.global_norm(grads)
        updates, new_opt = tx.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        # Both NaN policies keep the state finite; "stop" also halts on the host.
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
        new_params = keep(new_params, params)
        new_opt = keep(new_opt, state["opt_state"])
        step = state["step"]
        new_state = {
            "step": step + 1,
            "params": new_params,
            "opt_state": new_opt,
            "nonfinite_count": state["nonfinite_count"] + (~finite).astype(jnp.int32),
            "first_nonfinite_step": jnp.where((state["first_nonfinite_step"] < 0) & ~finite,
                                              step + 1, state["first_nonfinite_step"]),
        }
        metrics = {
            "loss": loss,
            **{f"loss_{k}": v for k, v in parts.items()},
            "grad_norm": grad_norm,
            "param_norm": optax.global_norm(new_params),
            "learning_rate": schedule(step),
            "finite": finite.astype(jnp.float32),
        }
        return new_state, metrics

    return train_step


def abstract_train_state(config, mesh):
    """Abstract state with shardings, the graphdef, optimizer, schedule and init function."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from promethios_jax import sharding
    from promethios_jax.model import GovernanceTransformer

    def make_model():
        return GovernanceTransformer(config.model, rngs=nnx.Rngs(config.train.seed))

    abstract_model = nnx.eval_shape(make_model)
    graphdef, abs_state = nnx.split(abstract_model, nnx.Param)
    abs_params = nnx.to_pure_dict(abs_state)
    logical = nnx.to_pure_dict(nnx.get_partition_spec(abs_state))
    pspecs = sharding.param_specs(abs_params, logical, config.sharding.rules, mesh)
    tx, schedule = make_optimizer(config, logical)

    import optax

    abs_opt = jax.eval_shape(tx.init, abs_params)
    ospecs = optax.tree_utils.tree_map_params(
        tx, lambda _, spec: spec, abs_opt, pspecs,
        transform_non_params=lambda _: jax.sharding.PartitionSpec(),
        is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    rep = jax.sharding.PartitionSpec()
    specs = {"step": rep, "params": pspecs, "opt_state": ospecs, "nonfinite_count": rep, "first_nonfinite_step": rep}
    shardings = sharding.to_named(specs, mesh)
    abs_full = {
        "step": jax.ShapeDtypeStruct((), jnp.int32),
        "params": abs_params,
        "opt_state": abs_opt,
        "nonfinite_count": jax.ShapeDtypeStruct((), jnp.int32),
        "first_nonfinite_step": jax.ShapeDtypeStruct((), jnp.int32),
    }
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abs_full, shardings)

    def init_fn():
        params = nnx.to_pure_dict(nnx.split(make_model(), nnx.Param)[1])
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
                "nonfinite_count": jnp.zeros((), jnp.int32), "first_nonfinite_step": jnp.full((), -1, jnp.int32)}

    return abstract, shardings, graphdef, tx, schedule, init_fn


def abstract_batch(config, mesh):
    import jax
    import numpy as np

    from promethios_jax import sharding
    from promethios_jax.data import schema

    b, length, s = config.train.global_batch_size, config.model.max_seq_len, config.data.max_segments_per_row
    shapes = {
        "tokens": ((b, length), np.int32), "targets": ((b, length), np.int32),
        "loss_mask": ((b, length), np.float32), "segment_ids": ((b, length), np.int32),
        "positions": ((b, length), np.int32), "telemetry": ((b, length, schema.TELEMETRY_DIM), np.float32),
        "head_positions": ((b, s), np.int32), "head_mask": ((b, s), np.float32),
        "hitl": ((b, s), np.int32), "decision": ((b, s), np.int32), "confidence": ((b, s), np.int32),
        "tool": ((b, s), np.int32), "conflict": ((b, s), np.int32),
        "uncertainty": ((b, s, len(schema.UNCERTAINTY_DIMS)), np.float32),
        "bias": ((b, s, len(schema.BIAS_CATEGORIES)), np.float32),
    }
    return {k: jax.ShapeDtypeStruct(shape, dt, sharding=jax.sharding.NamedSharding(mesh, sharding.batch_spec(len(shape))))
            for k, (shape, dt) in shapes.items()}


def compile_step(config, mesh):
    import jax

    abstract, shardings, graphdef, tx, schedule, init_fn = abstract_train_state(config, mesh)
    step_fn = make_train_step(config, graphdef, tx, schedule, mesh)
    batch_abs = abstract_batch(config, mesh)
    batch_sh = jax.tree.map(lambda a: a.sharding, batch_abs)
    jitted = jax.jit(step_fn, in_shardings=(shardings, batch_sh), out_shardings=(shardings, None), donate_argnums=(0,))
    return jitted, abstract, shardings, init_fn, batch_abs


def param_count(abstract) -> int:
    import jax

    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(abstract["params"])))


def model_flops_per_step(config) -> float:
    from promethios_jax import flops

    tokens = config.train.global_batch_size * config.model.max_seq_len
    return flops.model_flops_per_token(config.model, config.model.max_seq_len) * tokens


def dry_run(config, mesh) -> dict:
    t0 = time.time()
    jitted, abstract, _, _, batch_abs = compile_step(config, mesh)
    compiled = jitted.lower(abstract, batch_abs).compile()
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    nbytes = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
              - mem.alias_size_in_bytes) if mem is not None else None
    report = {
        "params": param_count(abstract),
        "bytes_per_device": int(nbytes) if nbytes is not None else None,
        "gib_per_device": round(nbytes / 2**30, 3) if nbytes is not None else None,
        "argument_bytes": int(mem.argument_size_in_bytes) if mem else None,
        "output_bytes": int(mem.output_size_in_bytes) if mem else None,
        "temp_bytes": int(mem.temp_size_in_bytes) if mem else None,
        "alias_bytes": int(mem.alias_size_in_bytes) if mem else None,
        # XLA's cost analysis counts a while-loop body once (layer scan, accumulation
        # scan), so the per-step figure comes from the model's FLOP formula.
        "flops_per_device_step": model_flops_per_step(config) / mesh.size,
        "xla_cost_analysis_flops": float(cost.get("flops", float("nan"))) if cost else None,
        "tokens_per_step": config.train.global_batch_size * config.model.max_seq_len,
        "mesh": dict(mesh.shape),
        "compile_s": round(time.time() - t0, 1),
    }
    return report


# ---------------------------------------------------------------------------------------
# The loop


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


def train(config, workdir: str, stop_after: int | None = None) -> dict:
    """Runs (or resumes) training; returns the last logged metrics."""
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    from promethios_jax import checkpoint as ckpt
    from promethios_jax import metrics as metrics_lib
    from promethios_jax import profiling, sharding
    from promethios_jax.data import pipeline

    wd = check_workdir(workdir)
    config_lib.validate(config, jax.device_count(), jax.process_count())
    mesh = sharding.make_mesh(config)
    primary = jax.process_index() == 0
    data_dir = prepare_data(config, wd)

    jitted, abstract, shardings, init_fn, _ = compile_step(config, mesh)
    n_params = param_count(abstract)
    manager = ckpt.make_manager(wd, config.checkpoint)
    restored = ckpt.restore_latest(manager, abstract)
    if restored is None:
        state = jax.jit(init_fn, out_shardings=shardings)()
        start_batch = 0
        print(f"initialised {n_params:,} parameters on mesh {dict(mesh.shape)}", flush=True)
    else:
        state, it_state, step = restored
        start_batch = ckpt.resume_position(it_state, config, step)
        print(f"resumed from step {step} (data position: batch {start_batch}) on mesh {dict(mesh.shape)}", flush=True)
    step = int(jax.device_get(state["step"]))
    done_marker = wd / "TRAINING_DONE"
    if primary and step < config.train.steps and done_marker.exists():
        done_marker.unlink()  # a resumed run with more steps: eval --watch must keep waiting

    writer = metrics_lib.MetricsWriter(str(wd), enabled=primary)
    if step == 0:
        writer.write_config(config, n_params)

    loader = pipeline.make_train_iterator(config, str(data_dir), jax.process_index(), jax.process_count(),
                                          start_batch=start_batch)
    stop = _StopFlag()
    old_handlers = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    total_steps = config.train.steps if stop_after is None else min(config.train.steps, stop_after)
    tracker = metrics_lib.tracker_from_config(config, jax.device_count(), start_step=step)
    progress = metrics_lib.ProgressLine(config.train.steps, enabled=primary)
    profiler = profiling.Profiler.from_config(str(wd), config.profile, enabled=primary)
    last = {}
    first_step = step

    # NaN policy. The step never applies a non-finite update (both policies) and counts
    # it in state["nonfinite_count"]; the host reads the count at log steps and saves.
    nonfinite = {"start": int(jax.device_get(state["nonfinite_count"])), "checked_step": step}
    nonfinite["seen"] = nonfinite["start"]

    def check_nonfinite(step_now: int) -> int:
        """The count of skipped updates; under nan_policy "stop", TrainError once it grows."""
        count = int(jax.device_get(state["nonfinite_count"]))
        new, since = count - nonfinite["seen"], nonfinite["checked_step"]
        nonfinite.update(seen=count, checked_step=step_now)
        if new <= 0:
            return count
        if nonfinite["start"] == 0 and config.train.nan_policy == "stop":
            where = f"step {int(jax.device_get(state['first_nonfinite_step']))}"
        else:
            where = f"step {step_now}" if since + 1 == step_now else f"{new} step(s) in {since + 1}..{step_now}"
        if config.train.nan_policy == "stop":
            manager.wait_until_finished()
            good = manager.latest_step()
            kept = (f"the last good checkpoint, step {good}, is kept in {ckpt.checkpoint_dir(wd)}"
                    if good is not None else "no checkpoint had been saved yet")
            raise TrainError(f"non-finite loss or gradient at {where}; stopping (config.train.nan_policy='stop'). "
                             f"Nothing after it was saved; {kept}. Set config.train.nan_policy='skip' to skip "
                             "such updates instead")
        if primary:
            print(f"WARNING: non-finite loss or gradient at {where}: update skipped "
                  f"({count} skipped in all, train/nonfinite_skipped)", file=sys.stderr, flush=True)
        return count

    def save(step_now: int):
        check_nonfinite(step_now)  # under "stop", never save a state past a non-finite step
        with tracker.checkpoint():
            ckpt.save(manager, step_now, state, ckpt.data_iter_state(loader, config), config, force=True)

    try:
        while step < total_steps:
            profiler.step(step, wait_for=state)
            with tracker.data_wait():
                batch = sharding.host_local_to_global(next(loader), mesh)
            with profiling.annotate(step):
                state, m = jitted(state, batch)
            step += 1
            if step == first_step + 1:
                # Leave the compile out of the throughput figures.
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
                check_nonfinite(step)  # after the write, so the bad step's row is in the logs
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
        ckpt.mark_done(wd, step)
    if stop.signal is None:
        print(f"finished at step {step}; checkpoints in {wd / 'checkpoints'}", flush=True)
    else:
        print(f"stopped by {signal.Signals(stop.signal).name} at step {step}; saved and committed "
              f"{wd / 'checkpoints' / str(step)}", flush=True)
    return last


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Orbax logs every save at INFO through absl; the progress line is the user's view.
    absl_logging.set_verbosity(absl_logging.WARNING)
    try:
        init_distributed()
        import jax

        from promethios_jax import sharding

        config = _CONFIG.value
        if _TARGET.value:
            if not _DRY_RUN.value:
                raise TrainError("--target compiles for a GPU on this host: use it with --dry_run")
            try:
                gpu_aot.dry_run(config, config_flags.get_config_filename(flags.FLAGS["config"]), _TARGET.value,
                                _TOPOLOGY.value, train=sys.modules[__name__])
            except gpu_aot.GpuAotError as e:
                raise TrainError(str(e)) from e
            return 0
        if _DRY_RUN.value:
            config_lib.validate(config, jax.device_count(), jax.process_count())
            if config.model.attention_impl == "cudnn" and jax.default_backend() != "gpu":
                # cuDNN cannot compile here; the XLA path materialises the scores, so its
                # figure is an upper bound on what the cuDNN path needs.
                print("note: attention_impl='cudnn' needs a GPU; compiling with 'xla' instead "
                      "(an upper bound on attention memory)")
                config.model.attention_impl = "xla"
            mesh = sharding.make_mesh(config)
            report = dry_run(config, mesh)
            print(f"model params: {report['params']:,}; mesh {report['mesh']}; "
                  f"per-device memory {report['gib_per_device']} GiB; "
                  f"{report['flops_per_device_step']:.3e} FLOPs per device per step")
            print(json.dumps(report))
            return 0
        train(config, _WORKDIR.value)
    except (TrainError, config_lib.ConfigError, *_checkpoint_error()) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    return 0


def _checkpoint_error():
    from promethios_jax.checkpoint import CheckpointError
    from promethios_jax.data.pipeline import DataError

    return (CheckpointError, DataError)


def run():
    app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
    run()
