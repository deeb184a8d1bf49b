"""KV-cache generation: equals full recomputation, stops at eos, reads the governance verdict."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from promethios_jax.generate import generate, sample_token
from tests.test_model_backbone import build, fwd

PROMPTS = [[5, 9, 14, 3], [7, 1, 2, 8, 30, 11, 4, 6, 12], [40]]


class FakeTokenizer:
    pad_id, bos_id, eos_id = 0, 1, 2

    def decode(self, ids):
        return " ".join(map(str, ids))


@pytest.fixture(scope="module")
def model_and_config():
    return build()


def naive_greedy(model, prompt, n, telemetry=None):
    """Full recomputation: the whole sequence through the model for every new token (one
    fixed right-padded shape; causality makes the padding after the last token irrelevant)."""
    total = len(prompt) + n
    buf = np.zeros((1, total), np.int32)
    buf[0, :len(prompt)] = prompt
    tel = None if telemetry is None else jnp.asarray(telemetry[None])
    for t in range(len(prompt), total):
        logits = fwd(model, jnp.asarray(buf), telemetry=tel).logits
        buf[0, t] = int(jnp.argmax(logits[0, t - 1]))
    return buf[0, len(prompt):].tolist()


@pytest.mark.parametrize("with_telemetry", [False, True])
def test_kv_cache_greedy_equals_full_recompute(model_and_config, with_telemetry):
    model, c = model_and_config
    tel = np.random.default_rng(0).normal(size=(len(PROMPTS), c.model.telemetry_dim)).astype(np.float32)
    tel = tel if with_telemetry else None
    results = generate(model, None, PROMPTS, telemetry=tel, max_new_tokens=7, eos_id=None)
    for i, (p, r) in enumerate(zip(PROMPTS, results)):
        assert r.prompt_ids == p and r.stop_reason == "length"
        assert r.ids == naive_greedy(model, p, 7, None if tel is None else tel[i])


def test_cached_logits_equal_the_full_forward(model_and_config):
    model, c = model_and_config
    seq = np.random.default_rng(1).integers(0, c.model.vocab_size, (2, 12)).astype(np.int32)
    full = fwd(model, jnp.asarray(seq)).logits
    decode = nnx.jit(lambda m, tokens, cache, index: m.decode(tokens, cache, index))
    cache = model.init_cache(2, 16)
    out, cache = decode(model, jnp.asarray(seq[:, :8]), cache, 0)  # prefill 8
    np.testing.assert_allclose(out.logits, full[:, :8], rtol=1e-5, atol=1e-5)
    for t in range(8, 12):  # then one token at a time
        out, cache = decode(model, jnp.asarray(seq[:, t:t + 1]), cache, t)
        np.testing.assert_allclose(out.logits[:, 0], full[:, t], rtol=1e-5, atol=1e-5)


def test_stops_at_eos_and_decodes_text(model_and_config):
    model, _ = model_and_config
    free = generate(model, None, PROMPTS, max_new_tokens=6)
    eos = free[1].ids[2]  # make row 1's third token the eos
    results = generate(model, FakeTokenizer(), PROMPTS, max_new_tokens=6, eos_id=eos)
    r = results[1]
    assert r.ids == free[1].ids[:2] and r.stop_reason == "eos" and r.text == " ".join(map(str, r.ids))
    for f, g in zip(free, results):  # other rows stop at their own first eos, if any
        cut = f.ids.index(eos) if eos in f.ids else len(f.ids)
        assert g.ids == f.ids[:cut]


def test_verdict_is_the_heads_at_the_end_of_the_prompt(model_and_config):
    model, c = model_and_config
    tel = np.random.default_rng(2).uniform(size=(len(PROMPTS), c.model.telemetry_dim)).astype(np.float32)
    results = generate(model, None, PROMPTS, telemetry=tel, max_new_tokens=1, hitl_threshold=0.5)
    for i, (p, r) in enumerate(zip(PROMPTS, results)):
        alone = fwd(model, jnp.asarray([p]), telemetry=jnp.asarray(tel[i:i + 1]))
        np.testing.assert_allclose(r.hitl_prob, jax.nn.sigmoid(alone.hitl_logits[0, 0]), rtol=1e-5)
        np.testing.assert_allclose(r.decision_probs, jax.nn.softmax(alone.decision_logits[0, 0]), rtol=1e-4)
        np.testing.assert_allclose(r.uncertainty, jax.nn.sigmoid(alone.uncertainty_logits[0, 0]), rtol=1e-4)
        assert r.decision == int(np.argmax(r.decision_probs))
        assert r.escalate == (r.hitl_prob >= 0.5)
        assert len(r.confidence_probs) == 4 and len(r.bias) == 6 and len(r.tool_probs) == c.model.n_tools
    lo = generate(model, None, PROMPTS, telemetry=tel, max_new_tokens=1, hitl_threshold=0.0)
    assert all(r.escalate for r in lo)


def test_sampling_is_seeded_and_top_p_narrows_to_greedy(model_and_config):
    model, _ = model_and_config
    key = jax.random.PRNGKey(3)
    a = generate(model, None, PROMPTS, max_new_tokens=5, temperature=1.5, rng=key)
    b = generate(model, None, PROMPTS, max_new_tokens=5, temperature=1.5, rng=key)
    assert [r.ids for r in a] == [r.ids for r in b]
    greedy = generate(model, None, PROMPTS, max_new_tokens=5)
    nucleus = generate(model, None, PROMPTS, max_new_tokens=5, temperature=1.0, top_p=1e-6, rng=key)
    assert [r.ids for r in nucleus] == [r.ids for r in greedy]


def test_sample_token_top_p():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]] * 2000))
    keys = jax.random.PRNGKey(0)
    draws = np.asarray(sample_token(logits, keys, jnp.float32(1.0), jnp.float32(0.7)))
    assert set(np.unique(draws)) == {0, 1}  # 0.5 + 0.3 reaches 0.7: the tail is cut
    assert abs((draws == 0).mean() - 0.625) < 0.05  # renormalised 0.5 / 0.8
    assert np.all(np.asarray(sample_token(logits, keys, jnp.float32(0.0), jnp.float32(0.7))) == 0)
