"""AdamW with bfloat16 moments tracks float32 AdamW and stores half the bytes."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from promethios_jax import optim


def test_bf16_moments_follow_fp32_adamw():
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(64, 32)), jnp.float32), "b": jnp.zeros(32)}
    mask = {"w": True, "b": False}
    ref = optax.adamw(1e-2, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, mask=mask)
    low = optim.adamw(1e-2, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, mask=mask, moments_dtype="bfloat16")
    assert optim.adamw(1e-2, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1).init(params)[0].mu["w"].dtype == jnp.float32
    p_ref, p_low, s_ref, s_low = params, params, ref.init(params), low.init(params)
    for step in range(20):
        g = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32) + 0.1 * p, p_ref)
        u, s_ref = ref.update(g, s_ref, p_ref)
        p_ref = optax.apply_updates(p_ref, u)
        u, s_low = low.update(g, s_low, p_low)
        p_low = optax.apply_updates(p_low, u)
    for k in params:
        np.testing.assert_allclose(np.asarray(p_low[k]), np.asarray(p_ref[k]), atol=2e-3)
        assert not np.allclose(np.asarray(p_low[k]), np.asarray(params[k]))
    moments = [x for x in jax.tree.leaves(s_low) if x.ndim > 0]
    assert moments and all(x.dtype == jnp.bfloat16 for x in moments)
    nbytes = lambda s: sum(x.nbytes for x in jax.tree.leaves(s))  # noqa: E731
    assert nbytes(s_low) < 0.51 * nbytes(s_ref)
    with pytest.raises(ValueError, match="moments_dtype='fp8'"):
        optim.adamw(1e-2, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, moments_dtype="fp8")
