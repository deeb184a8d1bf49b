"""The seeds' "small" model: about 65M parameters, Llama-shaped (tied embeddings)."""
from promethios_jax.config import base_config


def get_config():
    c = base_config()
    m = c.model
    m.vocab_size = 32000  # Llama-2 size; the byte tokenizer uses the first ~512 ids
    m.d_model = 512
    m.n_layers = 12
    m.n_heads = 8
    m.n_kv_heads = 4
    m.d_ff = 2048
    m.tie_embeddings = True  # at this size the untied head would be a quarter of the model
    m.max_seq_len = 1024
    m.compute_dtype = "bfloat16"
    m.anchor_layers = (4, 8, 12)  # the seed's 8/16/24 of 24 layers, scaled
    m.uncertainty_layers = (9, 12)
    m.tool_layers = (10, 12)
    m.head_hidden = 256

    t = c.train
    t.steps = 5000
    t.global_batch_size = 64
    t.learning_rate = 1e-3
    t.warmup_steps = 200
    c.mesh.data, c.mesh.fsdp = -1, 1
    return c
