"""CPU demo: a small governance transformer that learns visibly in minutes on 2 cores.

Sized so that `python -m promethios_jax.train` (data generation included) finishes in
well under 10 minutes on a 2-core CPU and the eval job then reaches the quality target
of issue 7 on the held-out split (HITL accuracy near the manifest's ceiling, ECE <= 0.05,
domain compliance >= 0.95, no leaks). The figures are in BENCHMARKS.md.

Where the time goes: every step runs the LM over whole packed examples (~270 byte
tokens each), while the governance heads learn from one <assess> position per example.
So the demo is a narrow, shallow model over short rows that sees ~1.5 epochs of
examples, rather than a wider one that sees a fraction of an epoch.
"""
from promethios_jax.config import base_config


def get_config():
    c = base_config()

    m = c.model
    m.d_model = 64
    m.n_layers = 2
    m.n_heads = 4
    m.n_kv_heads = 2
    m.d_ff = 192
    # Byte tokenizer: 385 ids are used; 392 rows (a multiple of 8) trims the LM head by a quarter.
    m.vocab_size = 392
    # 256 tokens: one example per row (mean 273 tokens). Prompts are kept whole (the
    # longest is 222), so 63% of examples lose the tail of their response (83% of
    # response tokens are kept); a subword tokenizer would make whole examples fit.
    m.max_seq_len = 256
    m.anchor_layers = [1, 2]  # telemetry enters both layers
    m.uncertainty_layers = [1, 2]
    m.tool_layers = [1, 2]
    # Wider head / telemetry MLPs: the HITL rule is an OR of sharp thresholds on the raw
    # telemetry (trust against the domain's requirement, distress, risk); more hidden
    # units fit them in fewer steps.
    m.head_hidden = 256
    m.telemetry_hidden = 128
    m.compute_dtype = "float32"  # fastest on CPU
    m.remat_policy = "none"

    c.loss.hitl = 2.0  # the HITL verdict is the product; weight it above the LM

    t = c.train
    t.steps = 900
    t.global_batch_size = 16
    t.learning_rate = 3e-3
    t.warmup_steps = 30
    t.min_lr_ratio = 0.05  # a low final LR settles the HITL probabilities (calibration)
    return c
