"""The byte-level tokenizer with governance control tokens."""
import numpy as np
import pytest

from promethios_jax.config import base_config
from promethios_jax.data import generate, pipeline, schema, tokenizer
from promethios_jax.data.records import load_split


@pytest.fixture(scope="module")
def tok():
    return tokenizer.build_tokenizer(base_config())


def _example():
    return generate.generate_examples(40, seed=3)


def test_vocab_fits_the_config(tok):
    c = base_config()
    assert tok.vocab_size <= c.model.vocab_size
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.assess_id) == (0, 1, 2, 3)
    c.model.vocab_size = 300
    with pytest.raises(tokenizer.TokenizerError, match="config.model.vocab_size"):
        tokenizer.build_tokenizer(c)
    c = base_config()
    c.data.tokenizer = "/nowhere/spm.model"
    with pytest.raises(tokenizer.TokenizerError, match="config.data.tokenizer"):
        tokenizer.build_tokenizer(c)


def test_text_round_trips(tok):
    for text in ["", "plain ascii", "naïve café ✓ — 日本", "code:\n    return x[0] -> y"]:
        ids = tok.encode(text)
        assert all(tokenizer.BYTE_OFFSET <= i < tokenizer.GOV_OFFSET for i in ids)
        assert tok.decode(ids) == text
    assert tok.decode(tok.encode("<assess><eos>")) == "<assess><eos>"


def test_each_tag_is_one_control_token(tok):
    for ex in _example():
        ids = np.array(tok.encode(ex["prompt"]))
        assert tok.is_control(ids).sum() == 1 + len(schema.TELEMETRY_KEYS)
        assert tok.is_control(ids[-1 - len(schema.TELEMETRY_KEYS):]).all()  # the tags close the prompt
        assert ids.max() < tok.vocab_size
        # Decoding gives the bucketed tags, which encode to the same ids.
        assert tok.encode(tok.decode(ids)) == ids.tolist()


def test_buckets_align_with_the_rule(tok):
    tid = lambda k, v: tok.encode(f"<gov:{k}={v}>")  # noqa: E731
    for req in schema.DOMAIN_TRUST.values():
        assert tid("trust", f"{req - 0.01:.2f}") != tid("trust", f"{req:.2f}")
    assert tid("intensity", "0.69") != tid("intensity", "0.70")
    assert tid("verify", "0.49") != tid("verify", "0.50")
    assert tid("trust", "0.75") == tid("trust", "0.79") and tid("trust", "1.00") == tid("trust", "0.95")
    assert tok.decode(tid("trust", "0.77")) == "<gov:trust=0.75>"


def test_bad_tags_raise(tok):
    with pytest.raises(tokenizer.TokenizerError, match="unknown governance tag"):
        tok.encode("<gov:mood=HAPPY>")
    with pytest.raises(tokenizer.TokenizerError, match="unknown governance tag"):
        tok.encode("<gov:emotion=HAPPY>")
    with pytest.raises(tokenizer.TokenizerError, match="number"):
        tok.encode("<gov:trust=high>")


def test_encode_example_ends_prompt_with_assess(tok):
    for ex in _example():
        p, r = tokenizer.encode_example(ex, tok)
        assert p[0] == tok.bos_id and p[-1] == tok.assess_id and p.count(tok.assess_id) == 1
        assert r[-1] == tok.eos_id and tok.assess_id not in r and tok.eos_id not in r[:-1]
        assert not tok.is_control(r).any()
        assert tok.decode(r[:-1]) == ex["response"]


def test_sentencepiece_option(tmp_path):
    pytest.importorskip("sentencepiece")

    d = tmp_path / "data"
    generate.generate_dataset(str(d), 200, seed=0)
    texts = (t for r in load_split(str(d), "train") for t in (r["prompt"], r["response"]))
    path = tokenizer.train_sentencepiece(texts, tmp_path / "spm" / "gov", vocab_size=700)
    c = base_config()
    c.data.tokenizer = path
    with pytest.raises(tokenizer.TokenizerError, match="config.model.vocab_size"):
        tokenizer.build_tokenizer(c)
    c.model.vocab_size = 1024
    c.train.global_batch_size = 4
    tok = tokenizer.build_tokenizer(c)
    byte_len = 0
    for ex in load_split(str(d), "heldout"):
        p, r = tokenizer.encode_example(ex, tok)
        assert p[0] == tok.bos_id and p[-1] == tok.assess_id and r[-1] == tok.eos_id
        assert tok.is_control(p).sum() == 1 + len(schema.TELEMETRY_KEYS)
        assert tok.decode(r[:-1]) == ex["response"]
        byte_len += len(tok.encode(ex["response"])) < len(ex["response"].encode())
    assert byte_len > 0  # pieces are longer than bytes
    b = next(pipeline.make_train_iterator(c, str(d)))
    assert b["tokens"].max() < tok.vocab_size
    rows, slots = np.nonzero(b["head_mask"])
    assert (b["tokens"][rows, b["head_positions"][rows, slots]] == tok.assess_id).all()
