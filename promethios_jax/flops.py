"""Model FLOPs per token, device peak TFLOP/s, and MFU.

MFU here is *model* FLOPs utilization (PaLM, appendix B): the FLOPs the model needs
for one training step, whatever the implementation does. Recomputation under remat is
not counted, so a remat policy lowers MFU instead of hiding inside it.

Training FLOPs per token (forward 2 FLOPs per multiply-add, backward twice that):

    6 * N_matmul                                  dense matmuls, N = their weight count
  + 6 * n_layers * seq_len * n_heads * head_dim   attention scores and values, causal

where, per layer, N_matmul counts q (d*H*hd), k and v (d*KV*hd each), o (H*hd*d) and
the SwiGLU MLP (3*d*d_ff); then once the LM head (d*V: a matmul whether or not it
shares the embedding table) and the telemetry encoder, which runs at every token
(T*W trunk + one W*d projection per distinct anchor layer, W = telemetry_hidden or d).
The embedding lookup is a gather (no FLOPs).

Attention: QK^T and AV each cost 2*seq_len*H*hd FLOPs per token forward, so
12*seq_len*H*hd per token for training over the full square. With `causal=True` only
the lower triangle is needed and we halve it (the MaxText convention), giving the
6*... term above. PaLM and NeMo count the full square (`causal=False`), which reads
higher for the same run. Packed rows are counted as one causal sequence of `seq_len`,
even though segment masking skips the cross-document blocks.

Left out: the governance heads (they read a few positions per row, not every token),
norms, RoPE and softmax; together far below 0.1% of the total on the 8B shape.
"""
from __future__ import annotations

from promethios_jax.model.spec import ModelSpec

# Dense bf16 Tensor Core peak per device, TFLOP/s (vendor datasheets, no sparsity).
# Matched in order against the lower-cased `jax.Device.device_kind`, so the more
# specific names come first ("NVIDIA H100 PCIe" before "NVIDIA H100 80GB HBM3").
PEAK_TFLOPS_BF16 = (
    ("h200", 989.0),  # H200 SXM (also matches GH200)
    ("h100 pcie", 756.0),
    ("h100", 989.0),  # H100 SXM5: "NVIDIA H100 80GB HBM3"
    ("a100", 312.0),  # A100 SXM4 and PCIe
)


def matmul_params(model_cfg) -> int:
    """Weights that take part in a dense matmul per token (see module docstring)."""
    d, hd = model_cfg.d_model, ModelSpec.from_config(model_cfg).hd
    h, kv = model_cfg.n_heads, model_cfg.n_kv_heads
    attn = d * h * hd + 2 * d * kv * hd + h * hd * d
    mlp = 3 * d * model_cfg.d_ff
    width = model_cfg.get("telemetry_hidden", 0) or d
    anchors = len(set(model_cfg.get("anchor_layers", ())))
    telemetry = model_cfg.get("telemetry_dim", 0) * width + anchors * width * d if anchors else 0
    return model_cfg.n_layers * (attn + mlp) + d * model_cfg.vocab_size + telemetry


def attention_flops_per_token(model_cfg, seq_len: int, causal: bool = True) -> float:
    full = 12.0 * model_cfg.n_layers * seq_len * model_cfg.n_heads * ModelSpec.from_config(model_cfg).hd
    return full / 2 if causal else full


def model_flops_per_token(model_cfg, seq_len: int, causal: bool = True) -> float:
    """Training (forward + backward) FLOPs per token; see the module docstring."""
    return 6.0 * matmul_params(model_cfg) + attention_flops_per_token(model_cfg, seq_len, causal)


def peak_tflops(device_kind: str) -> float | None:
    """Dense bf16 peak of one device, or None for CPUs and devices not in the table."""
    kind = device_kind.lower()
    for key, tflops in PEAK_TFLOPS_BF16:
        if key in kind:
            return tflops
    return None


def resolve_peak_tflops(monitor_cfg, device_kind: str) -> float | None:
    """`config.monitor.peak_tflops` when > 0, else the table."""
    override = float(monitor_cfg.get("peak_tflops", 0.0) or 0.0)
    return override if override > 0 else peak_tflops(device_kind)


def mfu(tokens_per_s_per_device: float, flops_per_token: float, peak_tflops: float | None) -> float | None:
    """Achieved model FLOP/s per device over the peak, as a fraction (0.5 = 50%)."""
    if not peak_tflops:
        return None
    return tokens_per_s_per_device * flops_per_token / (peak_tflops * 1e12)
