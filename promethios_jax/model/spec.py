"""The model's hyper-parameters as a frozen, hashable value.

`config.model` is an ml_collections ConfigDict (mutable, unhashable); the model keeps this
frozen copy instead so that its GraphDef stays hashable for `jax.jit` and so that every
default lives in one place (configs written before a key existed still load).
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


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
    # RoPE frequency scaling as in HF `rope_scaling`: "" (none), "linear" or "llama3".
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
    attention_impl: str = "xla"
    remat_policy: str = "none"
    scan_layers: bool = True
    anchor_layers: tuple = (2, 4)
    uncertainty_layers: tuple = (3, 4)
    tool_layers: tuple = (3, 4)
    telemetry_dim: int = 27  # data.schema.TELEMETRY_DIM
    telemetry_hidden: int = 0  # 0: d_model
    head_hidden: int = 0  # 0: d_model
    n_decisions: int = 4
    n_tools: int = 6
    n_confidence: int = 4
    n_uncertainty: int = 6
    n_bias: int = 6
    init_std: float = 0.02
    learned_loss_weights: bool = False  # Kendall et al. log-variances (mirrors loss.uncertainty_weighting)

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
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.hd % 2:
            raise ValueError(f"head_dim={self.hd} must be even for RoPE")
        for a in self.anchor_layers:
            if not 1 <= a <= self.n_layers:
                raise ValueError(f"anchor layer {a} is outside 1..{self.n_layers}")
        for name in ("uncertainty_layers", "tool_layers"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi <= self.n_layers:
                raise ValueError(f"{name}={[lo, hi]}: need 1 <= first <= last <= {self.n_layers}")
        if self.attention_impl not in ("xla", "cudnn"):
            raise ValueError(f"attention_impl={self.attention_impl!r}: use 'xla' or 'cudnn'")
        if self.rope_scaling_type not in ("", "linear", "llama3"):
            raise ValueError(f"rope_scaling_type={self.rope_scaling_type!r}: use '', 'linear' or 'llama3'")


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
