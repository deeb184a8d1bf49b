"""The governance heads: shapes, read positions, the layer ranges they pool."""
import jax
import jax.numpy as jnp
import numpy as np

from tests.test_model_backbone import build, fwd, params_of, reference_forward


def _mlp(p, x, norm=False, eps=1e-5, prompt=None):
    if norm:
        x = x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * p["norm"]["scale"]
    if prompt is not None:
        x = np.concatenate([x, prompt], -1)
    h = x @ p["fc1"]["kernel"] + p["fc1"]["bias"]
    h = h / (1 + np.exp(-h))
    return h @ p["fc2"]["kernel"] + p["fc2"]["bias"]


def test_head_shapes_and_default_read_position():
    model, c = build()
    m = c.model
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, m.vocab_size, (3, 10)))
    hp = jnp.asarray([[2, 5, 9]] * 3)
    out = fwd(model, tokens, head_positions=hp)
    assert out.logits.shape == (3, 10, m.vocab_size)
    assert out.hitl_logits.shape == (3, 3)
    assert out.decision_logits.shape == (3, 3, m.n_decisions)
    assert out.confidence_logits.shape == (3, 3, 4)
    assert out.uncertainty_logits.shape == (3, 3, 6)
    assert out.bias_logits.shape == (3, 3, 6)
    assert out.tool_logits.shape == (3, 3, m.n_tools)
    last = fwd(model, tokens)  # head_positions=None: the last position, S = 1
    assert last.hitl_logits.shape == (3, 1)
    for field in ("hitl_logits", "decision_logits", "tool_logits", "uncertainty_logits"):
        np.testing.assert_allclose(getattr(last, field)[:, 0], getattr(out, field)[:, 2], rtol=1e-5, atol=1e-6)


def test_heads_read_their_layers_at_their_positions():
    # uncertainty pools layers 2-3, tool reads layer 4; the others read the final normed state;
    # bias and tool also read the mean of the final normed states over the prompt (up to their position).
    model, c = build()
    tokens = np.random.default_rng(1).integers(0, c.model.vocab_size, (2, 9))
    hp = np.array([[3, 8], [0, 6]])
    out = fwd(model, jnp.asarray(tokens), head_positions=jnp.asarray(hp))
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), params_of(model))
    _, states, final = reference_forward(params_of(model), model.spec, tokens)
    rows = np.arange(2)[:, None]
    heads = p["heads"]
    np.testing.assert_allclose(out.hitl_logits, _mlp(heads["hitl"], final[rows, hp])[..., 0], rtol=1e-4, atol=1e-5)
    prompt = np.stack([np.stack([final[r, :k + 1].mean(0) for k in hp[r]]) for r in range(2)])
    np.testing.assert_allclose(out.bias_logits, _mlp(heads["bias"], final[rows, hp], prompt=prompt), rtol=1e-4,
                               atol=1e-5)
    pooled = states[1:3].mean(0)[rows, hp]
    np.testing.assert_allclose(out.uncertainty_logits, _mlp(heads["uncertainty"], pooled, norm=True), rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(out.tool_logits, _mlp(heads["tool"], states[3][rows, hp], norm=True, prompt=prompt),
                               rtol=1e-4, atol=1e-5)


def test_heads_do_not_see_tokens_after_their_position():
    model, c = build()
    rng = np.random.default_rng(2)
    tokens = rng.integers(0, c.model.vocab_size, (1, 10))
    changed = tokens.copy()
    changed[0, 5:] = (changed[0, 5:] + 3) % c.model.vocab_size
    hp = jnp.asarray([[4]])
    a, b = fwd(model, jnp.asarray(tokens), head_positions=hp), fwd(model, jnp.asarray(changed), head_positions=hp)
    for field in ("hitl_logits", "decision_logits", "confidence_logits", "uncertainty_logits", "bias_logits",
                  "tool_logits"):
        np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=1e-6, atol=1e-6)


def test_prompt_mean_stays_inside_its_example():
    # Two packed examples: the second's heads must not read the first's tokens (its prompt
    # mean covers only its own segment), nor the tokens after their position.
    model, c = build()
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, c.model.vocab_size, (1, 12))
    seg = jnp.asarray([[1] * 5 + [2] * 6 + [0]])
    hp = jnp.asarray([[3, 8]])
    changed = tokens.copy()
    changed[0, :5] = (changed[0, :5] + 1) % c.model.vocab_size  # the first example only
    changed[0, 9:] = (changed[0, 9:] + 1) % c.model.vocab_size  # after the second's head position
    a = fwd(model, jnp.asarray(tokens), segment_ids=seg, head_positions=hp)
    b = fwd(model, jnp.asarray(changed), segment_ids=seg, head_positions=hp)
    for field in ("bias_logits", "tool_logits"):
        np.testing.assert_allclose(getattr(a, field)[:, 1], getattr(b, field)[:, 1], rtol=1e-6, atol=1e-6)
        assert not np.allclose(getattr(a, field)[:, 0], getattr(b, field)[:, 0])
