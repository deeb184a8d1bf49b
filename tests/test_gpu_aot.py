"""Compiling for H100/H200 targets with XLA's GPU compiler on this CPU host (promethios_jax/gpu_aot.py).

Tests marked gpu_aot need the CUDA plugin (`pip install -e ".[gpu-aot]"`) and are skipped
without it; the rest check the pieces that need no plugin, and that the dry run says what
to install when the plugin is missing.
"""
import importlib.util
import os
import subprocess
import sys

import pytest

from promethios_jax import gpu_aot
from promethios_jax.config import load_config_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_PLUGIN = importlib.util.find_spec("jax_cuda12_plugin") is not None
requires_plugin = pytest.mark.skipif(not HAVE_PLUGIN, reason="CUDA plugin not installed (gpu-aot extra)")


def small_config(mesh):
    """configs/tiny.py with 8 KV heads (a tensor axis of 8 must divide them), cuDNN, bf16."""
    c = load_config_file(os.path.join(ROOT, "configs", "tiny.py"))
    c.model.d_model, c.model.n_heads, c.model.n_kv_heads = 128, 8, 8
    c.model.attention_impl, c.model.compute_dtype = "cudnn", "bfloat16"
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
    return c


def dry_run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "promethios_jax.train", "--config=configs/tiny.py", "--dry_run", *args],
                          cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu", **(env or {})))


def test_packaged_targets_describe_h100_and_h200():
    h100 = gpu_aot.target_info(gpu_aot.importlib.resources.files("promethios_jax").joinpath(
        "targets", "h100_sxm.txtpb").read_text())
    h200 = gpu_aot.target_info(gpu_aot.importlib.resources.files("promethios_jax").joinpath(
        "targets", "h200_sxm.txtpb").read_text())
    assert h100 == {"name": "NVIDIA H100 80GB HBM3", "hbm_bytes": 84942979072, "compute_capability": (9, 0)}
    assert h200 == {"name": "NVIDIA H200", "hbm_bytes": 141_000_000_000, "compute_capability": (9, 0)}


def test_topology_and_flags_are_checked_before_any_compile():
    assert gpu_aot.parse_topology("1x4x8") == (1, 4, 8)
    for bad in ("8", "1x8", "1x0x8", "axbxc"):
        with pytest.raises(gpu_aot.GpuAotError, match="SLICESxHOSTSxGPUS"):
            gpu_aot.parse_topology(bad)
    assert gpu_aot.parse_xla_flags("--a=true --b=False --c=12 --d=") == {"a": True, "b": False, "c": "12", "d": ""}
    with pytest.raises(gpu_aot.GpuAotError, match="--name=value"):
        gpu_aot.parse_xla_flags("--xla_gpu_enable_triton_gemm")
    with pytest.raises(gpu_aot.GpuAotError, match="target"):
        gpu_aot.target_text("a100")


def test_fit_check_names_config_figure_and_limit():
    report = {"bytes_per_device": 75 * 2**30, "hbm_bytes": 80 * 2**30, "hbm_gib": 80.0, "device": "NVIDIA H100",
              "topology": "1x1x8", "mesh": {"data": 1, "fsdp": 8, "tensor": 1}}
    gpu_aot.check_fits(dict(report), "configs/8b.py", fraction=1.0)
    with pytest.raises(gpu_aot.GpuAotError, match=r"configs/8b.py does not fit.*75.00 GiB.*limit 72.00 GiB"):
        gpu_aot.check_fits(dict(report), "configs/8b.py", fraction=0.9)


@pytest.mark.skipif(HAVE_PLUGIN, reason="checks the message shown without the CUDA plugin")
def test_dry_run_without_plugin_says_what_to_install():
    proc = dry_run_cli("--target=h100", "--topology=1x1x8")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "gpu-aot" in proc.stderr and "jax[cuda12]==" in proc.stderr


@pytest.mark.parametrize("mesh,q_shape,kv_shape", [
    ((1, -1, 1), "bf16[2,256,8,16]", "bf16[2,256,8,16]"),  # fsdp=8: the batch split 8 ways
    ((1, 1, -1), "bf16[16,256,1,16]", "bf16[16,256,1,16]"),  # tensor=8: the heads split 8 ways
], ids=["fsdp", "tensor"])
@pytest.mark.gpu_aot
@requires_plugin
def test_cudnn_train_step_compiles_for_8_h100(mesh, q_shape, kv_shape):
    from jax._src.cudnn import fused_attention_stablehlo as fa

    probe = fa.check_compute_capability
    report = gpu_aot.compile_for_target(small_config(mesh), "h100", "1x1x8")
    assert fa.check_compute_capability is probe  # the target's probe is undone after the compile
    gpu_aot.check_fits(report, "small")
    assert report["device"] == "NVIDIA H100 80GB HBM3" and 0 < report["bytes_per_device"] < report["limit_bytes"]
    fwd = [c for c in report["attention_calls"] if c.startswith("__cudnn$fmhaSoftmax(")]
    bwd = [c for c in report["attention_calls"] if c.startswith("__cudnn$fmhaSoftmaxBackward(")]
    assert fwd and bwd, report["attention_calls"]
    # Per-device q, k, v, then packed rows as segment lengths [B, M] and offsets [B, M+1]
    # (8 segments per row + padding), not a [B, 1, L, L] mask.
    b = q_shape.split("[")[1].split(",")[0]
    assert fwd[0] == f"__cudnn$fmhaSoftmax({q_shape}, {kv_shape}, {kv_shape}, s32[{b},9], s32[{b},9], s32[{b},10], s32[{b},10])"


@pytest.mark.gpu_aot
@requires_plugin
@pytest.mark.parametrize("topology", ["1x1x8", "1x4x8"])
def test_launch_flags_compile_for_the_gpu_target_and_unknown_ones_fail(topology):
    flags = gpu_aot.default_flags(topology)
    options = gpu_aot.check_flags(flags, "h100", topology)
    assert options["xla_gpu_enable_latency_hiding_scheduler"] is True
    with pytest.raises(gpu_aot.GpuAotError, match="xla_gpu_no_such_flag"):
        gpu_aot.check_flags(flags + " --xla_gpu_no_such_flag=true", "h100", topology)
    with pytest.raises(gpu_aot.GpuAotError, match="xla_gpu_enable_triton_gemm"):
        gpu_aot.check_flags(flags + " --xla_gpu_enable_triton_gemm=maybe", "h100", topology)


@pytest.mark.gpu_aot
@requires_plugin
def test_dry_run_cli_reports_and_refuses_what_does_not_fit():
    ok = dry_run_cli("--target=h200", "--topology=1x2x8", "--config.train.global_batch_size=32")
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "NVIDIA H200" in ok.stdout and "GiB per device" in ok.stdout and "fmhaSoftmax" not in ok.stdout  # tiny: xla
    tight = dry_run_cli("--target=h100", "--topology=1x1x8", env={"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.00001"})
    assert tight.returncode == 2
    assert "configs/tiny.py does not fit NVIDIA H100" in tight.stderr and "GiB per device > limit" in tight.stderr


@pytest.mark.gpu_aot
@requires_plugin
def test_the_serving_step_compiles_for_h100_and_never_copies_the_cache():
    # The engine's decode step (32 slots, each at its own position) and a prefill, through
    # XLA's GPU pipeline: on a GPU mesh attention takes the einsum path, and the per-layer
    # cache buffers are updated in place (no copy of a cache-sized buffer).
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from promethios_jax.model import layers
    from promethios_jax.model.model import GovernanceTransformer
    from promethios_jax.model.spec import ModelSpec
    from promethios_jax.serve import engine as E

    devs = gpu_aot.target_devices("h100", "1x1x1")
    mesh = jax.sharding.Mesh(np.array(devs), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
    c = load_config_file(os.path.join(ROOT, "configs", "tiny.py"))
    c.model.compute_dtype = "bfloat16"
    spec = ModelSpec.from_config(c.model)
    abstract = nnx.eval_shape(lambda: GovernanceTransformer(spec, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    rep = NamedSharding(mesh, P())

    def sds(x):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep)

    leaves, treedef = jax.tree.flatten(state)
    static, params = E._Static(graphdef, treedef), [sds(p) for p in leaves]
    s, length = 32, spec.max_seq_len
    cache = jax.tree.map(sds, jax.eval_shape(lambda: abstract.init_cache(s, length)))
    slots = jax.tree.map(sds, E.init_slots(spec, s))
    telemetry = jax.ShapeDtypeStruct((spec.telemetry_dim,), jnp.float32, sharding=rep)
    with jax.set_mesh(mesh):  # nothing may run eagerly in here: the devices only compile
        assert layers._on_gpu()
        text = E._generate_step.lower(static, params, cache, slots).compile().as_text()
        scalar = {dt: jax.ShapeDtypeStruct((), dt, sharding=rep) for dt in (jnp.int32, jnp.uint32, jnp.float32)}
        E._prefill_insert.lower(static, params, cache, slots, jax.ShapeDtypeStruct((1, 64), jnp.int32, sharding=rep),
                                scalar[jnp.int32], telemetry, scalar[jnp.int32],
                                scalar[jnp.uint32], scalar[jnp.float32], scalar[jnp.float32]).compile()
    for cache_shape in (f"[{s},{spec.n_kv_heads},{spec.hd},{length}]", f"[{s},{spec.n_kv_heads},{length},{spec.hd}]"):
        assert cache_shape in text  # keys, values
        assert not [ln for ln in text.splitlines() if " copy(" in ln and cache_shape in ln.split("=")[1].split("(")[0]]
