"""PyTorch peer of `python -m promethios_jax.bench`: the same backbone in transformers, timed the same way.

    python bench/torch_peer.py --config=configs/1_3b.py [--steps=10] [--repeats=5] [--warmup=3]
        [--precision=auto|amp_bf16|bf16|fp32] [--nocompile] [--sdpa_backend=auto|flash|efficient|cudnn|math]
        [--config.* overrides, as for the JAX bench]

The model is `transformers.LlamaForCausalLM(LlamaConfig(...))` built from the config file's
model keys (vocab, d_model, layers, heads, KV heads, head_dim, d_ff, RoPE theta, norm eps,
tied embeddings): the Llama backbone only, without the governance heads and the
telemetry encoder (together well under 1% of the step's FLOPs at 1_3b and 8B widths).
It is built from its config with random weights: nothing is downloaded.

What a torchtitan-style single-GPU run does, and what this script does:
- precision `amp_bf16` (the default when config.model.compute_dtype is bfloat16): fp32
  parameters, gradients and AdamW states (the master weights), forward and backward
  under `torch.autocast(bfloat16)`. This is the JAX side's own recipe (param_dtype
  float32, compute_dtype bfloat16) and torchtitan's FSDP2 mixed-precision policy
  (bf16 compute, fp32 master and reductions). `bf16` casts parameters and optimizer
  states to bfloat16 (faster, less memory, a weaker recipe); `fp32` is for CPU tests.
- attention `attn_implementation="sdpa"`; on CUDA with bf16 the SDPA flash backend is
  required (`--sdpa_backend=flash`, the default there: an error rather than a silent
  fallback). Rows are plain causal sequences (no document masking; the JAX step masks
  packed documents, which the FLOP count ignores on both sides).
- AdamW with the config's betas, eps, weight decay (matrices only, as the JAX optimizer)
  and learning rate; `fused=True` on CUDA (foreach elsewhere); gradient clipping at
  config.train.grad_clip; `config.train.grad_accum_steps` micro-batches of
  global_batch_size / grad_accum_steps rows per optimizer step, as the JAX step.
- `torch.compile` of each decoder block, as torchtitan does (`--nocompile` to skip, e.g.
  for CPU tests); embedding, final norm, LM head and loss run eagerly.
- loss: transformers' own causal-LM loss (`labels=input_ids`, logits upcast to fp32).

Batches are random tokens (two batches on the device, used in turn), so the figure is
the model's and the step's. Timing: `--warmup` untimed steps (compilation included),
then `--repeats` windows of `--steps` steps, each window ending with
`torch.cuda.synchronize()` (and the loss on the host); the figures are the median
window. FLOPs per token are the backbone's share of promethios_jax/flops.py's formula
(6 x matmul weights + causal attention); the peak table is flops.py's. Peak memory is
`torch.cuda.max_memory_allocated` (null on CPU).

Output: a table, then as the last line one JSON object with the JAX bench's keys
(tokens_per_s, step_time_s, device_kind, mfu, ...). This file is a script: it imports
nothing from promethios_jax but the config schema and the jax-free FLOP formulas.
"""
from __future__ import annotations

import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

from absl import app, flags

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # the config files import promethios_jax.config
    sys.path.insert(0, str(REPO))

from promethios_jax import flops  # noqa: E402  (jax-free: the peak table lives in one place)

NUM_BATCHES = 2
FLAGS = flags.FLAGS


def _define_flags():
    from ml_collections import config_flags

    if "repeats" in FLAGS:
        return
    config_flags.DEFINE_config_file("config", str(REPO / "configs" / "tiny.py"), "Config file (get_config()).")
    flags.DEFINE_integer("steps", 10, "Steps per timed window.", lower_bound=1)
    flags.DEFINE_integer("repeats", 5, "Timed windows; the figures are the median window.", lower_bound=1)
    flags.DEFINE_integer("warmup", 3, "Untimed steps first (torch.compile compiles here).", lower_bound=0)
    flags.DEFINE_enum("precision", "auto", ["auto", "amp_bf16", "bf16", "fp32"],
                      "auto: amp_bf16 when config.model.compute_dtype is bfloat16, else fp32.")
    flags.DEFINE_bool("compile", True, "torch.compile the model (--nocompile to skip).")
    flags.DEFINE_enum("sdpa_backend", "auto", ["auto", "flash", "efficient", "cudnn", "math", "any"],
                      "auto: flash on CUDA with bf16, unrestricted otherwise; any: never restrict.")
    flags.DEFINE_string("device", "auto", "auto (cuda when available, else cpu), cuda or cpu.")
    flags.DEFINE_integer("seed", 0, "Seed of the weights and the batches.")


# ---------------------------------------------------------------------------------------
# Model shape and FLOPs


def head_dim(m) -> int:
    return m.head_dim or m.d_model // m.n_heads


def backbone_matmul_params(m) -> int:
    d, hd, h, kv = m.d_model, head_dim(m), m.n_heads, m.n_kv_heads
    per_layer = d * h * hd + 2 * d * kv * hd + h * hd * d + 3 * d * m.d_ff
    return m.n_layers * per_layer + d * m.vocab_size


def backbone_flops_per_token(m, seq_len: int) -> float:
    """flops.model_flops_per_token without the telemetry encoder: 6 N + causal attention."""
    return 6.0 * backbone_matmul_params(m) + 6.0 * m.n_layers * seq_len * m.n_heads * head_dim(m)


def llama_config(m, attn_implementation: str = "sdpa"):
    """transformers.LlamaConfig with the config's backbone shape (v4 and v5 RoPE keys)."""
    import inspect

    import transformers

    kwargs = dict(
        vocab_size=m.vocab_size, hidden_size=m.d_model, intermediate_size=m.d_ff, num_hidden_layers=m.n_layers,
        num_attention_heads=m.n_heads, num_key_value_heads=m.n_kv_heads, head_dim=head_dim(m),
        hidden_act="silu", max_position_embeddings=m.max_seq_len, rms_norm_eps=m.norm_eps,
        tie_word_embeddings=bool(m.tie_embeddings), attention_bias=False, attention_dropout=0.0, mlp_bias=False,
        initializer_range=m.init_std, use_cache=False)
    rope = {"rope_type": "default", "rope_theta": float(m.rope_theta)}
    if m.rope_scaling_type == "linear":
        rope.update(rope_type="linear", factor=float(m.rope_scaling_factor))
    elif m.rope_scaling_type == "llama3":
        rope.update(rope_type="llama3", factor=float(m.rope_scaling_factor),
                    low_freq_factor=float(m.rope_low_freq_factor), high_freq_factor=float(m.rope_high_freq_factor),
                    original_max_position_embeddings=int(m.rope_original_max_len))
    if "rope_parameters" in inspect.signature(transformers.LlamaConfig.__init__).parameters:
        kwargs["rope_parameters"] = rope
    else:  # transformers 4.x
        kwargs["rope_theta"] = float(m.rope_theta)
        if rope["rope_type"] != "default":
            kwargs["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    cfg = transformers.LlamaConfig(**kwargs)
    cfg._attn_implementation = attn_implementation
    return cfg


# ---------------------------------------------------------------------------------------
# The measurement


def run_peer(config, steps=10, repeats=5, warmup=3, precision="auto", compile_model=True,
             sdpa_backend="auto", device="auto", seed=0, config_name="") -> dict:
    import contextlib

    import torch
    import transformers

    m, t = config.model, config.train
    dev = torch.device("cuda" if (device == "auto" and torch.cuda.is_available()) else
                       ("cpu" if device == "auto" else device))
    cuda = dev.type == "cuda"
    if precision == "auto":
        precision = "amp_bf16" if m.compute_dtype == "bfloat16" else "fp32"
    if sdpa_backend == "auto":
        sdpa_backend = "flash" if (cuda and precision != "fp32") else "any"
    b, n_micro, length = t.global_batch_size, t.grad_accum_steps, m.max_seq_len
    if b % n_micro:
        raise ValueError(f"global_batch_size={b} is not divisible by grad_accum_steps={n_micro}")
    micro = b // n_micro

    torch.manual_seed(seed)
    with torch.device(dev):
        model = transformers.LlamaForCausalLM(llama_config(m, "sdpa"))
    if precision == "bf16":
        model = model.to(torch.bfloat16)
    else:
        model = model.float()
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=t.learning_rate, betas=(t.b1, t.b2), eps=t.eps,
        **({"fused": True} if cuda else {"foreach": True}))
    if compile_model:
        # Per decoder block, as torchtitan does. It also keeps transformers' mask
        # construction out of the trace: with torch versions that predate
        # pytorch#176499, a traced construction builds an explicit mask instead of
        # is_causal=True, which rules out the flash kernel (transformers' masking_utils).
        for layer in model.model.layers:
            layer.compile()

    autocast = (torch.autocast(dev.type, dtype=torch.bfloat16) if precision == "amp_bf16"
                else contextlib.nullcontext())
    if sdpa_backend == "any":
        attn_ctx = contextlib.nullcontext
    else:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                   "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[sdpa_backend]
        attn_ctx = lambda: sdpa_kernel([backend])  # noqa: E731

    gen = torch.Generator(device="cpu").manual_seed(seed + 1)
    batches = [torch.randint(0, m.vocab_size, (n_micro, micro, length), generator=gen).to(dev)
               for _ in range(NUM_BATCHES)]

    def train_step(tokens):
        total = torch.zeros((), device=dev)
        for k in range(n_micro):
            with autocast, attn_ctx():
                loss = model(input_ids=tokens[k], labels=tokens[k]).loss / n_micro
            loss.backward()
            total += loss.detach()
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return total

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    i = 0
    t0 = time.perf_counter()
    loss = None
    for _ in range(warmup):
        loss = train_step(batches[i % NUM_BATCHES])
        i += 1
    sync()
    warmup_s = time.perf_counter() - t0

    windows = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = train_step(batches[i % NUM_BATCHES])
            i += 1
        sync()
        final_loss = float(loss)  # on the host: the window's work is done
        windows.append((time.perf_counter() - t0) / steps)

    step_time = statistics.median(windows)
    tokens_per_step = b * length
    tps = tokens_per_step / step_time
    fpt = backbone_flops_per_token(m, length)
    device_kind = torch.cuda.get_device_name(dev) if cuda else "cpu"
    peak = flops.resolve_peak_tflops(config.monitor, device_kind)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "tokens_per_s": tps,
        "step_time_s": step_time,
        "device_kind": device_kind,
        "mfu": tps * fpt / (peak * 1e12) if peak else None,
        "tflops_per_device": tps * fpt / 1e12,
        "tokens_per_s_per_device": tps,
        "peak_tflops": peak,
        "peak_memory_gib": torch.cuda.max_memory_allocated(dev) / 2**30 if cuda else None,
        "peak_reserved_gib": torch.cuda.max_memory_reserved(dev) / 2**30 if cuda else None,
        "config": config_name,
        "global_batch_size": b,
        "grad_accum_steps": n_micro,
        "seq_len": length,
        "tokens_per_step": tokens_per_step,
        "params": n_params,
        "flops_per_token": fpt,
        "precision": precision,
        "compile": bool(compile_model),
        "attn_implementation": "sdpa",
        "sdpa_backend": sdpa_backend,
        "fused_adamw": cuda,
        "num_devices": 1,
        "steps": steps,
        "repeats": repeats,
        "warmup": warmup,
        "warmup_s": warmup_s,
        "step_times_s": windows,
        "final_loss": final_loss,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "cpu_threads": torch.get_num_threads(),
        "load_avg_1m": load,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "synthetic_batches": True,
    }


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e6 else f"{v:,.0f}"
    return str(v)


def format_table(report: dict) -> str:
    keys = ("config", "device_kind", "params", "global_batch_size", "grad_accum_steps", "seq_len", "precision",
            "compile", "sdpa_backend", "fused_adamw", "warmup_s", "step_time_s", "tokens_per_s",
            "tflops_per_device", "peak_tflops", "mfu", "peak_memory_gib", "final_loss", "load_avg_1m")
    width = max(len(k) for k in keys)
    lines = [f"{k:<{width}}  {_fmt(report.get(k))}" for k in keys]
    lines.append(f"{'windows (s/step)':<{width}}  " + " ".join(f"{x:.4g}" for x in report["step_times_s"]))
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from ml_collections import config_flags

    config = FLAGS.config
    report = run_peer(config, FLAGS.steps, FLAGS.repeats, FLAGS.warmup, FLAGS.precision, FLAGS.compile,
                      FLAGS.sdpa_backend, FLAGS.device, FLAGS.seed,
                      config_name=config_flags.get_config_filename(FLAGS["config"]))
    report["overrides"] = config_flags.get_override_values(FLAGS["config"])
    print(format_table(report))
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    _define_flags()
    app.run(lambda argv: sys.exit(main(argv)))
