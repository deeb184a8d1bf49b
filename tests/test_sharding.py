"""The rules table decides every parameter's PartitionSpec; the mesh refuses what cannot fit;
the 8B config fits an H100 by ahead-of-time compile."""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from promethios_jax import sharding
from promethios_jax.data import batch as batch_lib
from promethios_jax.config import ConfigError, base_config, resolve_mesh_shape
from promethios_jax.model import GovernanceTransformer

REPO = Path(__file__).resolve().parent.parent


def _specs(config):
    mesh = sharding.make_mesh(config)
    model = nnx.eval_shape(lambda: GovernanceTransformer(config.model, rngs=nnx.Rngs(0)))
    _, state = nnx.split(model, nnx.Param)
    abstract = nnx.to_pure_dict(state)
    logical = nnx.to_pure_dict(nnx.get_partition_spec(state))
    return sharding.param_specs(abstract, logical, config.sharding.rules, mesh), logical


def _cfg(data, fsdp, tensor):
    c = base_config()
    c.model.update(d_model=128, n_heads=4, n_kv_heads=2, d_ff=256, vocab_size=512)
    c.mesh.update(data=data, fsdp=fsdp, tensor=tensor)
    return c


def test_each_parameter_kind_follows_the_rules_table():
    specs, logical = _specs(_cfg(2, 2, 2))
    attn = specs["layers_0"]["self_attn"]
    # layers -> None, embed -> fsdp, heads/kv_heads/mlp/vocab -> tensor, head_dim -> None.
    assert logical["layers_0"]["self_attn"]["q_proj"]["kernel"] == P("layers", "embed", "heads", "head_dim")
    assert attn["q_proj"]["kernel"] == P(None, "fsdp", "tensor", None)
    assert attn["k_proj"]["kernel"] == P(None, "fsdp", "tensor", None)
    assert attn["v_proj"]["kernel"] == P(None, "fsdp", "tensor", None)
    assert attn["o_proj"]["kernel"] == P(None, "tensor", None, "fsdp")
    mlp = specs["layers_0"]["mlp"]
    assert mlp["gate_proj"]["kernel"] == P(None, "fsdp", "tensor")
    assert mlp["up_proj"]["kernel"] == P(None, "fsdp", "tensor")
    assert mlp["down_proj"]["kernel"] == P(None, "tensor", "fsdp")
    assert specs["layers_0"]["input_layernorm"]["scale"] == P(None, "fsdp")
    assert specs["embed_tokens"]["embedding"] == P("tensor", "fsdp")
    assert specs["lm_head"]["kernel"] == P("fsdp", "tensor")
    assert specs["norm"]["scale"] == P("fsdp")


def test_overridden_rules_move_parameters():
    c = _cfg(1, 4, 2)
    c.sharding.rules = tuple((name, None) if name == "mlp" else (name, axes) for name, axes in c.sharding.rules)
    specs, _ = _specs(c)
    assert specs["layers_0"]["mlp"]["gate_proj"]["kernel"] == P(None, "fsdp", None)
    assert specs["layers_0"]["self_attn"]["q_proj"]["kernel"] == P(None, "fsdp", "tensor", None)


def test_single_device_axes_and_indivisible_dims_stay_replicated():
    rules = base_config().sharding.rules
    mesh = jax.make_mesh((8, 1, 1), ("data", "fsdp", "tensor"),
                         axis_types=(jax.sharding.AxisType.Auto,) * 3)
    assert sharding.logical_to_mesh(("embed", "mlp"), rules, (64, 96), mesh) == P(None, None)
    mesh = jax.make_mesh((1, 8, 1), ("data", "fsdp", "tensor"),
                         axis_types=(jax.sharding.AxisType.Auto,) * 3)
    assert sharding.logical_to_mesh(("embed", "mlp"), rules, (64, 96), mesh) == P("fsdp", None)
    assert sharding.logical_to_mesh(("embed",), rules, (30,), mesh) == P(None)  # 30 % 8 != 0
    with pytest.raises(KeyError, match="no entry"):
        sharding.logical_to_mesh(("nonsense",), rules, (8,), mesh)


def test_mesh_shapes_resolve_or_are_refused():
    c = base_config()
    c.mesh.update(data=-1, fsdp=2, tensor=2)
    assert resolve_mesh_shape(c.mesh, 8) == (2, 2, 2)
    c.mesh.update(data=-1, fsdp=3, tensor=1)
    with pytest.raises(ConfigError, match="do not divide"):
        resolve_mesh_shape(c.mesh, 8)
    c.mesh.update(data=-1, fsdp=-1, tensor=1)
    with pytest.raises(ConfigError, match="at most one axis"):
        resolve_mesh_shape(c.mesh, 8)


def test_batch_is_sharded_over_data_and_fsdp():
    c = _cfg(2, 2, 2)
    c.train.global_batch_size = 8
    c.model.max_seq_len = 16
    mesh = sharding.make_mesh(c)
    shardings = batch_lib.shardings(c, mesh)
    x = sharding.host_local_to_global({"tokens": np.zeros((8, 16), np.int32)}, shardings)["tokens"]
    assert x.sharding.spec == P(("data", "fsdp"), None)
    assert len({str(s.index) for s in x.addressable_shards}) == 4  # tensor replicas share rows


def test_batch_and_micro_batch_shardings_follow_the_rules_table():
    c = _cfg(2, 2, 2)
    c.train.global_batch_size = 16
    mesh = sharding.make_mesh(c)
    rules = dict(c.sharding.rules)
    assert batch_lib.shardings(c, mesh)["telemetry"].spec == P(("data", "fsdp"), None, None)
    assert batch_lib.micro_shardings(c, mesh, 2)["tokens"].spec == P(None, ("data", "fsdp"), None)
    rules["batch"] = "data"
    rules["length"] = "fsdp"  # e.g. sequence sharding
    c.sharding.rules = tuple(rules.items())
    sh = batch_lib.shardings(c, mesh)
    assert sh["tokens"].spec == P("data", "fsdp")
    assert sh["hitl"].spec == P("data", None)  # example slots have no logical axis
    assert batch_lib.micro_shardings(c, mesh, 2)["telemetry"].spec == P(None, "data", "fsdp", None)


def _dry_run(*args, timeout=900):
    env = dict(os.environ)
    r = subprocess.run([sys.executable, "-m", "promethios_jax.train", "--dry_run", *args], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_dry_run_reports_memory_and_flops_without_allocating():
    report = _dry_run("--config=configs/tiny.py", "--config.mesh.data=2", "--config.mesh.fsdp=2",
                      "--config.mesh.tensor=2")
    for key in ("params", "bytes_per_device", "flops_per_device_step", "tokens_per_step"):
        assert report[key] and report[key] > 0, key
    assert report["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}


@pytest.mark.slow
def test_8b_fits_an_h100_by_aot_compile():
    report = _dry_run("--config=configs/8b.py")
    assert abs(report["params"] - 8e9) <= 0.05 * 8e9
    assert report["bytes_per_device"] <= 72 * 2**30, report
    assert report["tokens_per_step"] == 256 * 2048
