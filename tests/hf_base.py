"""A pretrained-base stand-in for fine-tuning tests, built offline: the generated corpus, a
byte-level BPE tokenizer trained on it with `tokenizers`, and a tiny random Llama saved
with transformers, as one Hugging Face directory."""
from pathlib import Path

import numpy as np

from promethios_jax import convert
from promethios_jax import generate as gen
from promethios_jax.config import load_config_file
from promethios_jax.data import generate
from promethios_jax.data.records import load_split
from promethios_jax.train import train

BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"
# A minimal instruct-style template (the shape of Llama 3's).
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
                 "{{ m['content'] }}<|eot_id|>{% endfor %}"
                 "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
BASE_SPECIALS = [BOS, EOS, "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def make_corpus(data_dir, num_examples: int = 200, seed: int = 0) -> Path:
    data_dir = Path(data_dir)
    if not (data_dir / "manifest.json").is_file():
        generate.generate_dataset(str(data_dir), num_examples, seed, heldout_fraction=0.05)
    return data_dir


def train_bpe(data_dir, vocab_size: int = 600):
    """A byte-level BPE `tokenizers.Tokenizer` (Llama 3's kind) trained on the train split."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = [t for r in load_split(data_dir, "train") for t in (r["prompt"], r["response"])]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=BASE_SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return tok


def make_hf_tokenizer(hf_dir, data_dir, *, vocab_size: int = 600, chat_template: bool = True):
    """Writes tokenizer.json and tokenizer_config.json (bos/eos named, optionally a chat
    template) as transformers saves them; returns the `tokenizers.Tokenizer`."""
    import transformers

    tok = train_bpe(data_dir, vocab_size)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS)
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(hf_dir)
    return tok


def make_hf_base(hf_dir, data_dir, *, vocab_size: int = 600, chat_template: bool = True, seed: int = 0,
                 num_examples: int = 200, **llama_overrides) -> Path:
    """Writes a HF directory (config.json, model.safetensors, tokenizer.json,
    tokenizer_config.json) whose model has exactly the tokenizer's vocabulary."""
    import torch
    import transformers

    hf_dir = Path(hf_dir)
    make_corpus(data_dir, num_examples, seed)
    tok = make_hf_tokenizer(hf_dir, data_dir, vocab_size=vocab_size, chat_template=chat_template)
    n = tok.get_vocab_size(with_added_tokens=True)
    kw = dict(vocab_size=n, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=500000.0,
              bos_token_id=tok.token_to_id(BOS), eos_token_id=tok.token_to_id(EOS), tie_word_embeddings=False)
    kw.update(llama_overrides)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kw)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # larger than the default init, so that every mapping error shows in the logits
        for name, p in model.named_parameters():
            if p.ndim > 1:
                p.copy_((1.0 if "embed" in name else 1.5 / p.shape[1] ** 0.5) * torch.randn(p.shape, generator=g))
    model.save_pretrained(hf_dir)
    return hf_dir


def base_ids(hf_dir, text: str) -> np.ndarray:
    """The base tokenizer's own ids of `text` (no special tokens added)."""
    from tokenizers import Tokenizer

    return np.asarray(Tokenizer.from_file(str(Path(hf_dir) / "tokenizer.json")).encode(
        text, add_special_tokens=False).ids)


RUN_CONFIG = '''
from promethios_jax.config import base_config


def get_config():
    c = base_config()
    c.model.update(max_seq_len=256, compute_dtype="float32")
    c.model.update({model!r})
    c.data.path = {data!r}
    c.train.update(steps=4, global_batch_size=8, warmup_steps=1, learning_rate=3e-3, log_every=1)
    c.train.update({train!r})
    c.checkpoint.update(every_steps=2, async_save=False)
    c.mesh.update(data=-1, fsdp=1, tensor=1)
    return c
'''


def import_train_export(root, model: dict | None = None, train_keys: dict | None = None, vocab_size: int = 600):
    """make_hf_base under ROOT, imported with a short fine-tune's config as --config (its
    model and train keys updated by `model`, `train_keys`), trained 4 steps, exported;
    returns (base, workdir, export, config)."""
    root = Path(root)
    base = make_hf_base(root / "base", root / "data", vocab_size=vocab_size)
    (root / "run_config.py").write_text(RUN_CONFIG.format(data=str(root / "data"), model=model or {},
                                                          train=train_keys or {}))
    wd = root / "wd"
    convert.import_hf(base, wd, config_path=str(root / "run_config.py"), log=lambda *_: None)
    config = load_config_file(str(wd / "config.py"))
    train(config, str(wd))
    out = root / "export"
    convert.export_workdir(wd, out, log=lambda *_: None)
    return base, wd, out, config


def greedy_both(model, tok, hf_model, prompt, max_new_tokens: int = 12):
    """(our greedy generation, transformers' on the same prompt without its final eos)."""
    import torch

    ours = gen.generate(model, tok, [prompt], telemetry=None, max_new_tokens=max_new_tokens)[0]
    with torch.no_grad():
        hf_out = hf_model.generate(torch.as_tensor(prompt[None].astype(np.int64)), max_new_tokens=max_new_tokens,
                                   do_sample=False, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    hf_new = hf_out[0, len(prompt):].tolist()
    if hf_new and hf_new[-1] == tok.eos_id:
        hf_new = hf_new[:-1]
    return ours, hf_new
