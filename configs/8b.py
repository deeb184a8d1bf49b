"""The seeds' 8B governance model: 24 layers, d_model 4096, 32 heads, context 2048.

d_ff = 22784 (a multiple of 256) brings the total to about 8.03e9 parameters with a
Llama-2 vocabulary of 32000 and 8 KV heads (tests/test_model_sizes.py checks 8e9 ± 5%).
"""
from promethios_jax.config import base_config


def get_config():
    c = base_config()
    m = c.model
    m.vocab_size = 32000
    m.d_model = 4096
    m.n_layers = 24
    m.n_heads = 32
    m.n_kv_heads = 8
    m.d_ff = 22784
    m.max_seq_len = 2048
    m.compute_dtype = "bfloat16"
    m.attention_impl = "cudnn"  # 8x H100; CPU-side AOT checks override with attention_impl=xla
    m.remat_policy = "full"
    m.anchor_layers = (8, 16, 24)
    m.uncertainty_layers = (18, 24)
    m.tool_layers = (20, 24)
    m.telemetry_hidden = 1024
    m.head_hidden = 1024

    t = c.train
    t.global_batch_size = 256
    t.grad_accum_steps = 32
    t.learning_rate = 3e-4
    t.warmup_steps = 200
    t.steps = 2000
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
    return c
