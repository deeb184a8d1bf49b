"""Shared test helpers: the smallest governance model that still exercises every part."""
from promethios_jax.config import base_config


def small_config(**mesh):
    """2 layers of width 64 over 256-token rows, batch 8, a few steps; mesh keys override."""
    c = base_config()
    c.model.update(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, max_seq_len=256,
                   anchor_layers=(1, 2), uncertainty_layers=(1, 2), tool_layers=(2, 2))
    c.data.num_examples = 300
    c.train.update(steps=6, global_batch_size=8, warmup_steps=2, log_every=1)
    c.checkpoint.update(every_steps=3, async_save=False)
    c.mesh.update(mesh or {"data": -1, "fsdp": 1, "tensor": 1})
    return c
