"""The Hugging Face Llama mapping of the backbone: config.json keys and the tensor map.

The backbone is exactly `LlamaForCausalLM`, so its tensors map onto ours by a transpose
and a reshape (see `model/layers.py`); the decoder layers live in stacks, one per
segment between anchor layers (`model.layer_location`).

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

Everything else in the param tree (telemetry encoder, heads, loss weights) is governance,
not Llama. Reading and writing the files is `promethios_jax.interop`'s job.
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np

from promethios_jax.model.spec import ModelSpec, layer_location

# Top-level param-tree keys that make up the Llama backbone; everything else is governance.
_BACKBONE_ROOTS = re.compile(r"^(embed_tokens|norm|lm_head|layers_\d+)$")
# HF tensors that carry no weights (buffers some old checkpoints saved).
_IGNORABLE_HF = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")


class ConversionError(ValueError):
    """A HF directory or workdir that cannot be converted; the message names the tensor or key."""


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


def ranges_valid(model_cfg, n_layers: int) -> bool:
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

def is_backbone(path: tuple) -> bool:
    return bool(_BACKBONE_ROOTS.match(str(path[0])))


def to_ours(w: np.ndarray, tm: TensorMap, leaf_shape: tuple) -> np.ndarray:
    per = leaf_shape[1:] if tm.index is not None else leaf_shape
    return w.T.reshape(per) if tm.transpose else w.reshape(per)


def to_hf(x: np.ndarray, tm: TensorMap) -> np.ndarray:
    return np.ascontiguousarray(x.reshape(tm.hf_shape[::-1]).T if tm.transpose else x.reshape(tm.hf_shape))


def check_hf_tensors(reader, tmap: list[TensorMap], tied: bool) -> None:
    """Raises ConversionError naming every missing, misshapen or unexpected tensor; `reader`
    answers `name in reader`, `reader.shape(name)` and `reader.keys()`."""
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
