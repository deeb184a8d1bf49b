"""The seeds' "medium" model: about 350M parameters, Llama-shaped."""
from promethios_jax.config import base_config


def get_config():
    c = base_config()
    m = c.model
    m.vocab_size = 32000
    m.d_model = 1024
    m.n_layers = 24
    m.n_heads = 16
    m.n_kv_heads = 8
    m.d_ff = 2816  # ~8/3 d_model, a multiple of 256
    m.max_seq_len = 2048
    m.compute_dtype = "bfloat16"
    m.remat_policy = "dots_with_no_batch_dims_saveable"
    m.anchor_layers = (8, 16, 24)
    m.uncertainty_layers = (18, 24)
    m.tool_layers = (20, 24)
    m.head_hidden = 512

    t = c.train
    t.steps = 10000
    t.global_batch_size = 128
    t.learning_rate = 6e-4
    t.warmup_steps = 500
    c.mesh.data, c.mesh.fsdp = -1, 1
    return c
