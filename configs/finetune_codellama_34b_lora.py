"""Fine-tune CodeLlama-34B-Instruct on ONE 8 x H100 host with low-rank adapters (LoRA).

configs/finetune_codellama_34b.py (full fine-tuning) needs two 8-GPU hosts: 83.24 GiB per
device on one host by XLA's GPU compiler, against a 71.20 GiB limit. This recipe is the
same run with the Llama weights frozen and LoRA adapters (Hu et al. 2021, model/lora.py)
trained in their place:

- rank 16, alpha 32 (scale 2) on all seven projections of every layer (q, k, v, o, gate,
  up, down): 109 M adapter parameters (728 M trainable with the rows and heads below). QLoRA (Dettmers et al. 2023) found adapting every
  linear layer is what matches full fine-tuning; the rank matters little.
- trains `lora+embeddings+governance`: the adapters; the embedding and LM-head rows (the
  121 governance control tokens and <assess> are new rows that start at the mean row, so
  frozen they would all read the same and could never be emitted: PEFT's
  `modules_to_save` for added tokens); the telemetry encoder and governance heads.
  The 48 decoder layers and the final norm are frozen: no gradient, no optimizer state.
- learning rate 1e-4 (QLoRA's setting for its 33B/65B models; adapters start at zero and
  want a larger rate than the full fine-tune's 5e-5); 3 epochs, effective batch 256.
- float32 Adam moments: the bf16 lever of the full recipe is not needed for 0.7 B
  trainable parameters.

Memory per device, by XLA's GPU compiler (`--dry_run --target=h100 --topology=1x1x8`,
cuDNN attention, 2026-11-30; BENCHMARKS.md): 34.32 GiB against the 71.20 GiB limit
(arguments 17.13 GiB: the frozen float32 base, 33.9 B x 4 bytes / 8, and 1.10 GiB of
optimizer state; temporaries 17.19 GiB). The CPU dry run's bound: 33.58 GiB. The base
stays in float32 (`param_dtype`): it fits, so nothing is rounded; bfloat16 storage would
save ~8 GiB more. No gradient is computed or accumulated for the frozen base.

Import and train as in finetune_llama3_8b.py, with this file as the import's --config
(the adapters start at B = 0: the imported model is the base exactly):

    python -m promethios_jax.convert import --hf=/models/CodeLlama-34b-Instruct-hf --out=runs/gov34b \
        --config=configs/finetune_codellama_34b_lora.py
    python -m promethios_jax.train --workdir=runs/gov34b --config=runs/gov34b/config.py

`convert export` merges the adapters into the weights (W + alpha/r A@B), so the export
is a plain LlamaForCausalLM.
"""
from pathlib import Path

from promethios_jax.config import load_config_file


def get_config():
    c = load_config_file(str(Path(__file__).with_name("finetune_codellama_34b.py")))
    m = c.model
    m.lora_rank = 16
    m.lora_alpha = 32.0
    m.lora_targets = "attention,mlp"
    t = c.train
    t.trainable = "lora+embeddings+governance"
    t.learning_rate = 1e-4
    t.moments_dtype = "float32"  # 0.7 B trainable parameters: full-precision moments are 1.10 GiB per device
    return c
