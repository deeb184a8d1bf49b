"""Fine-tune a pretrained Llama with its own tokenizer, end to end and offline: a random
tiny Llama and a BPE tokenizer trained on the generated corpus (tests/hf_base.py) are
imported, trained a few steps, exported, and transformers' greedy generation of the
export equals ours token for token, governance tokens included."""
import importlib.util
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
pytestmark = pytest.mark.slow  # an import, a short fine-tune and an export: a minute or more on 2 cores

import promethios_jax  # noqa: E402
from promethios_jax import convert  # noqa: E402
from promethios_jax import generate as gen  # noqa: E402
from promethios_jax.data.hf_tokenizer import HFTokenizer, round_vocab  # noqa: E402
from promethios_jax.data.records import load_split  # noqa: E402
from promethios_jax.data.control import TAG_RE  # noqa: E402
from promethios_jax.data.tokenizer import build_tokenizer, encode_example_arrays  # noqa: E402
from promethios_jax.interop.safetensors_io import SafetensorsReader  # noqa: E402
from tests.hf_base import base_ids, make_hf_base  # noqa: E402

RUN_CONFIG = '''
from promethios_jax.config import base_config


def get_config():
    c = base_config()
    c.model.update(max_seq_len=256, compute_dtype="float32")
    c.data.path = {data!r}
    c.train.update(steps=4, global_batch_size=8, warmup_steps=1, learning_rate=3e-3, log_every=1)
    c.checkpoint.update(every_steps=2, async_save=False)
    c.mesh.update(data=-1, fsdp=1, tensor=1)
    return c
'''


def _load_config(path):
    spec = importlib.util.spec_from_file_location("imported_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    from promethios_jax.train import train

    root = tmp_path_factory.mktemp("finetune")
    base = make_hf_base(root / "base", root / "data", vocab_size=600)
    (root / "run_config.py").write_text(RUN_CONFIG.format(data=str(root / "data")))
    wd = root / "wd"
    convert.import_hf(base, wd, config_path=str(root / "run_config.py"), log=lambda *_: None)
    config = _load_config(wd / "config.py")
    train(config, str(wd))
    out = root / "export"
    convert.export_workdir(wd, out, log=lambda *_: None)
    return root, base, wd, out, config


def test_import_keeps_the_base_ids_and_adds_the_governance_tokens(finetuned):
    root, base, wd, _, config = finetuned
    tok = build_tokenizer(config)
    assert isinstance(tok, HFTokenizer) and str(wd) in str(tok.path)  # the workdir's own copy
    assert config.model.vocab_size == round_vocab(tok.vocab_size) == tok.padded_vocab_size
    assert tok.base_vocab_size == 600 and tok.assess_id >= 600
    for rec in load_split(root / "data", "train")[:10]:
        plain = TAG_RE.sub("", rec["response"])
        np.testing.assert_array_equal(tok.encode_array(plain), base_ids(base, plain))
    # The checkpoint at step 0 holds the base's rows unchanged and the new rows at their mean.
    reader = SafetensorsReader(base)
    emb0 = reader.get("model.embed_tokens.weight")
    model, _ = promethios_jax.load(wd, step=0)
    e = np.asarray(model.embed_tokens.embedding[...])
    np.testing.assert_array_equal(e[:600], emb0)
    np.testing.assert_allclose(e[600:], np.broadcast_to(emb0.mean(0), e[600:].shape), rtol=1e-5)
    trained, _ = promethios_jax.load(wd)
    assert not np.array_equal(np.asarray(trained.embed_tokens.embedding[...])[:600], emb0)


def test_transformers_greedy_equals_ours_on_the_export(finetuned):
    root, _, wd, out, config = finetuned
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    hf_model = transformers.LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ours_tok = build_tokenizer(config)
    assert json.loads((out / "config.json").read_text())["vocab_size"] == config.model.vocab_size
    model, _ = promethios_jax.load(wd)
    recs = load_split(root / "data", "heldout")[:3]
    for rec in recs:
        prompt, _ = encode_example_arrays(rec, ours_tok)
        # The export's tokenizer gives the same ids for the same (bucketed-tag) text.
        text = hf_tok.bos_token + ours_tok.canonical_text(rec["prompt"]) + "<assess>"
        assert hf_tok.encode(text, add_special_tokens=False) == prompt.tolist()
        assert ours_tok.is_control(prompt).sum() >= 5 and prompt[-1] == ours_tok.assess_id
        ours = gen.generate(model, ours_tok, [prompt], telemetry=None, max_new_tokens=12)[0]
        with torch.no_grad():
            hf_out = hf_model.generate(torch.as_tensor(prompt[None].astype(np.int64)), max_new_tokens=12,
                                       do_sample=False, eos_token_id=ours_tok.eos_id, pad_token_id=ours_tok.pad_id)
        hf_new = hf_out[0, len(prompt):].tolist()
        if hf_new and hf_new[-1] == ours_tok.eos_id:
            hf_new = hf_new[:-1]
        assert ours.ids == hf_new
        assert hf_tok.decode(hf_new) == ours_tok.decode(ours.ids)
