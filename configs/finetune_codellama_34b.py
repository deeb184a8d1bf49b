"""Fine-tune CodeLlama-34B-Instruct into a governance model: the production package's
base, on its 50,000 scenarios (3 epochs, learning rate 5e-5, effective batch 256).

Shapes (configs/34b.py) from the base's public config.json: vocabulary 32,000, d_model 8192, 48 layers,
64 heads with 8 KV heads, d_ff 22016, RoPE theta 1e6, RMS eps 1e-5, untied.
vocab_size: 32,000 + <pad>, <assess> and 121 control tokens = 32,123, rounded up to a
multiple of 128: 32,128.

Memory: full fine-tuning keeps fp32 master weights, gradients and two Adam moments,
about 16 bytes per parameter: 34B x 16 B / 8 GPUs = 68 GB per GPU before activations.
The lever used here is bfloat16 Adam moments (`train.moments_dtype`, 12 bytes per
parameter). The CPU ahead-of-time compile on 8 simulated devices (an upper bound: XLA
attention, the CPU compiler's buffer assignment) gives, per device:

    fp32 moments   99.4 GiB  (arguments 47.3 GiB, temporaries 52.1 GiB)
    bf16 moments   84.4 GiB  (arguments 31.5 GiB, temporaries 52.9 GiB)

so even with bf16 moments this bound is above the ~74.5 GiB an 80 GB GPU holds. XLA's GPU
compiler (cuDNN attention, `--dry_run --target=h100`, 2026-11-30) agrees: 83.24 GiB per
device on one 8-GPU host (1x1x8) against a 71.20 GiB limit, and 55.19 GiB on two hosts
(1x2x8, `--config.train.grad_accum_steps=16`), which fits. About 31 GiB of the
temporaries are the accumulation's two fp32 gradient buffers. So: run it on two 8-GPU
hosts, or on one with low-rank adapters: configs/finetune_codellama_34b_lora.py
(34.32 GiB per device by the same GPU compile).
Import and train as in configs/finetune_llama3_8b.py.
"""
from pathlib import Path

from promethios_jax.config import load_config_file


def get_config():
    # The shapes are configs/34b.py's (CodeLlama-34B); this file adds the fine-tuning recipe.
    c = load_config_file(str(Path(__file__).with_name("34b.py")))
    c.model.vocab_size = 32128
    c.model.max_seq_len = 2048  # the scenarios are short; the base's 16,384 would only add padding

    c.data.num_examples = 50000
    c.data.chat_template = True

    t = c.train
    t.epochs = 3.0
    t.global_batch_size = 256  # 8 devices x 1 row x 32 accumulation steps
    t.grad_accum_steps = 32
    t.learning_rate = 5e-5
    t.warmup_steps = 30
    t.min_lr_ratio = 0.1
    t.weight_decay = 0.0
    t.moments_dtype = "bfloat16"
    c.checkpoint.every_steps = 100
    return c
