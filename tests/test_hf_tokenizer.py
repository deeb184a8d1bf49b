"""A base's own Hugging Face tokenizer with the governance control tokens added."""
import json

import numpy as np
import pytest

pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

from promethios_jax.config import base_config  # noqa: E402
from promethios_jax.data import tokenizer as tokenizer_lib  # noqa: E402
from promethios_jax.data.hf_tokenizer import HFTokenizer, round_vocab  # noqa: E402
from promethios_jax.data.records import load_split  # noqa: E402
from promethios_jax.data.control import TAG_RE, TokenizerError, control_pieces  # noqa: E402
from tests.hf_base import BOS, CHAT_TEMPLATE, EOS, base_ids, make_corpus, make_hf_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_tok")
    data = make_corpus(root / "data", num_examples=120)
    make_hf_tokenizer(root / "base", data, vocab_size=500)
    return root / "base", data


@pytest.fixture(scope="module")
def tok(base):
    return HFTokenizer(base[0])


def _texts(data, n=20):
    return [t for r in load_split(data, "train")[:n] for t in (r["prompt"], r["response"])]


def test_base_ids_never_change_and_the_governance_tokens_follow(base, tok):
    hf_dir, data = base
    base_vocab = json.loads((hf_dir / "tokenizer.json").read_text())["model"]["vocab"]
    assert tok.base_vocab_size == 500
    for text in ["plain words, numbers 0.42 and code: return x", *[TAG_RE.sub("", t) for t in _texts(data)]]:
        np.testing.assert_array_equal(tok.encode_array(text), base_ids(hf_dir, text))
    # The base's bos/eos are reused; pad, <assess> and every control piece are appended in order.
    assert tok.bos_id == base_vocab.get(BOS, tok.bos_id) and tok.special_pieces["bos"] == BOS
    assert tok.special_pieces["eos"] == EOS
    assert tok.added_pieces == ["<pad>", "<assess>", *control_pieces()]
    assert (tok.pad_id, tok.assess_id) == (500, 501)
    assert tok.vocab_size == 500 + 2 + len(control_pieces())
    assert tok.padded_vocab_size == round_vocab(tok.vocab_size) and tok.padded_vocab_size % 128 == 0
    assert tok.padded_vocab_size - 128 < tok.vocab_size <= tok.padded_vocab_size


def test_each_tag_is_one_control_token_and_text_round_trips(base, tok):
    _, data = base
    for rec in load_split(data, "train")[:20]:
        ids = tok.encode_array(rec["prompt"])
        n_tags = len(TAG_RE.findall(rec["prompt"]))
        assert int(tok.is_control(ids).sum()) == n_tags
        assert list(ids[-n_tags:]) == [tok.tag_id(m.group(1), m.group(2)) for m in TAG_RE.finditer(rec["prompt"])]
        canonical = tok.canonical_text(rec["prompt"])
        assert tok.decode(ids) == canonical
    assert tok.encode("<bos><assess><eos>") == [tok.bos_id, tok.assess_id, tok.eos_id]
    assert tok.tag_id("trust", "0.72") == tok.encode("<gov:trust=0.70>")[0]
    assert tok.decode([tok.vocab_size, tok.padded_vocab_size - 1]) == "??"
    assert not tok.is_control([-1, tok.vocab_size + 5, tok.bos_id]).any()
    with pytest.raises(TokenizerError, match="unknown governance tag"):
        tok.encode("<gov:colour=red>")


def test_export_loads_in_transformers_with_the_same_ids(base, tok, tmp_path):
    _, data = base
    written = tok.save_pretrained(tmp_path / "out")
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(written)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (tok.bos_id, tok.eos_id, tok.pad_id)
    assert len(hf) == tok.vocab_size
    for text in _texts(data):
        assert hf.encode(tok.canonical_text(text), add_special_tokens=False) == tok.encode(text)
    assert hf.convert_ids_to_tokens(tok.assess_id) == "<assess>"
    # Re-importing the export adds nothing: every piece is already there, at the same id.
    again = HFTokenizer(tmp_path / "out")
    assert again.added_pieces == [] and again.vocab_size == tok.vocab_size
    for text in _texts(data, 5):
        assert again.encode(text) == tok.encode(text)
    # The chat template travels and renders like transformers'.
    assert hf.chat_template == CHAT_TEMPLATE
    msgs = [{"role": "user", "content": "<gov:domain=legal> review this contract"}]
    assert tok.apply_chat_template(msgs[0]["content"]) == hf.apply_chat_template(
        msgs, add_generation_prompt=True, tokenize=False)


def test_sentencepiece_only_base(base, tmp_path):
    spm = pytest.importorskip("sentencepiece")
    _, data = base
    lines = [line for t in _texts(data, 60) for line in TAG_RE.sub("", t).split("\n") if line]
    (tmp_path / "sp").mkdir()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(tmp_path / "sp" / "tokenizer"),
                                   vocab_size=600, model_type="bpe", byte_fallback=True, minloglevel=2,
                                   hard_vocab_limit=False, normalization_rule_name="identity",
                                   remove_extra_whitespaces=False)  # as Llama 2's
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "sp" / "tokenizer.model"))
    tok = HFTokenizer(tmp_path / "sp")
    assert tok.kind == "sentencepiece" and tok.base_vocab_size == sp.get_piece_size()
    assert (tok.bos_id, tok.eos_id) == (sp.bos_id(), sp.eos_id())  # <s>, </s>
    assert tok.assess_id >= tok.base_vocab_size and tok.padded_vocab_size % 128 == 0
    text = "Please review the invoice records."
    assert tok.encode(text) == sp.encode(text)
    prompt = "<gov:domain=finance><gov:trust=0.70>\nPlease review the invoice records."
    ids = tok.encode(prompt)
    assert ids[:2] == [tok.tag_id("domain", "finance"), tok.tag_id("trust", "0.70")]
    assert tok.decode(ids + [tok.assess_id]) == prompt + "<assess>"
    tok.save_pretrained(tmp_path / "sp_out")
    assert (tmp_path / "sp_out" / "tokenizer.model").is_file()


def test_config_names_the_tokenizer_and_errors_are_clear(base, tmp_path):
    hf_dir, _ = base
    c = base_config()
    c.data.tokenizer = str(hf_dir)
    c.model.vocab_size = 640
    tok = tokenizer_lib.build_tokenizer(c)
    assert isinstance(tok, HFTokenizer)
    c.data.tokenizer = str(hf_dir / "tokenizer.json")
    assert isinstance(tokenizer_lib.build_tokenizer(c), HFTokenizer)
    c.model.vocab_size = 600  # the base's 500 ids fit, the governance tokens do not
    with pytest.raises(TokenizerError, match=r"config.model.vocab_size=600 .* raise it to at least 640"):
        tokenizer_lib.build_tokenizer(c)
    c.model.vocab_size = 4096
    c.data.tokenizer = str(tmp_path / "missing")
    with pytest.raises(TokenizerError, match="no such tokenizer file or directory"):
        HFTokenizer(c.data.tokenizer)
    (tmp_path / "empty").mkdir()
    c.data.tokenizer = str(tmp_path / "empty")
    with pytest.raises(TokenizerError, match="neither tokenizer.json nor tokenizer.model"):
        tokenizer_lib.build_tokenizer(c)
    c.data.tokenizer = str(tmp_path / "gone" / "tokenizer.json")
    with pytest.raises(TokenizerError, match="no such tokenizer file"):
        tokenizer_lib.build_tokenizer(c)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(TokenizerError, match="not a tokenizers file"):
        HFTokenizer(tmp_path / "bad.json")


def test_chat_template_formats_the_prompt(base, tmp_path):
    hf_dir, data = base
    c = base_config()
    c.model.vocab_size = 640
    c.data.tokenizer = str(hf_dir)
    c.data.chat_template = True
    tok = tokenizer_lib.build_tokenizer(c)
    plain = HFTokenizer(hf_dir)
    assert tok.fingerprint != plain.fingerprint  # the length cache must not mix the two
    rec = load_split(data, "train")[0]
    prompt, response = tokenizer_lib.encode_example_arrays(rec, tok)
    hf = transformers.AutoTokenizer.from_pretrained(hf_dir)
    rendered = hf.apply_chat_template([{"role": "user", "content": tok.canonical_text(rec["prompt"])}],
                                      add_generation_prompt=True, tokenize=False)
    assert prompt.tolist() == tok.encode(rendered) + [tok.assess_id]
    assert prompt[0] == tok.bos_id and prompt.tolist().count(tok.bos_id) == 1
    assert response.tolist() == plain.encode(rec["response"]) + [tok.eos_id]
    no_template = tmp_path / "plain"
    make_hf_tokenizer(no_template, data, vocab_size=500, chat_template=False)
    c.data.tokenizer = str(no_template)
    with pytest.raises(TokenizerError, match="ships no chat template"):
        tokenizer_lib.build_tokenizer(c)
    c.data.tokenizer = "byte"
    with pytest.raises(TokenizerError, match="chat_template=True needs a Hugging Face tokenizer"):
        tokenizer_lib.build_tokenizer(c)


def test_vocab_plan_for_checkpoints_with_and_without_padding_rows(tok):
    from promethios_jax.data.hf_tokenizer import vocab_plan

    n = tok.vocab_size  # 500 base ids + the added pieces
    p = vocab_plan(tok, 500)
    assert (p.base_rows, p.rows, p.mean_rows, p.reset_ids) == (500, round_vocab(n), 500, ())
    p = vocab_plan(tok, 512)  # a checkpoint padded to 512 rows: added ids 500..511 land in unused rows
    assert p.rows == round_vocab(n) and p.mean_rows == 500 and p.reset_ids == tuple(range(500, 512))
    p = vocab_plan(tok, 700)
    assert p.rows == 768 and p.reset_ids == tuple(range(500, n))
