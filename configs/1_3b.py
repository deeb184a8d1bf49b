"""The seeds' "large" model: about 1.3B parameters, Llama-shaped."""
from promethios_jax.config import base_config


def get_config():
    c = base_config()
    m = c.model
    m.vocab_size = 32000
    m.d_model = 2048
    m.n_layers = 24
    m.n_heads = 16
    m.n_kv_heads = 8
    m.d_ff = 5632
    m.max_seq_len = 2048
    m.compute_dtype = "bfloat16"
    m.attention_impl = "cudnn"  # one H100; the CPU dry run and bench fall back to 'xla' and say so
    m.remat_policy = "dots_with_no_batch_dims_saveable"
    m.anchor_layers = (8, 16, 24)
    m.uncertainty_layers = (18, 24)
    m.tool_layers = (20, 24)
    m.head_hidden = 1024

    t = c.train
    t.steps = 10000
    t.global_batch_size = 128
    # 16 rows of 2048 per micro-batch: 58.1 GiB per H100 by XLA's GPU compiler, the
    # largest power of two under the 71.2 GiB limit (BENCHMARKS.md, issue 13).
    t.grad_accum_steps = 8
    t.learning_rate = 3e-4
    t.warmup_steps = 500
    c.mesh.data, c.mesh.fsdp = 1, -1
    return c
