"""Low-rank adapters (LoRA, Hu et al. 2021) on the decoder's projections.

With `config.model.lora_rank` = r > 0, each targeted projection W (a `Proj`) gets
A [in, r] (normal, std 1/sqrt(in)) and B [r, out] (zeros), and computes

    y = x @ W + (lora_alpha / r) * (x @ A) @ B

so a fresh adapter leaves the model exactly as it was. In the param tree they sit beside
the kernel: `layers_k.self_attn.q_proj.{kernel, lora_a, lora_b}`, stacked along "layers"
like it, with the rank axis named "lora" for the sharding rules. `merged_kernel` folds an
adapter into its kernel (W + alpha/r A@B) for export.
"""
from __future__ import annotations

import numpy as np

# config.model.lora_targets names -> (block, projection) inside a decoder layer.
TARGETS = {
    "q": ("self_attn", "q_proj"),
    "k": ("self_attn", "k_proj"),
    "v": ("self_attn", "v_proj"),
    "o": ("self_attn", "o_proj"),
    "gate": ("mlp", "gate_proj"),
    "up": ("mlp", "up_proj"),
    "down": ("mlp", "down_proj"),
}
TARGET_ALIASES = {"attention": ("q", "k", "v", "o"), "mlp": ("gate", "up", "down")}
LORA_LEAVES = ("lora_a", "lora_b")
RANK_AXIS = "lora"  # logical axis name of the rank dimension (config.sharding.rules)


def parse_targets(targets: str) -> tuple[str, ...]:
    """"q,v" or "attention,mlp" -> the projection names, in TARGETS order; ValueError naming
    an unknown entry."""
    names: set[str] = set()
    for part in (p.strip() for p in str(targets).split(",")):
        if part in TARGET_ALIASES:
            names.update(TARGET_ALIASES[part])
        elif part in TARGETS:
            names.add(part)
        else:
            raise ValueError(f"config.model.lora_targets={targets!r}: unknown target {part!r}; use a comma-separated "
                             f"list of {', '.join([*TARGETS, *TARGET_ALIASES])}")
    return tuple(n for n in TARGETS if n in names)


def target_projections(targets: str) -> frozenset:
    """The projection attribute names (q_proj, ...) the targets select."""
    return frozenset(TARGETS[n][1] for n in parse_targets(targets))


def merged_kernel(kernel, a, b, scale: float):
    """kernel + scale * A @ B in float32 (numpy), for one projection's leaves.

    kernel [n?, in..., out...]; a [n?, in..., r]; b [n?, r, out...], where n is a leading
    layer axis on all three or on none (told apart by their ranks)."""
    kernel, a, b = (np.asarray(x, np.float32) for x in (kernel, a, b))
    stacked = a.ndim + b.ndim - kernel.ndim - 2
    if stacked not in (0, 1) or a.shape[-1] != b.shape[stacked]:
        raise ValueError(f"adapter shapes {a.shape} and {b.shape} do not fit a kernel of shape {kernel.shape}")
    n = kernel.shape[:stacked]
    r = a.shape[-1]
    delta = np.matmul(a.reshape(n + (-1, r)), b.reshape(n + (r, -1)))
    return kernel + np.float32(scale) * delta.reshape(kernel.shape)
