"""Compiles the train step for NVIDIA GPUs on a host without one: XLA's GPU compiler, no device.

    python -m promethios_jax.train --config=configs/8b.py --dry_run --target=h100 --topology=1x1x8
    python -m promethios_jax.gpu_aot flags --target=h100 --topology=1x2x8     # launch flags check
    python -m promethios_jax.gpu_aot max_batch --config=configs/1_3b.py --target=h100 --topology=1x1x1

With the CUDA plugin installed (the `gpu-aot` extra) and JAX_PLATFORMS=cpu,
`jax.experimental.topologies.get_topology_desc(platform="cuda", ...)` hands out compile-only
devices described by a packaged GpuTargetConfigProto (`targets/*.txtpb`). The step built by
`aot.compile_step` then goes through XLA's real GPU pipeline (SPMD partitioning, fusion,
scheduling, buffer assignment, PTX for sm_90a), and `memory_analysis()` gives bytes per device.

What compiling without a device does not prove: cuDNN graphs are neither built nor
validated (XLA builds them only with a device attached) and their workspaces count as 0
bytes; there is no autotuning (GEMM/fusion choices may differ on the machine);
`cost_analysis()` is None (the model FLOP formula stays the source); NCCL is not involved.
The figure is what XLA's buffer assignment needs; the runtime adds cuDNN/cuBLAS/NCCL
workspaces, which is why the fit check compares against the share of HBM that JAX may
allocate (XLA_PYTHON_CLIENT_MEM_FRACTION, 0.90 in launch/xla_gpu_flags.sh).
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import importlib.resources
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
from jax._src.cudnn import fused_attention_stablehlo as fa  # the compute-capability probes cuDNN asks
from jax._src.lib import cuda_versions
from jax.experimental import topologies
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from promethios_jax import aot, sharding
from promethios_jax import config as config_lib

TARGETS = {"h100": "h100_sxm.txtpb", "h200": "h200_sxm.txtpb"}
DEFAULT_MEM_FRACTION = 0.90  # launch/xla_gpu_flags.sh: h100_env
LAUNCH_FLAGS = Path(__file__).resolve().parent.parent / "launch" / "xla_gpu_flags.sh"


class GpuAotError(RuntimeError):
    """A GPU-target compile that cannot run, or a program that does not fit; the message says which."""


def install_hint() -> str:
    return (f'install the CUDA plugin at the project\'s jax version: pip install "promethios-jax[gpu-aot]" '
            f'(or pip install "jax[cuda12]=={jax.__version__}"), and run with JAX_PLATFORMS=cpu')


def require_plugin() -> None:
    if importlib.util.find_spec("jax_cuda12_plugin") is None:
        raise GpuAotError(f"compiling for a GPU target needs the CUDA plugin, which is not installed: {install_hint()}")


# ---------------------------------------------------------------------------------------
# Targets and topologies


def target_text(target: str) -> str:
    """The packaged GpuTargetConfigProto text, with the installed cuDNN's version."""
    if target not in TARGETS:
        raise GpuAotError(f"--target={target!r}: use one of {sorted(TARGETS)}")
    text = importlib.resources.files("promethios_jax").joinpath("targets", TARGETS[target]).read_text()
    if cuda_versions is not None:
        # XLA picks cuDNN features by this version: compile for the cuDNN that will run.
        v = int(cuda_versions.cudnn_get_version())
        major, minor, patch = v // 10000, v // 100 % 100, v % 100
        text = re.sub(r"dnn_version_info \{[^}]*\}",
                      f"dnn_version_info {{\n  major: {major}\n  minor: {minor}\n  patch: {patch}\n}}", text)
        text = re.sub(r'dnn_version: "[^"]*"', f'dnn_version: "{major}.{minor}.{patch}"', text)
    return text


def target_info(text: str) -> dict:
    """Name, HBM bytes and compute capability read from a target description."""
    def field(name, pattern=r"(\d+)"):
        m = re.search(rf"\b{name}: {pattern}", text)
        if m is None:
            raise GpuAotError(f"target description has no {name}")
        return m.group(1)

    cc = re.search(r"cuda_compute_capability \{([^}]*)\}", text)
    major = re.search(r"major: (\d+)", cc.group(1)) if cc else None
    minor = re.search(r"minor: (\d+)", cc.group(1)) if cc else None
    return {"name": field("device_description_str", r'"([^"]*)"'),
            "hbm_bytes": int(field("device_memory_size")),
            "compute_capability": (int(major.group(1)) if major else 0, int(minor.group(1)) if minor else 0)}


def parse_topology(topology: str) -> tuple[int, int, int]:
    """'SLICESxHOSTSxGPUS' (e.g. 1x1x8: one host of 8 GPUs; 1x4x8: four such hosts)."""
    parts = topology.split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise GpuAotError(f"--topology={topology!r}: use SLICESxHOSTSxGPUS_PER_HOST, e.g. 1x1x8 or 1x4x8")
    return tuple(int(p) for p in parts)


def target_devices(target: str, topology: str) -> list:
    """Compile-only devices for `topology` GPUs of kind `target`."""
    parse_topology(topology)
    require_plugin()
    platforms = jax.config.jax_platforms or ""
    if platforms and "cpu" not in platforms.split(","):
        raise GpuAotError(f"JAX_PLATFORMS={platforms!r}: run the GPU-target compile with JAX_PLATFORMS=cpu")
    return list(topologies.get_topology_desc(platform="cuda", topology=topology,
                                             target_config=target_text(target)).devices)


@contextlib.contextmanager
def target_compute_capability(cc: tuple[int, int]):
    """cuDNN attention asks the default backend (here: the CPU) for the GPU's compute
    capability, to pick head-dim limits and allow the packed layout (Hopper). For the
    length of a compile, the two probes in jax's fused_attention_stablehlo answer for
    the target instead; nothing else is patched, and the probes are restored after."""
    def as_tuple(capability: str):
        return tuple(int(x) for x in capability.split("."))

    saved = fa.check_compute_capability, fa.is_cuda_compute_capability_equal
    fa.check_compute_capability = lambda capability: cc >= as_tuple(capability)
    fa.is_cuda_compute_capability_equal = lambda capability: cc == as_tuple(capability)
    try:
        yield
    finally:
        fa.check_compute_capability, fa.is_cuda_compute_capability_equal = saved


# ---------------------------------------------------------------------------------------
# XLA flags


def parse_xla_flags(flags: str) -> dict:
    """'--name=value ...' → compiler options; true/false become bools (XLA refuses strings there)."""
    options = {}
    for token in shlex.split(flags):
        if not token.startswith("--") or "=" not in token:
            raise GpuAotError(f"XLA flag {token!r}: expected --name=value")
        name, value = token[2:].split("=", 1)
        options[name] = {"true": True, "false": False}.get(value.lower(), value)
    return options


def launch_flags(nodes: int, gpus_per_node: int, script: Path = LAUNCH_FLAGS) -> str:
    """The flags launch/xla_gpu_flags.sh exports for a run on nodes x gpus_per_node GPUs."""
    if not script.exists():
        raise GpuAotError(f"{script} not found (it ships with the repository, not the package)")
    out = subprocess.run(["bash", "-c", f'source "{script}" && h100_xla_flags {int(nodes)} {int(gpus_per_node)}'],
                         capture_output=True, text=True, check=False)
    if out.returncode:
        raise GpuAotError(f"{script}: h100_xla_flags failed: {out.stderr.strip()}")
    return out.stdout.strip()


def check_flags(flags: str, target: str = "h100", topology: str = "1x1x8") -> dict:
    """Compiles a small sharded program for the target with `flags` as compiler options.

    The GPU compiler refuses a flag it does not know ("No such compile option") or a
    value of the wrong type, so a bad flag fails here instead of on a cluster.
    """
    options = parse_xla_flags(flags)
    devices = target_devices(target, topology)
    mesh = jax.make_mesh((len(devices),), ("fsdp",), axis_types=(AxisType.Auto,), devices=devices)
    n = 256 * len(devices)

    def step(w, x):  # an FSDP-shaped step: all-gather the weight, reduce the gradient
        return jax.grad(lambda w: jnp.sum(jnp.tanh(x @ w) ** 2))(w)

    shard = NamedSharding(mesh, P("fsdp"))
    lowered = jax.jit(step, in_shardings=(shard, shard), out_shardings=shard).lower(
        jax.ShapeDtypeStruct((n, 512), jnp.bfloat16), jax.ShapeDtypeStruct((n, n), jnp.bfloat16))
    try:
        lowered.compile(compiler_options=options)
    except Exception as e:  # noqa: BLE001 - XLA's error names the flag
        raise GpuAotError(f"XLA's GPU compiler refuses the flags: {e}") from e
    return options


# ---------------------------------------------------------------------------------------
# The train step


def attention_calls(hlo_text: str) -> list[str]:
    """The distinct cuDNN attention calls in optimized HLO with their per-device operand shapes
    (q, k, v, then segment lengths/offsets when packed rows go in cuDNN's packed layout)."""
    calls = set()
    for line in hlo_text.splitlines():
        m = re.search(r'custom_call_target="(__cudnn\$fmha[^"]*)"', line)
        if m is None:
            continue
        operands = re.search(r"operand_layout_constraints=\{(.*?)\}(?:, [a-z_]+=|$)", line)
        shapes = re.findall(r"([a-z]+\d*\[[\d,]*\])\{", operands.group(1)) if operands else []
        calls.add(f"{m.group(1)}({', '.join(shapes)})")
    return sorted(calls)


def compile_for_target(config, target: str, topology: str, xla_flags: str | None = None) -> dict:
    """Compiles the project's train step for `topology` GPUs of kind `target`; returns a report.

    The step is `aot.compile_step`'s, the report `aot.dry_run_report`'s plus the target's
    fields; its bytes_per_device is XLA's buffer assignment (arguments + outputs +
    temporaries - donated aliases), compared with HBM x mem_fraction by `check_fits`.
    """
    slices, hosts, gpus = parse_topology(topology)
    devices = target_devices(target, topology)
    info = target_info(target_text(target))
    config_lib.validate(config, len(devices), slices * hosts, backend=devices[0].platform)
    mesh = sharding.make_mesh(config, devices)
    options = parse_xla_flags(xla_flags) if xla_flags else {}
    with target_compute_capability(info["compute_capability"]):
        compiled = aot.compile_step(config, mesh, compiler_options=options)
    t = config.train
    return {
        "target": target, "device": info["name"], "topology": topology, "processes": slices * hosts,
        "attention_impl": config.model.attention_impl,
        "global_batch_size": t.global_batch_size, "grad_accum_steps": t.grad_accum_steps,
        "per_device_micro_batch": t.global_batch_size // t.grad_accum_steps // (mesh.shape["data"] * mesh.shape["fsdp"]),
        "seq_len": config.model.max_seq_len,
        **aot.dry_run_report(config, mesh, compiled),
        "hbm_bytes": info["hbm_bytes"], "hbm_gib": round(info["hbm_bytes"] / 2**30, 2),
        "attention_calls": attention_calls(compiled.executable.as_text()),
        "xla_flags": sorted(options),
        "jax": jax.__version__,
    }


def mem_fraction() -> float:
    value = os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", str(DEFAULT_MEM_FRACTION))
    try:
        fraction = float(value)
    except ValueError:
        raise GpuAotError(f"XLA_PYTHON_CLIENT_MEM_FRACTION={value!r} is not a number") from None
    if not 0 < fraction <= 1:
        raise GpuAotError(f"XLA_PYTHON_CLIENT_MEM_FRACTION={value}: must be in (0, 1]")
    return fraction


def check_fits(report: dict, config_name: str, fraction: float | None = None) -> None:
    """Raises GpuAotError naming the config, the figure and the limit when it does not fit."""
    fraction = mem_fraction() if fraction is None else fraction
    limit = report["hbm_bytes"] * fraction
    report["limit_bytes"] = int(limit)
    if report["bytes_per_device"] > limit:
        raise GpuAotError(
            f"{config_name} does not fit {report['device']} ({report['topology']}, mesh {report['mesh']}): "
            f"{report['bytes_per_device'] / 2**30:.2f} GiB per device > limit {limit / 2**30:.2f} GiB "
            f"({fraction:.2f} of {report['hbm_gib']} GiB HBM); lower the batch per device "
            f"(config.train.global_batch_size / grad_accum_steps), use a stronger remat policy, or more GPUs")


def describe(report: dict) -> str:
    lines = [f"{report['device']} x {report['mesh']} ({report['topology']}, {report['processes']} process(es)), "
             f"attention {report['attention_impl']}: {report['gib_per_device']} GiB per device "
             f"of {report['hbm_gib']} GiB HBM (limit {report.get('limit_bytes', 0) / 2**30:.2f} GiB); "
             f"micro-batch {report['per_device_micro_batch']} x {report['seq_len']} per device"]
    lines += [f"  cuDNN attention per device: {c}" for c in report["attention_calls"]]
    lines.append("  compile-only: cuDNN graphs not built or validated (workspace counted as 0), "
                 "no autotuning, no cost analysis")
    return "\n".join(lines)


def default_flags(topology: str) -> str | None:
    """The launch recipes' flags for this topology, when the repository's launch/ is at hand."""
    if not LAUNCH_FLAGS.exists():
        return None
    slices, hosts, gpus = parse_topology(topology)
    return launch_flags(slices * hosts, gpus)


def dry_run(config, config_name: str, target: str, topology: str) -> dict:
    """`train --dry_run --target --topology`: compile with the launch flags, report, check the fit."""
    report = compile_for_target(config, target, topology, default_flags(topology))
    try:
        check_fits(report, config_name)
    finally:
        print(describe(report), flush=True)
        print(json.dumps(report), flush=True)
    return report


def max_batch(config, target: str, topology: str, limit: int = 256, xla_flags: str | None = None) -> dict:
    """The largest per-device micro-batch (doubling, then bisecting) that fits, keeping
    grad_accum_steps; returns {per_device_batch: report of that compile}."""
    slices, hosts, gpus = parse_topology(topology)
    devices = slices * hosts * gpus
    data_shards = devices // max(1, config.mesh.tensor)
    reports = {}

    def fits(per_device: int) -> bool:
        config.train.global_batch_size = per_device * data_shards * config.train.grad_accum_steps
        report = compile_for_target(config, target, topology, xla_flags)
        try:
            check_fits(report, "probe")
        except GpuAotError:
            ok = False
        else:
            ok = reports[per_device] = report
        print(f"  micro-batch {per_device} per device: {report['gib_per_device']} GiB "
              f"({'fits' if ok else 'does not fit'})", flush=True)
        return bool(ok)

    lo, hi = 0, 1
    while hi <= limit and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    if lo == 0:
        raise GpuAotError(f"not even one row per device fits {topology} x {target}")
    return {"per_device_batch": lo, "report": reports[lo]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m promethios_jax.gpu_aot", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    flags = sub.add_parser("flags", help="compile with launch/xla_gpu_flags.sh's flags (or --flags) for the target")
    flags.add_argument("--flags", default=None, help="flags to check instead of the launch script's")
    mb = sub.add_parser("max_batch", help="largest per-device micro-batch that fits")
    mb.add_argument("--config", required=True)
    mb.add_argument("--limit", type=int, default=256)
    mb.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, e.g. --set train.grad_accum_steps=1")
    for p in (flags, mb):
        p.add_argument("--target", default="h100", choices=sorted(TARGETS))
        p.add_argument("--topology", default="1x1x8")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "flags":
            flags_text = args.flags if args.flags is not None else default_flags(args.topology)
            if flags_text is None:
                raise GpuAotError(f"{LAUNCH_FLAGS} not found; pass --flags")
            options = check_flags(flags_text, args.target, args.topology)
            print(f"{len(options)} XLA flags compile for {args.target} {args.topology}: {' '.join(sorted(options))}")
        else:

            try:
                config = config_lib.load_config_file(args.config)
            except config_lib.ConfigError as e:
                raise GpuAotError(str(e)) from e
            for item in args.set:
                key, _, value = item.partition("=")
                *path, leaf = key.split(".")
                node = config
                for part in path:
                    node = node[part]
                try:
                    node[leaf] = ast.literal_eval(value)
                except (ValueError, SyntaxError):
                    node[leaf] = value  # a bare string
            out = max_batch(config, args.target, args.topology, args.limit, default_flags(args.topology))
            print(f"{args.config}: largest per-device micro-batch on {args.target} {args.topology}: "
                  f"{out['per_device_batch']} ({out['report']['gib_per_device']} GiB)")
            print(json.dumps(out["report"]))
    except GpuAotError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
