"""Frozen parts: no optimizer state, no change, bit for bit."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from promethios_jax import trainable
from promethios_jax.model import GovernanceTransformer
from tests.util import small_config


@pytest.fixture(scope="module")
def params():
    c = small_config()
    model = GovernanceTransformer(c.model, rngs=nnx.Rngs(0))
    p = nnx.to_pure_dict(nnx.split(model, nnx.Param)[1])
    # A -0.0 in a frozen leaf: adding a zero update would flip its sign bit.
    p["norm"]["scale"] = p["norm"]["scale"].at[0].set(-0.0)
    return c, model, p


def test_masks_select_the_named_groups(params):
    _, _, p = params
    heads = trainable.mask(p, "heads")
    assert all(jax.tree.leaves(heads["heads"])) and not any(jax.tree.leaves(heads["layers_0"]))
    assert not any(jax.tree.leaves(heads["telemetry_encoder"])) and not heads["embed_tokens"]["embedding"]
    both = trainable.mask(p, "heads+telemetry")
    assert all(jax.tree.leaves(both["telemetry_encoder"])) and not any(jax.tree.leaves(both["norm"]))
    assert all(jax.tree.leaves(trainable.mask(p, "all")))
    back = trainable.mask(p, "backbone")
    assert all(jax.tree.leaves(back["layers_1"])) and back["lm_head"]["kernel"] and not any(
        jax.tree.leaves(back["heads"]))
    on, total = trainable.count(p, heads)
    assert 0 < on < total
    with pytest.raises(trainable.TrainableError, match="unknown part 'head'; known: all, backbone"):
        trainable.mask(p, "head")
    with pytest.raises(trainable.TrainableError, match="belong to no trainable group"):
        trainable.mask({**p, "adapter": {"w": jnp.zeros(2)}}, "all")


def test_frozen_params_keep_their_bits_and_hold_no_optimizer_state(params):
    c, model, p = params
    graphdef = nnx.graphdef(model)
    mask = trainable.mask(p, "heads+telemetry")
    tx = trainable.masked(optax.adamw(1e-2, weight_decay=0.1), mask)
    opt = tx.init(p)
    # No optimizer array shaped like a frozen parameter: only the trainable leaves have moments.
    n_train, _ = trainable.count(p, mask)
    opt_elems = sum(x.size for x in jax.tree.leaves(opt) if hasattr(x, "size") and x.ndim > 0)
    assert opt_elems == 2 * n_train

    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, 300, (2, 16)), jnp.int32)
    telemetry = jnp.asarray(rng.normal(size=(2, 16, c.model.telemetry_dim)), jnp.float32)

    def loss(q):
        m = nnx.merge(graphdef, _state(model, q))
        out = m(tokens, telemetry=telemetry)
        return jnp.mean(out.logits ** 2) + jnp.mean(out.hitl_logits ** 2) + jnp.mean(out.decision_logits ** 2)

    @jax.jit
    def step(q, o):
        train, frozen = trainable.split(q, mask)
        g = jax.grad(lambda x: loss(trainable.join(x, frozen)))(train)
        g = trainable.join(g, jax.tree.map(jnp.zeros_like, frozen))
        u, o = tx.update(g, o, q)
        return trainable.apply_updates(q, u, mask), o, g

    q = p
    for _ in range(3):
        q, opt, g = step(q, opt)
    flat_p, flat_q, flat_m = (jax.tree_util.tree_leaves_with_path(t) for t in (p, q, mask))
    changed = 0
    for (path, a), (_, b), (_, t) in zip(flat_p, flat_q, flat_m):
        a, b = np.asarray(a), np.asarray(b)
        if t:
            changed += not np.array_equal(a, b)
        else:
            assert a.tobytes() == b.tobytes(), jax.tree_util.keystr(path)
    assert changed > 0
    assert all(not np.any(np.asarray(x)) for x, t in zip(jax.tree.leaves(g), jax.tree.leaves(mask)) if not t)
    assert trainable.masked(optax.sgd(1.0), trainable.mask(p, "all")).init(p) == optax.sgd(1.0).init(p)


def _state(model, q):
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, q)
    return state
