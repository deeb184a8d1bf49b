"""The byte-level tokenizer with governance control tokens."""
import numpy as np
import pytest

from eval.communication import read_outcome
from promethios_jax.config import base_config
from promethios_jax.data import generate, pipeline, schema, tokenizer
from promethios_jax.data.control import OUTCOMES, control_pieces, outcome_of
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


def _outcome_config(spec="byte"):
    c = base_config()
    c.data.tokenizer, c.data.outcome_token = spec, True
    return c


def test_outcome_token_starts_each_response_and_is_never_shown(tok):
    otok = tokenizer.build_tokenizer(_outcome_config())
    assert otok.vocab_size == tok.vocab_size + len(OUTCOMES) <= base_config().model.vocab_size
    assert tok.fingerprint != otok.fingerprint and not tok.outcome_ids
    seen = set()
    for ex in generate.generate_examples(120, seed=5):
        p, r = tokenizer.encode_example(ex, otok)
        outcome = outcome_of(ex["labels"]["decision"], ex["labels"]["confidence"])
        assert read_outcome(ex["response"]) == outcome  # the piece names what the words then do
        assert r[0] == otok.outcome_ids[f"<outcome:{outcome}>"] and r[1:] == tokenizer.encode_example(ex, tok)[1]
        assert p == tokenizer.encode_example(ex, tok)[0]  # the prompt is untouched
        assert otok.decode(r[:-1]) == ex["response"]  # decoded text never shows it
        seen.add(outcome)
    assert seen == set(OUTCOMES)
    # A prompt alone (the server's) needs no labels; a response without them is refused.
    assert tokenizer.encode_example({"prompt": ex["prompt"], "response": ""}, otok)[1] == [otok.eos_id]
    with pytest.raises(tokenizer.TokenizerError, match="outcome_token needs its labels"):
        tokenizer.encode_example({"prompt": ex["prompt"], "response": ex["response"]}, otok)
    # Packed rows are cached per tokenizer key: the outcome piece changes every length.
    key = lambda t: pipeline._length_cache("/d", "train", t).name  # noqa: E731
    assert key(otok) != key(tok)


def test_outcome_token_needs_a_tokenizer_that_has_the_pieces(tmp_path, monkeypatch):
    pytest.importorskip("sentencepiece")
    d = tmp_path / "data"
    generate.generate_dataset(str(d), 200, seed=0)
    texts = [t for r in load_split(str(d), "train") for t in (r["prompt"], r["response"])]
    with monkeypatch.context() as m:  # a model trained before the outcome pieces existed
        m.setattr(tokenizer, "outcome_pieces", lambda: [])
        old = tokenizer.train_sentencepiece(texts, tmp_path / "old" / "gov", vocab_size=700)
    new = tokenizer.train_sentencepiece(texts, tmp_path / "new" / "gov", vocab_size=700)
    c = _outcome_config(old)
    c.model.vocab_size = 1024
    with pytest.raises(tokenizer.TokenizerError, match="outcome_token=True needs the outcome pieces"):
        tokenizer.build_tokenizer(c)
    c.data.outcome_token = False
    assert not tokenizer.build_tokenizer(c).outcome_ids  # still serves what it was trained for
    c = _outcome_config(new)
    c.model.vocab_size = 1024
    otok = tokenizer.build_tokenizer(c)
    assert sorted(otok.outcome_ids) == sorted(f"<outcome:{o}>" for o in OUTCOMES)
    assert len(control_pieces()) + len(OUTCOMES) < 700
    ex = load_split(str(d), "heldout")[0]
    r = tokenizer.encode_example(ex, otok)[1]
    assert r[0] in otok.outcome_ids.values() and otok.decode(r[:-1]) == ex["response"]


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
