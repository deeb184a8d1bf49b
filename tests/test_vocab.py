"""Growing the embedding and LM-head rows for added tokens."""
import jax.numpy as jnp
import numpy as np
import pytest

from promethios_jax.model.vocab import VocabError, grow_vocab, vocab_rows


def _params(v=10, d=4, tied=False, seed=0):
    rng = np.random.default_rng(seed)
    p = {"embed_tokens": {"embedding": rng.normal(size=(v, d)).astype(np.float32)},
         "norm": {"scale": np.ones(d, np.float32)}}
    if not tied:
        p["lm_head"] = {"kernel": rng.normal(size=(d, v)).astype(np.float32)}
    return p


@pytest.mark.parametrize("xp", [np, jnp])
def test_new_rows_are_the_mean_and_old_rows_keep_their_bits(xp):
    p = _params()
    p = {k: {n: xp.asarray(x) for n, x in v.items()} for k, v in p.items()}
    out = grow_vocab(p, 16)
    emb, head = np.asarray(out["embed_tokens"]["embedding"]), np.asarray(out["lm_head"]["kernel"])
    assert emb.shape == (16, 4) and head.shape == (4, 16) and vocab_rows(out) == 16
    np.testing.assert_array_equal(emb[:10], np.asarray(p["embed_tokens"]["embedding"]))
    np.testing.assert_array_equal(head[:, :10], np.asarray(p["lm_head"]["kernel"]))
    np.testing.assert_allclose(emb[10:], np.broadcast_to(np.asarray(p["embed_tokens"]["embedding"]).mean(0), (6, 4)),
                               rtol=1e-6)
    np.testing.assert_allclose(head[:, 10:], np.broadcast_to(np.asarray(p["lm_head"]["kernel"]).mean(1)[:, None],
                                                             (4, 6)), rtol=1e-6)
    assert out["norm"] is p["norm"] and p["embed_tokens"]["embedding"].shape == (10, 4)  # input untouched


def test_mean_of_the_base_rows_only_and_reset_padding_rows():
    p = _params(v=12, tied=True)
    emb = p["embed_tokens"]["embedding"]
    out = grow_vocab(p, 16, mean_rows=8, reset_ids=[9])
    new = out["embed_tokens"]["embedding"]
    mean = emb[:8].mean(0)
    np.testing.assert_allclose(new[12:], np.broadcast_to(mean, (4, 4)), rtol=1e-6)
    np.testing.assert_allclose(new[9], mean, rtol=1e-6)
    np.testing.assert_array_equal(new[[8, 10, 11]], emb[[8, 10, 11]])  # padding rows not asked for stay
    np.testing.assert_array_equal(new[:8], emb[:8])
    assert "lm_head" not in out


def test_refusals():
    p = _params()
    with pytest.raises(VocabError, match="cannot shrink"):
        grow_vocab(p, 8)
    with pytest.raises(VocabError, match="not padding rows"):
        grow_vocab(p, 16, mean_rows=8, reset_ids=[3])
    with pytest.raises(VocabError, match="has no embed_tokens.embedding"):
        grow_vocab({"norm": {}}, 16)
