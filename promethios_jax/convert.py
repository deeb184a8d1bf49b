"""Hugging Face Llama interop: export our backbone as a HF Llama directory, import one as a workdir.

    python -m promethios_jax.convert export --workdir=DIR [--step=N] --out=HF_DIR [--max_shard_size=5GB]
    python -m promethios_jax.convert import --hf=HF_DIR --out=DIR [--config=configs/X.py] [--governance=auto|fresh]

The backbone is exactly `LlamaForCausalLM`, so its tensors map onto ours by a transpose
and a reshape (see `promethios_jax/model/layers.py`); the decoder layers live in stacks,
one per segment between anchor layers (`promethios_jax.model.layer_location`).

| Hugging Face (`[out, in]` for linears)          | ours (`nnx.split(model, nnx.Param)` pure dict)       |
|-------------------------------------------------|------------------------------------------------------|
| model.embed_tokens.weight [V, D]                | embed_tokens.embedding [V, D]                        |
| model.layers.i.input_layernorm.weight [D]       | layers_k.input_layernorm.scale[j] [D]                |
| model.layers.i.self_attn.q_proj.weight [H*hd, D]| layers_k.self_attn.q_proj.kernel[j] [D, H, hd]       |
| model.layers.i.self_attn.{k,v}_proj.weight      | layers_k.self_attn.{k,v}_proj.kernel[j] [D, KV, hd]  |
| model.layers.i.self_attn.o_proj.weight [D, H*hd]| layers_k.self_attn.o_proj.kernel[j] [H, hd, D]       |
| model.layers.i.post_attention_layernorm.weight  | layers_k.post_attention_layernorm.scale[j] [D]       |
| model.layers.i.mlp.{gate,up}_proj.weight [F, D] | layers_k.mlp.{gate,up}_proj.kernel[j] [D, F]         |
| model.layers.i.mlp.down_proj.weight [D, F]      | layers_k.mlp.down_proj.kernel[j] [F, D]              |
| model.norm.weight [D]                           | norm.scale [D]                                       |
| lm_head.weight [V, D] (absent when tied)        | lm_head.kernel [D, V] (absent when tied)             |

The governance parts (telemetry encoder, heads, loss weights) are not part of Llama:
export writes them to `governance.safetensors` beside the HF files (transformers ignores
it), and import reads them back from there when present and fitting (`--governance=auto`),
else initialises them fresh.

Neither direction needs torch: tensors are read by a small safetensors reader (any float
dtype, bf16 included, cast to float32) and written with `safetensors.numpy`.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import pprint
import re
import sys
from pathlib import Path

import numpy as np

HF_CONFIG = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
GOVERNANCE_FILE = "governance.safetensors"
PROMETHIOS_CONFIG = "promethios_config.json"
DEFAULT_MAX_SHARD = 5 * 10**9  # HF's classic "5GB"

# Top-level param-tree keys that make up the Llama backbone; everything else is governance.
_BACKBONE_ROOTS = re.compile(r"^(embed_tokens|norm|lm_head|layers_\d+)$")
# HF tensors that carry no weights (buffers some old checkpoints saved).
_IGNORABLE_HF = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")


class ConversionError(ValueError):
    """A HF directory or workdir that cannot be converted; the message names the tensor or key."""


# ---------------------------------------------------------------------------------------
# Reading safetensors (lazily, by memory map; bf16/f16 → float32 without torch)

_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def _st_dtype(code: str):
    if code in _ST_DTYPES:
        return np.dtype(_ST_DTYPES[code])
    if code == "BF16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    raise ConversionError(f"safetensors dtype {code} is not supported")


class _SafetensorsFile:
    """One .safetensors file: header parsed, data memory-mapped, tensors read on demand."""

    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        self.offset = 8 + n
        self.metadata = header.pop("__metadata__", None)
        self.header = header
        self._mm = None

    def shape(self, name) -> tuple:
        return tuple(self.header[name]["shape"])

    def get(self, name) -> np.ndarray:
        if self._mm is None:
            self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        info = self.header[name]
        start, end = info["data_offsets"]
        dtype = _st_dtype(info["dtype"])
        raw = self._mm[self.offset + start:self.offset + end]
        return raw.view(dtype).reshape(info["shape"])


class SafetensorsReader:
    """All tensors of a HF directory: `model.safetensors`, a sharded index, or any *.safetensors."""

    def __init__(self, hf_dir, exclude=(GOVERNANCE_FILE,)):
        hf_dir = Path(hf_dir)
        self.files: dict[str, _SafetensorsFile] = {}
        self.where: dict[str, str] = {}
        index = hf_dir / INDEX_FILE
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            for name, fname in weight_map.items():
                if fname not in self.files:
                    if not (hf_dir / fname).exists():
                        raise ConversionError(f"{index} maps {name} to {fname}, which does not exist")
                    self.files[fname] = _SafetensorsFile(hf_dir / fname)
                if name not in self.files[fname].header:
                    raise ConversionError(f"{index} maps {name} to {fname}, which does not hold it")
                self.where[name] = fname
        else:
            paths = [hf_dir / SINGLE_FILE] if (hf_dir / SINGLE_FILE).exists() else sorted(
                p for p in hf_dir.glob("*.safetensors") if p.name not in exclude)
            if not paths:
                raise ConversionError(
                    f"{hf_dir} holds no {SINGLE_FILE}, {INDEX_FILE} or other *.safetensors "
                    "(PyTorch .bin checkpoints are not read: re-save with save_pretrained(safe_serialization=True))")
            for p in paths:
                f = _SafetensorsFile(p)
                self.files[p.name] = f
                for name in f.header:
                    self.where[name] = p.name

    def __contains__(self, name) -> bool:
        return name in self.where

    def keys(self):
        return list(self.where)

    def shape(self, name) -> tuple:
        return self.files[self.where[name]].shape(name)

    def get(self, name, dtype=np.float32) -> np.ndarray:
        return np.asarray(self.files[self.where[name]].get(name), dtype=dtype)


# ---------------------------------------------------------------------------------------
# Configs: HF config.json <-> config.model


def _rope_from_hf(hf: dict) -> tuple[float, dict]:
    """(theta, our rope-scaling keys) from a HF config (v5 `rope_parameters` or v4 `rope_theta`/`rope_scaling`)."""
    params = hf.get("rope_parameters")
    if isinstance(params, dict) and params and "rope_type" not in params and "rope_theta" not in params:
        raise ConversionError(f"config.json rope_parameters {params} is per layer type; Llama has one RoPE")
    params = dict(params or {})
    scaling = hf.get("rope_scaling") or {}
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    merged = {**scaling, **params}
    rope_type = merged.get("rope_type", merged.get("type", "default")) or "default"
    if rope_type == "default":
        return float(theta), {"rope_scaling_type": ""}
    if rope_type == "linear":
        return float(theta), {"rope_scaling_type": "linear", "rope_scaling_factor": float(merged["factor"])}
    if rope_type == "llama3":
        return float(theta), {
            "rope_scaling_type": "llama3",
            "rope_scaling_factor": float(merged["factor"]),
            "rope_low_freq_factor": float(merged.get("low_freq_factor", 1.0)),
            "rope_high_freq_factor": float(merged.get("high_freq_factor", 4.0)),
            "rope_original_max_len": int(merged.get("original_max_position_embeddings", 8192)),
        }
    raise ConversionError(f"config.json RoPE type {rope_type!r} is not supported (default, linear and llama3 are)")


def model_keys_from_hf(hf: dict) -> dict:
    """config.model keys for a HF Llama config.json; refuses what the backbone cannot express."""
    archs = hf.get("architectures") or []
    if hf.get("model_type", "llama") != "llama" and "LlamaForCausalLM" not in archs:
        raise ConversionError(f"config.json model_type={hf.get('model_type')!r}: only Llama checkpoints convert")
    for key, want in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
        if key in hf and hf[key] != want:
            raise ConversionError(f"config.json {key}={hf[key]!r}: the Llama backbone needs {want!r}")
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        if key not in hf:
            raise ConversionError(f"config.json lacks {key}")
    d, h = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    hd = int(hf.get("head_dim") or d // h)
    theta, rope = _rope_from_hf(hf)
    return {
        "vocab_size": int(hf["vocab_size"]),
        "d_model": d,
        "n_layers": int(hf["num_hidden_layers"]),
        "n_heads": h,
        "n_kv_heads": int(hf.get("num_key_value_heads") or h),
        "head_dim": 0 if hd * h == d else hd,
        "d_ff": int(hf["intermediate_size"]),
        "rope_theta": theta,
        "norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
        "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
        "max_seq_len": int(hf.get("max_position_embeddings", 2048)),
        **rope,
    }


def hf_config_from_model(model_cfg, tokenizer_ids: dict | None = None) -> dict:
    """A LlamaConfig-compatible config.json for our backbone (v4 and v5 keys both written)."""
    from promethios_jax.model import ModelSpec

    s = ModelSpec.from_config(model_cfg)
    rope_params = {"rope_type": "default", "rope_theta": float(s.rope_theta)}
    rope_scaling = None
    if s.rope_scaling_type == "linear":
        rope_scaling = {"rope_type": "linear", "factor": float(s.rope_scaling_factor)}
    elif s.rope_scaling_type == "llama3":
        rope_scaling = {"rope_type": "llama3", "factor": float(s.rope_scaling_factor),
                        "low_freq_factor": float(s.rope_low_freq_factor),
                        "high_freq_factor": float(s.rope_high_freq_factor),
                        "original_max_position_embeddings": int(s.rope_original_max_len)}
    if rope_scaling:
        rope_params.update(rope_scaling)
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": s.vocab_size,
        "hidden_size": s.d_model,
        "intermediate_size": s.d_ff,
        "num_hidden_layers": s.n_layers,
        "num_attention_heads": s.n_heads,
        "num_key_value_heads": s.n_kv_heads,
        "head_dim": s.hd,
        "hidden_act": "silu",
        "max_position_embeddings": s.max_seq_len,
        "rms_norm_eps": float(s.norm_eps),
        "rope_theta": float(s.rope_theta),
        "rope_scaling": rope_scaling,
        "rope_parameters": rope_params,
        "tie_word_embeddings": bool(s.tie_embeddings),
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": float(s.init_std),
        "pretraining_tp": 1,
        "use_cache": True,
        "torch_dtype": "float32",
        "dtype": "float32",
    }
    cfg.update(tokenizer_ids or {})
    return cfg


def default_layer_ranges(n_layers: int) -> dict:
    """The seeds' placement (anchors 8/16/24, uncertainty 18-24, tool 20-24 of 24 layers) scaled to a depth."""
    n = n_layers
    anchors = sorted({min(n, max(1, round(n * k / 3))) for k in (1, 2, 3)})
    return {
        "anchor_layers": anchors,
        "uncertainty_layers": [min(n, max(1, round(n * 18 / 24))), n],
        "tool_layers": [min(n, max(1, round(n * 20 / 24))), n],
    }


def _ranges_valid(model_cfg, n_layers: int) -> bool:
    try:
        if not list(model_cfg.anchor_layers) or any(not 1 <= int(a) <= n_layers for a in model_cfg.anchor_layers):
            return False
        for key in ("uncertainty_layers", "tool_layers"):
            lo, hi = (int(x) for x in model_cfg[key])
            if not 1 <= lo <= hi <= n_layers:
                return False
        return True
    except (KeyError, TypeError, ValueError):
        return False


def load_config_file(path: str):
    """get_config() of a config file; `file.py:arg` passes arg, as ml_collections' config flags do."""
    arg = None
    if ":" in path and not Path(path).exists():
        path, arg = path.split(":", 1)
    p = Path(path)
    if not p.exists():
        raise ConversionError(f"--config {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"_promethios_config_{p.stem}", p)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg is not None else module.get_config()


def _merge_json_config(data: dict):
    """base_config() updated with a saved (JSON) config, so keys added since still get defaults."""
    import ml_collections

    from promethios_jax.config import base_config

    config = base_config()

    def update(node, values):
        for k, v in values.items():
            if k in node and isinstance(node[k], ml_collections.ConfigDict) and isinstance(v, dict):
                update(node[k], v)
            elif isinstance(v, dict):
                node[k] = ml_collections.ConfigDict(v)
            else:
                node[k] = v

    update(config, data)
    return config


# ---------------------------------------------------------------------------------------
# The tensor map


@dataclasses.dataclass(frozen=True)
class TensorMap:
    hf_name: str
    hf_shape: tuple
    path: tuple  # key path in our params pure dict
    index: int | None  # position in the layer stack, None for unstacked params
    transpose: bool  # linears: ours = hf.T.reshape(ours); hf = ours.reshape(hf[::-1]).T


def tensor_map(model_cfg) -> list[TensorMap]:
    """Every backbone tensor: HF name and shape ↔ our path, stack index and layout."""
    from promethios_jax.model import ModelSpec, layer_location

    s = ModelSpec.from_config(model_cfg)
    d, f, v, hq, hkv = s.d_model, s.d_ff, s.vocab_size, s.n_heads * s.hd, s.n_kv_heads * s.hd
    out = [TensorMap("model.embed_tokens.weight", (v, d), ("embed_tokens", "embedding"), None, False)]
    per_layer = (
        ("input_layernorm.weight", (d,), ("input_layernorm", "scale"), False),
        ("self_attn.q_proj.weight", (hq, d), ("self_attn", "q_proj", "kernel"), True),
        ("self_attn.k_proj.weight", (hkv, d), ("self_attn", "k_proj", "kernel"), True),
        ("self_attn.v_proj.weight", (hkv, d), ("self_attn", "v_proj", "kernel"), True),
        ("self_attn.o_proj.weight", (d, hq), ("self_attn", "o_proj", "kernel"), True),
        ("post_attention_layernorm.weight", (d,), ("post_attention_layernorm", "scale"), False),
        ("mlp.gate_proj.weight", (f, d), ("mlp", "gate_proj", "kernel"), True),
        ("mlp.up_proj.weight", (f, d), ("mlp", "up_proj", "kernel"), True),
        ("mlp.down_proj.weight", (d, f), ("mlp", "down_proj", "kernel"), True),
    )
    for i in range(s.n_layers):
        seg, j = layer_location(model_cfg, i)
        for name, shape, sub, tr in per_layer:
            out.append(TensorMap(f"model.layers.{i}.{name}", shape, (seg,) + sub, j, tr))
    out.append(TensorMap("model.norm.weight", (d,), ("norm", "scale"), None, False))
    if not s.tie_embeddings:
        out.append(TensorMap("lm_head.weight", (v, d), ("lm_head", "kernel"), None, True))
    return out


def flatten(tree, prefix=()) -> dict:
    """Nested dict → {key path tuple: leaf}."""
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(flatten(v, prefix + (k,)))
        return out
    return {prefix: tree}


def _set_path(tree: dict, path: tuple, value) -> None:
    for k in path[:-1]:
        tree = tree[k]
    tree[path[-1]] = value


def is_backbone(path: tuple) -> bool:
    return bool(_BACKBONE_ROOTS.match(str(path[0])))


def _to_ours(w: np.ndarray, tm: TensorMap, leaf_shape: tuple) -> np.ndarray:
    per = leaf_shape[1:] if tm.index is not None else leaf_shape
    return w.T.reshape(per) if tm.transpose else w.reshape(per)


def _to_hf(x: np.ndarray, tm: TensorMap) -> np.ndarray:
    return np.ascontiguousarray(x.reshape(tm.hf_shape[::-1]).T if tm.transpose else x.reshape(tm.hf_shape))


def check_hf_tensors(reader: SafetensorsReader, tmap: list[TensorMap], tied: bool) -> None:
    """Raises ConversionError naming every missing, misshapen or unexpected tensor."""
    problems = []
    for tm in tmap:
        if tm.hf_name not in reader:
            problems.append(f"{tm.hf_name}: missing from the checkpoint (expected shape {tm.hf_shape})")
        elif reader.shape(tm.hf_name) != tm.hf_shape:
            problems.append(f"{tm.hf_name}: expected shape {tm.hf_shape}, got {reader.shape(tm.hf_name)}")
    known = {tm.hf_name for tm in tmap}
    extra = [k for k in reader.keys() if k not in known and not _IGNORABLE_HF.match(k)
             and not (tied and k == "lm_head.weight")]
    if extra:
        shown = ", ".join(f"{k} {reader.shape(k)}" for k in sorted(extra)[:10])
        problems.append(f"{len(extra)} tensor(s) that a Llama of this config.json does not have: {shown}"
                        + (" ..." if len(extra) > 10 else ""))
    if problems:
        raise ConversionError("the HF checkpoint does not fit its config.json:\n  " + "\n  ".join(problems))


# ---------------------------------------------------------------------------------------
# Import


def _parse_size(text) -> int:
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]i?B|B)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ConversionError(f"--max_shard_size={text!r}: use bytes or e.g. 500MB, 5GB")
    unit = (m.group(2) or "B").upper()
    base = 1024 if "I" in unit else 1000
    power = {"B": 0, "K": 1, "M": 2, "G": 3, "T": 4}[unit[0]]
    return int(float(m.group(1)) * base**power)


def build_import_config(hf_dir, config_path: str | None = None, log=print):
    """The full config for an imported checkpoint: model keys from config.json, the rest from
    --config (else the exporter's promethios_config.json, else base_config())."""
    from promethios_jax import config as config_lib

    hf_dir = Path(hf_dir)
    if not (hf_dir / HF_CONFIG).exists():
        raise ConversionError(f"{hf_dir} has no {HF_CONFIG}")
    hf = json.loads((hf_dir / HF_CONFIG).read_text())
    keys = model_keys_from_hf(hf)
    explicit = config_path is not None
    if explicit:
        config = load_config_file(config_path)
        source = config_path
    elif (hf_dir / PROMETHIOS_CONFIG).exists():
        config = _merge_json_config(json.loads((hf_dir / PROMETHIOS_CONFIG).read_text()))
        source = str(hf_dir / PROMETHIOS_CONFIG)
    else:
        config = config_lib.base_config()
        source = "base_config()"
    m = config.model
    n = keys["n_layers"]
    chosen_for_depth = explicit or int(m.n_layers) == n
    if explicit and int(m.max_seq_len) > 0:
        # The configured training length, capped at what the checkpoint's RoPE was trained for.
        keys["max_seq_len"] = min(int(m.max_seq_len), keys["max_seq_len"])
    for k, v in keys.items():
        if k == "rope_scaling_type" and v == "" and k not in m:
            continue  # no RoPE scaling, and the config has no such key: leave it absent
        m[k] = v
    if chosen_for_depth and _ranges_valid(m, n):
        log(f"governance layers from {source}: anchors {list(m.anchor_layers)}, uncertainty "
            f"{list(m.uncertainty_layers)}, tool {list(m.tool_layers)}")
    else:
        ranges = default_layer_ranges(n)
        for k, v in ranges.items():
            m[k] = v
        log(f"governance layers placed for {n} layers: anchors {ranges['anchor_layers']}, uncertainty "
            f"{ranges['uncertainty_layers']}, tool {ranges['tool_layers']}")
    config_lib.validate(config)
    return config, hf


def _local_mesh_config(config):
    import copy

    c = copy.deepcopy(config)
    c.mesh.update({"data": 1, "fsdp": -1, "tensor": 1})
    return c


def _check_tokenizer(config, hf_dir: Path, log=print) -> None:
    """Warns where the training tokenizer and the checkpoint's vocabulary do not go together."""
    shipped = [n for n in ("tokenizer.model", "tokenizer.json") if (hf_dir / n).exists()]
    if shipped:
        log(f"NOTE: {hf_dir} ships its own tokenizer ({', '.join(shipped)}); training here tokenizes with "
            f"config.data.tokenizer={config.data.tokenizer!r}, whose ids are not the ones the checkpoint was "
            "pretrained on")
    try:
        import copy

        from promethios_jax.data.tokenizer import build_tokenizer

        probe = copy.deepcopy(config)
        probe.model.vocab_size = 2**31 - 1
        needed = build_tokenizer(probe).vocab_size
    except Exception:  # noqa: BLE001 -- advisory only
        return
    if needed > config.model.vocab_size:
        log(f"WARNING: config.data.tokenizer={config.data.tokenizer!r} uses {needed} ids but the checkpoint's "
            f"vocabulary has {config.model.vocab_size}: load/eval/export work, training on the generated data "
            "does not")


_CONFIG_PY = '''"""Config of the checkpoint imported by `promethios_jax.convert import` from {hf_dir}.

Train on: python -m promethios_jax.train --workdir={out} --config={out}/config.py
(override keys with --config.train.steps=... etc., but keep config.model as it is).
"""
from promethios_jax.config import base_config

_SAVED = {saved}


def get_config():
    c = base_config()

    def update(node, values):
        for k, v in values.items():
            if k in node and hasattr(node[k], "keys") and isinstance(v, dict):
                update(node[k], v)
            else:
                node[k] = v

    update(c, _SAVED)
    return c
'''


def import_hf(hf_dir, out, config_path: str | None = None, governance: str = "auto", log=print):
    """Writes OUT/checkpoints/0 (the full train state, backbone from HF_DIR) and OUT/config.py.

    Returns the saved config."""
    import jax
    from flax import nnx  # noqa: F401  (model package import sets NNX options)

    from promethios_jax import checkpoint as ckpt
    from promethios_jax import sharding
    from promethios_jax.train import abstract_train_state

    hf_dir, out = Path(hf_dir), Path(out).absolute()
    if governance not in ("auto", "fresh"):
        raise ConversionError(f"--governance={governance!r}: use 'auto' or 'fresh'")
    cdir = ckpt.checkpoint_dir(out)
    if cdir.is_dir() and any(p.name.isdigit() for p in cdir.iterdir()):
        raise ConversionError(f"{cdir} already holds checkpoints; import into an empty workdir")

    config, _ = build_import_config(hf_dir, config_path, log=log)
    tmap = tensor_map(config.model)
    reader = SafetensorsReader(hf_dir)
    check_hf_tensors(reader, tmap, bool(config.model.tie_embeddings))

    mesh_config = _local_mesh_config(config)
    mesh = sharding.make_mesh(mesh_config, jax.local_devices())
    abstract, shardings, _, tx, _, init_fn = abstract_train_state(mesh_config, mesh)
    abs_params = flatten(abstract["params"])
    param_sh = flatten(shardings["params"])

    # Backbone leaves, one stacked leaf at a time on host, then onto the mesh.
    by_leaf: dict[tuple, list[TensorMap]] = {}
    for tm in tmap:
        by_leaf.setdefault(tm.path, []).append(tm)
    for path in by_leaf:
        if path not in abs_params:
            raise ConversionError(f"the model has no parameter {'.'.join(path)} (the converter and the model "
                                  "disagree on the param tree)")
    loaded = {}
    for path, tms in by_leaf.items():
        a = abs_params[path]
        host = np.empty(a.shape, np.float32)
        for tm in tms:
            w = _to_ours(reader.get(tm.hf_name), tm, a.shape)
            if tm.index is None:
                host[...] = w
            else:
                host[tm.index] = w
        loaded[path] = jax.device_put(host.astype(a.dtype), param_sh[path])
        del host

    gov_file = hf_dir / GOVERNANCE_FILE
    if governance == "auto" and gov_file.exists():
        gov = _SafetensorsFile(gov_file)
        wanted = {p: a for p, a in abs_params.items() if not is_backbone(p)}
        names = {".".join(map(str, p)): p for p in wanted}
        misfit = [f"{n}: expected {tuple(wanted[p].shape)}, got {gov.shape(n) if n in gov.header else 'missing'}"
                  for n, p in names.items() if n not in gov.header or gov.shape(n) != tuple(wanted[p].shape)]
        misfit += [f"{n}: not in this model" for n in gov.header if n not in names]
        if misfit:
            log(f"{gov_file} does not fit this config ({'; '.join(misfit[:3])}{' ...' if len(misfit) > 3 else ''}); "
                "governance parts initialised fresh")
        else:
            for n, p in names.items():
                loaded[p] = jax.device_put(np.asarray(gov.get(n), abs_params[p].dtype), param_sh[p])
            log(f"governance parts from {gov_file}")
    else:
        log("governance parts initialised fresh")

    def build(leaves):
        state = init_fn()
        params = state["params"]
        for p, x in leaves.items():
            _set_path(params, p, x)
        state["opt_state"] = tx.init(params)
        return state

    # Under jit the random init of every replaced leaf is dead code and never computed.
    donate = (0,) if jax.default_backend() != "cpu" else ()  # CPU cannot donate; spare the warning
    state = jax.jit(build, out_shardings=shardings, donate_argnums=donate)(loaded)
    del loaded

    out.mkdir(parents=True, exist_ok=True)
    _check_tokenizer(config, hf_dir, log=log)
    ckpt_cfg = config.checkpoint.copy_and_resolve_references()
    ckpt_cfg.async_save = False
    manager = ckpt.make_manager(out, ckpt_cfg)
    ckpt.save(manager, 0, state, {"batches_consumed": 0, "global_batch_size": int(config.train.global_batch_size)},
              config, force=True)
    manager.wait_until_finished()
    manager.close()
    saved = pprint.pformat(json.loads(config.to_json()), indent=1, width=110, sort_dicts=False)
    (out / "config.py").write_text(_CONFIG_PY.format(hf_dir=hf_dir.absolute(), out=out, saved=saved))
    n_backbone = sum(int(np.prod(abs_params[p].shape)) for p in by_leaf)
    log(f"imported {n_backbone:,} backbone parameters from {hf_dir} into {cdir / '0'}; "
        f"train on with: python -m promethios_jax.train --workdir={out} --config={out / 'config.py'}")
    return config


# ---------------------------------------------------------------------------------------
# Export


def _tokenizer_ids(config) -> dict:
    try:
        from promethios_jax.data.tokenizer import build_tokenizer

        tok = build_tokenizer(config)
        return {"bos_token_id": int(tok.bos_id), "eos_token_id": int(tok.eos_id), "pad_token_id": int(tok.pad_id)}
    except Exception:  # noqa: BLE001 -- optional metadata
        return {}


class _ShardWriter:
    """Streams tensors into safetensors shards of at most `max_shard` bytes (a larger single
    tensor gets a shard of its own); one file ends up as model.safetensors, several as
    model-0000i-of-0000N.safetensors with model.safetensors.index.json."""

    def __init__(self, out: Path, max_shard: int):
        self.out, self.max_shard = out, max_shard
        self.pending: list[tuple[str, np.ndarray]] = []
        self.size = 0
        self.written: list[tuple[Path, list[str]]] = []
        self.total = 0

    def add(self, name: str, x: np.ndarray) -> None:
        if self.pending and self.size + x.nbytes > self.max_shard:
            self._flush()
        self.pending.append((name, x))
        self.size += x.nbytes
        self.total += x.nbytes

    def _flush(self) -> None:
        from safetensors.numpy import save_file

        path = self.out / f".shard-{len(self.written):05d}.tmp"
        save_file(dict(self.pending), str(path), metadata={"format": "pt"})
        self.written.append((path, [n for n, _ in self.pending]))
        self.pending, self.size = [], 0

    def close(self) -> list[str]:
        if self.pending:
            self._flush()
        if len(self.written) == 1:
            os.replace(self.written[0][0], self.out / SINGLE_FILE)
            return [SINGLE_FILE]
        files, weight_map = [], {}
        for i, (path, names) in enumerate(self.written):
            fname = f"model-{i + 1:05d}-of-{len(self.written):05d}.safetensors"
            os.replace(path, self.out / fname)
            files.append(fname)
            weight_map.update({n: fname for n in names})
        (self.out / INDEX_FILE).write_text(json.dumps(
            {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2))
        return files


def export_params(params, config, out, max_shard_size=DEFAULT_MAX_SHARD, log=print) -> dict:
    """Writes a HF Llama directory from our params (pure dict) and config; returns config.json's dict.

    Host memory holds one stacked parameter and one shard at a time."""
    import jax
    from safetensors.numpy import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in [out / SINGLE_FILE, out / INDEX_FILE, out / GOVERNANCE_FILE, *out.glob("model-*-of-*.safetensors")]:
        stale.unlink(missing_ok=True)
    flat = flatten(params)
    tmap = tensor_map(config.model)
    by_leaf: dict[tuple, list[TensorMap]] = {}
    for tm in tmap:
        by_leaf.setdefault(tm.path, []).append(tm)
    missing = [".".join(p) for p in by_leaf if p not in flat]
    if missing:
        raise ConversionError(f"the checkpoint has no parameter(s) {', '.join(missing)}")
    writer = _ShardWriter(out, _parse_size(max_shard_size))
    n = 0
    for path, tms in by_leaf.items():
        host = np.asarray(jax.device_get(flat[path]), np.float32)
        for tm in tms:
            x = host if tm.index is None else host[tm.index]
            if math.prod(x.shape) != math.prod(tm.hf_shape):
                raise ConversionError(f"{'.'.join(path)}[{tm.index}]: shape {x.shape} cannot become "
                                      f"{tm.hf_name} {tm.hf_shape}")
            writer.add(tm.hf_name, _to_hf(x, tm))
            n += x.size
        del host
    files = writer.close()

    hf = hf_config_from_model(config.model, _tokenizer_ids(config))
    (out / HF_CONFIG).write_text(json.dumps(hf, indent=2) + "\n")
    gov = {".".join(map(str, p)): np.ascontiguousarray(np.asarray(jax.device_get(x), np.float32))
           for p, x in flat.items() if not is_backbone(p)}
    if gov:
        save_file(gov, str(out / GOVERNANCE_FILE), metadata={"format": "promethios"})
    (out / PROMETHIOS_CONFIG).write_text(config.to_json(indent=2) + "\n")
    msg = f"exported {n:,} backbone parameters to {out} ({', '.join(files)})"
    log(msg + (f"; governance parts in {GOVERNANCE_FILE}" if gov else ""))
    return hf


def export_workdir(workdir, out, step: int | None = None, max_shard_size=DEFAULT_MAX_SHARD, log=print) -> dict:
    from flax import nnx

    from promethios_jax.checkpoint import load

    model, config = load(workdir, step)
    params = nnx.to_pure_dict(nnx.split(model, nnx.Param)[1])
    return export_params(params, config, out, max_shard_size, log=log)


# ---------------------------------------------------------------------------------------
# CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m promethios_jax.convert",
                                description="Hugging Face Llama interop for the Promethios backbone.")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="write a workdir's checkpoint as a HF Llama directory")
    e.add_argument("--workdir", required=True)
    e.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    e.add_argument("--out", required=True, help="HF directory to write")
    e.add_argument("--max_shard_size", default="5GB", help="split model.safetensors above this (e.g. 500MB, 5GB)")
    i = sub.add_parser("import", help="start a workdir from a HF Llama directory")
    i.add_argument("--hf", required=True, help="HF directory with config.json and safetensors")
    i.add_argument("--out", required=True, help="workdir to create")
    i.add_argument("--config", default=None, help="config file for the non-model keys (file.py or file.py:arg)")
    i.add_argument("--governance", default="auto", choices=("auto", "fresh"),
                   help="auto: read governance.safetensors when present and fitting; fresh: always initialise")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from promethios_jax.checkpoint import CheckpointError
    from promethios_jax.config import ConfigError

    try:
        if args.command == "export":
            export_workdir(args.workdir, args.out, args.step, args.max_shard_size)
        else:
            import_hf(args.hf, args.out, args.config, args.governance)
    except (ConversionError, ConfigError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
