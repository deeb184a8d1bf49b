"""Fine-tune a pretrained Llama with its own tokenizer, end to end and offline: a random
tiny Llama and a BPE tokenizer trained on the generated corpus (tests/hf_base.py) are
imported, trained a few steps, exported, and transformers' greedy generation of the
export equals ours token for token, governance tokens included."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
pytestmark = pytest.mark.slow  # an import, a short fine-tune and an export: a minute or more on 2 cores

import promethios_jax  # noqa: E402
from promethios_jax.data.hf_tokenizer import HFTokenizer, round_vocab  # noqa: E402
from promethios_jax.data.records import load_split  # noqa: E402
from promethios_jax.data.control import TAG_RE  # noqa: E402
from promethios_jax.data.tokenizer import build_tokenizer, encode_example_arrays  # noqa: E402
from promethios_jax.interop.safetensors_io import SafetensorsReader  # noqa: E402
from tests.hf_base import base_ids, greedy_both, import_train_export  # noqa: E402


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    base, wd, out, config = import_train_export(root)
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
        ours, hf_new = greedy_both(model, ours_tok, hf_model, prompt)
        assert ours.ids == hf_new
        assert hf_tok.decode(hf_new) == ours_tok.decode(ours.ids)
