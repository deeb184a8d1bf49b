"""CodeLlama-34B's shapes, for fine-tuning from CodeLlama-34B(-Instruct) weights.

48 layers, d_model 8192, 64 heads with 8 KV heads, d_ff 22016, vocab 32000, RoPE theta
1e6, context 16384. Full fine-tuning needs more memory than one 8-GPU host gives with
fp32 master weights and Adam state (about 16 bytes per parameter): the batch below is
sized for four 8-GPU hosts (launch/slurm.sbatch with --nodes=4).
"""
from promethios_jax.config import base_config


def get_config():
    c = base_config()
    m = c.model
    m.vocab_size = 32000
    m.d_model = 8192
    m.n_layers = 48
    m.n_heads = 64
    m.n_kv_heads = 8
    m.d_ff = 22016
    m.rope_theta = 1e6
    m.norm_eps = 1e-5
    m.max_seq_len = 16384
    m.compute_dtype = "bfloat16"
    m.attention_impl = "cudnn"
    m.remat_policy = "full"
    m.anchor_layers = (16, 32, 48)  # the seed's 8/16/24 of 24 layers, scaled to 48
    m.uncertainty_layers = (36, 48)
    m.tool_layers = (40, 48)
    m.telemetry_hidden = 1024
    m.head_hidden = 1024

    t = c.train
    t.global_batch_size = 32
    # One row of 16384 per GPU on four 8-GPU hosts (1x4x8): 47.5 GiB per H100 by XLA's
    # GPU compiler (BENCHMARKS.md, issue 13); two hosts do not fit (92.5 GiB at 1 x 2).
    t.grad_accum_steps = 1
    t.learning_rate = 2e-5  # fine-tuning a pretrained base
    t.warmup_steps = 50
    t.steps = 2000
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
    return c
