"""The model's hyper-parameters as a frozen, hashable value: the one declaration of the
model keys, their defaults and their checks.

`config.model` (an ml_collections ConfigDict, mutable and unhashable) is built from these
defaults by `config.base_config()` and validated by `check()`; the model keeps this
frozen copy so that its GraphDef stays hashable for `jax.jit`, and configs written before
a key existed still load with its default.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from promethios_jax.model.heads import POOL_KEYS
from promethios_jax.model.lora import parse_targets

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
ATTENTION_IMPLS = ("xla", "cudnn")
ROPE_SCALING_TYPES = ("", "linear", "llama3")
# Activation checkpointing of each decoder layer (backbone.transformer.remat_policy):
# none; full (save nothing); or a jax.checkpoint_policies name.
REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    vocab_size: int = 512
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int = 0  # 0: d_model // n_heads
    d_ff: int = 384
    rope_theta: float = 10000.0
    # RoPE frequency scaling as in HF `rope_scaling` (for Llama 3.x imports): "" (none), "linear" or "llama3".
    rope_scaling_type: str = ""
    rope_scaling_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_len: int = 8192
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    max_seq_len: int = 512
    compute_dtype: str = "float32"
    param_dtype: str = "float32"
    attention_impl: str = "xla"  # ATTENTION_IMPLS
    remat_policy: str = "none"  # REMAT_POLICIES
    scan_layers: bool = True
    # 1-based layer numbers; conditioning is added to the residual stream entering them.
    anchor_layers: tuple = (2, 4)
    uncertainty_layers: tuple = (3, 4)  # inclusive 1-based range the uncertainty head pools
    tool_layers: tuple = (3, 4)  # inclusive 1-based range the tool head pools
    telemetry_dim: int = 27  # == data.schema.TELEMETRY_DIM
    telemetry_hidden: int = 0  # 0: d_model
    head_hidden: int = 0  # hidden width of each governance head's MLP; 0: d_model
    n_decisions: int = 4
    n_tools: int = 6
    n_confidence: int = 4
    n_uncertainty: int = 6
    n_bias: int = 6
    init_std: float = 0.02
    learned_loss_weights: bool = False  # Kendall et al. log-variances (mirrors loss.uncertainty_weighting)
    # Low-rank adapters on the decoder's projections (model/lora.py): rank 0 = none.
    lora_rank: int = 0
    lora_alpha: float = 16.0  # the adapter's output is scaled by lora_alpha / lora_rank
    lora_targets: str = "attention,mlp"  # comma-separated: q,k,v,o,gate,up,down (or attention, mlp)

    @classmethod
    def from_config(cls, model_cfg) -> "ModelSpec":
        if isinstance(model_cfg, ModelSpec):
            return model_cfg
        kw = {}
        for f in dataclasses.fields(cls):
            if f.name in model_cfg:
                v = model_cfg[f.name]
                kw[f.name] = tuple(int(x) for x in v) if isinstance(f.default, tuple) else v
        spec = cls(**kw)
        spec.check()
        return spec

    # ----- derived values ---------------------------------------------------------------
    @property
    def hd(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def telemetry_width(self) -> int:
        return self.telemetry_hidden or self.d_model

    @property
    def head_width(self) -> int:
        return self.head_hidden or self.d_model

    @property
    def dtype(self):
        return _DTYPES[self.compute_dtype]

    @property
    def pdtype(self):
        return _DTYPES[self.param_dtype]

    @property
    def lora_scale(self) -> float:
        return self.lora_alpha / self.lora_rank if self.lora_rank else 0.0

    @property
    def anchors(self) -> tuple:
        """Distinct 1-based anchor layers, sorted."""
        return tuple(sorted(set(self.anchor_layers)))

    @property
    def segments(self) -> tuple:
        """0-based half-open layer ranges [start, end): one scan each, split before anchors."""
        cuts = sorted({a - 1 for a in self.anchors} - {0})
        bounds = [0] + cuts + [self.n_layers]
        return tuple((s, e) for s, e in zip(bounds[:-1], bounds[1:]))

    def check(self) -> None:
        """Raises ValueError naming the `config.model` key of the first value that cannot work."""
        if min(self.d_model, self.n_layers, self.n_heads, self.n_kv_heads) <= 0:
            raise ValueError("config.model: d_model, n_layers, n_heads and n_kv_heads must be positive")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"config.model.n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if not self.head_dim and self.d_model % self.n_heads:
            raise ValueError(f"config.model.d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.hd % 2:
            raise ValueError(f"config.model.head_dim={self.hd} must be even for RoPE")
        for key in ("compute_dtype", "param_dtype"):
            if getattr(self, key) not in _DTYPES:
                raise ValueError(f"config.model.{key}={getattr(self, key)!r}: use one of {list(_DTYPES)}")
        for key, allowed in (("attention_impl", ATTENTION_IMPLS), ("remat_policy", REMAT_POLICIES),
                             ("rope_scaling_type", ROPE_SCALING_TYPES)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"config.model.{key}={getattr(self, key)!r}: use one of {list(allowed)}")
        if not isinstance(self.lora_rank, int) or self.lora_rank < 0:
            raise ValueError(f"config.model.lora_rank={self.lora_rank!r} must be an integer >= 0 (0: no adapters)")
        if self.lora_rank and not self.lora_alpha > 0:
            raise ValueError(f"config.model.lora_alpha={self.lora_alpha!r} must be positive")
        parse_targets(self.lora_targets)
        for a in self.anchor_layers:
            if not 1 <= a <= self.n_layers:
                raise ValueError(f"config.model.anchor_layers: {a} is outside 1..{self.n_layers}")
        for key in POOL_KEYS:
            lo, hi = getattr(self, key)
            if not 1 <= lo <= hi <= self.n_layers:
                raise ValueError(f"config.model.{key}={[lo, hi]}: need 1 <= first <= last <= {self.n_layers}")


def segment_bounds(model_cfg) -> tuple:
    """[(start, end)] 0-based layer ranges of the stacked segments `layers_0`, `layers_1`, ..."""
    return ModelSpec.from_config(model_cfg).segments


def layer_location(model_cfg, layer: int) -> tuple[str, int]:
    """Where 0-based decoder layer `layer` lives: (segment attribute name, index in its stack).

    HF `model.layers.{i}.*` ↔ params[name][...][index] with (name, index) = layer_location(cfg, i).
    """
    for k, (s, e) in enumerate(segment_bounds(model_cfg)):
        if s <= layer < e:
            return f"layers_{k}", layer - s
    raise IndexError(f"layer {layer} is outside 0..{ModelSpec.from_config(model_cfg).n_layers - 1}")
