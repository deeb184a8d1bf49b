"""The CPU-checkable pieces of the cuDNN attention path: packed-layout runs and shardings.

cuDNN itself needs a GPU (tests/test_gpu_aot.py compiles it for H100s); here the segment
lengths/offsets it is given must describe exactly the XLA path's mask, and q/k/v must be
pinned to one sharding on every mesh the configs use.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec as P

from promethios_jax.model.layers import attention_mask, cudnn_partition_specs, segment_runs


def mask_from_runs(seqlen, offsets, length):
    """The attention cuDNN's packed layout computes: causal inside each [offset, offset+len)."""
    seqlen, offsets = np.asarray(seqlen), np.asarray(offsets)
    b = seqlen.shape[0]
    mask = np.zeros((b, length, length), bool)
    for r in range(b):
        for m in range(seqlen.shape[1]):
            if seqlen[r, m] < 0:
                assert offsets[r, m] == -1
                continue
            s, e = offsets[r, m], offsets[r, m] + seqlen[r, m]
            mask[r, s:e, s:e] = np.tril(np.ones((e - s, e - s), bool))
    return mask


def packed_rows(rng, b, length, max_docs):
    """Rows as the pipeline packs them: segments 1..k back to back, then padding (0)."""
    seg = np.zeros((b, length), np.int32)
    for r in range(b):
        pos = 0
        for doc in range(1, rng.integers(1, max_docs + 1) + 1):
            n = int(rng.integers(1, length // 2))
            if pos + n > length:
                break
            seg[r, pos:pos + n] = doc
            pos += n
    return seg


def test_segment_runs_describe_the_xla_mask():
    rng = np.random.default_rng(0)
    length, max_docs = 48, 6
    seg = packed_rows(rng, 64, length, max_docs)
    seg[0] = 1  # one document filling the row
    seg[1] = 0  # padding only
    seg[2, :length - 1], seg[2, -1] = 1, 0  # one pad row at the end
    seqlen, offsets, overflow = jax.jit(segment_runs, static_argnums=1)(jnp.asarray(seg), max_docs + 1)
    assert seqlen.shape == (64, max_docs + 1) and offsets.shape == (64, max_docs + 2)
    assert not np.asarray(overflow).any()
    idx = jnp.arange(length)
    want = np.asarray(attention_mask(idx, idx, jnp.asarray(seg), jnp.asarray(seg)))
    np.testing.assert_array_equal(mask_from_runs(seqlen, offsets, length), want)
    # Every position belongs to exactly one run, and the runs tile the row.
    np.testing.assert_array_equal(np.where(seqlen > 0, seqlen, 0).sum(1), length)
    assert (np.asarray(offsets)[:, -1] == -1).all()


def test_segment_runs_flag_rows_past_the_bound():
    seg = jnp.asarray([[1, 1, 2, 3, 0, 0], [1, 2, 2, 2, 2, 2]], jnp.int32)
    seqlen, offsets, overflow = segment_runs(seg, 3)
    np.testing.assert_array_equal(overflow, [True, False])
    np.testing.assert_array_equal(seqlen[1], [1, 5, -1])
    np.testing.assert_array_equal(offsets[1], [0, 1, -1, -1])
    np.testing.assert_array_equal(segment_runs(seg, 4)[0][0], [2, 1, 1, 2])


@pytest.mark.parametrize("shape,batch,kv_heads,want", [
    ((1, 8, 1), 16, 8, P("fsdp", None, None, None)),
    ((8, 1, 1), 16, 8, P("data", None, None, None)),
    ((1, 1, 8), 16, 8, P(None, None, "tensor", None)),
    ((2, 2, 2), 16, 8, P(("data", "fsdp"), None, "tensor", None)),
    ((2, 4, 1), 4, 8, P(None, None, None, None)),  # a batch the mesh does not divide stays whole
    ((1, 2, 4), 8, 2, P("fsdp", None, None, None)),  # kv heads the tensor axis does not divide
])
def test_cudnn_partition_specs_follow_the_mesh(shape, batch, kv_heads, want):
    assert cudnn_partition_specs(batch, kv_heads) == (None, None)  # no mesh in context
    mesh = jax.make_mesh(shape, ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        qkv, rows = cudnn_partition_specs(batch, kv_heads)
    assert qkv == want
    assert rows == P(want[0], None)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN runs on an NVIDIA GPU only")
def test_cudnn_packed_attention_matches_the_xla_path_on_a_gpu():
    # What compiling without a GPU cannot show: cuDNN's packed-layout graph builds, runs,
    # and agrees with the XLA path, forward and backward.
    from promethios_jax.model.layers import dot_product_attention

    rng = np.random.default_rng(1)
    b, length, h, kv, hd = 4, 256, 8, 4, 64
    seg = jnp.asarray(packed_rows(rng, b, length, 6))
    q, k, v = (jnp.asarray(rng.standard_normal((b, length, n, hd)), jnp.bfloat16) for n in (h, kv, kv))
    idx = jnp.arange(length)

    def loss(impl, q, k, v):
        out = dot_product_attention(q, k, v, q_idx=idx, kv_idx=idx, q_seg=seg, kv_seg=seg, impl=impl, max_segments=7)
        real = (seg > 0)[:, :, None, None]  # padding rows are nobody's output
        return jnp.sum(jnp.where(real, out.astype(jnp.float32), 0.0) ** 2), out

    (l_x, o_x), g_x = jax.jit(jax.value_and_grad(lambda *a: loss("xla", *a), argnums=(0, 1, 2), has_aux=True))(q, k, v)
    (l_c, o_c), g_c = jax.jit(jax.value_and_grad(lambda *a: loss("cudnn", *a), argnums=(0, 1, 2), has_aux=True))(q, k, v)
    real = np.asarray(seg > 0)
    np.testing.assert_allclose(np.asarray(o_c, np.float32)[real], np.asarray(o_x, np.float32)[real], atol=3e-2, rtol=3e-2)
    for a, b_ in zip(g_c, g_x):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b_, np.float32), atol=6e-2, rtol=6e-2)
