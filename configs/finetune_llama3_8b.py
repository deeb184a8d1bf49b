"""Fine-tune Llama-3.1-8B-Instruct into a governance model: the 8B recipe of the seeds
(3 epochs, learning rate 5e-5, effective batch 256).

Shapes from the base's public config.json: vocabulary 128,256, d_model 4096, 32 layers,
32 heads with 8 KV heads (GQA 8), d_ff 14336, RoPE theta 5e5 with llama3 scaling
(factor 8, low/high frequency factors 1/4, original context 8192), RMS eps 1e-5, untied.

Use it as the `--config` of the import, which checks these shapes against the
checkpoint, copies the base's tokenizer into the workdir and points
`config.data.tokenizer` at it:

    python -m promethios_jax.convert import --hf=/models/Llama-3.1-8B-Instruct --out=runs/gov8b \\
        --config=configs/finetune_llama3_8b.py
    python -m promethios_jax.train --workdir=runs/gov8b --config=runs/gov8b/config.py

vocab_size is the base's 128,256 ids plus <assess> and the 121 governance control
tokens (the base already has <|begin_of_text|>, <|eot_id|> and a pad piece), rounded up
to a multiple of 128: 128,384. Training rows are the seeds' 2048 tokens, not the base's
131,072-token context: the generated scenarios are short.
"""
from promethios_jax.config import base_config


def get_config():
    c = base_config()
    m = c.model
    m.vocab_size = 128384
    m.d_model = 4096
    m.n_layers = 32
    m.n_heads = 32
    m.n_kv_heads = 8
    m.d_ff = 14336
    m.rope_theta = 500000.0
    m.rope_scaling_type = "llama3"
    m.rope_scaling_factor = 8.0
    m.rope_low_freq_factor = 1.0
    m.rope_high_freq_factor = 4.0
    m.rope_original_max_len = 8192
    m.norm_eps = 1e-5
    m.tie_embeddings = False
    m.max_seq_len = 2048
    m.compute_dtype = "bfloat16"
    m.attention_impl = "cudnn"  # 8x H100; CPU-side AOT checks use xla (an upper bound)
    m.remat_policy = "full"
    # The seeds' 8/16/24-of-24 placement scaled to 32 layers (convert.default_layer_ranges).
    m.anchor_layers = (11, 21, 32)
    m.uncertainty_layers = (24, 32)
    m.tool_layers = (27, 32)
    m.telemetry_hidden = 1024
    m.head_hidden = 1024

    c.data.num_examples = 10000
    c.data.chat_template = True  # an instruct base: prompts in the format it was tuned on

    t = c.train
    t.epochs = 3.0
    t.global_batch_size = 256  # effective batch: 8 devices x 1 row x 32 accumulation steps
    t.grad_accum_steps = 32
    t.learning_rate = 5e-5
    t.warmup_steps = 20
    t.min_lr_ratio = 0.1
    t.weight_decay = 0.0  # the usual choice for fine-tuning a pretrained base
    c.checkpoint.every_steps = 50
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
    return c
