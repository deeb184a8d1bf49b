"""One declaration of the batch: the pipeline, the abstract batch the step compiles for,
the benchmark's synthetic batch and the eval batch all have its keys, shapes and dtypes."""
import jax
import numpy as np
import pytest

from promethios_jax import sharding
from promethios_jax.config import base_config
from promethios_jax.data import batch as batch_lib
from promethios_jax.data import generate, pipeline, schema, synthetic
from promethios_jax.model import heads as heads_lib
from promethios_jax.model.spec import ModelSpec


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("gov")
    generate.generate_dataset(str(d), 120, seed=0, heldout_fraction=0.1)
    return str(d)


def _config():
    c = base_config()
    c.model.max_seq_len = 384  # every byte-token prompt fits (requests may carry asides)
    c.train.global_batch_size = 8
    c.data.max_segments_per_row = 4
    c.eval.batch_size = 4
    return c


def _layout(batch: dict) -> dict:
    return {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in batch.items()}


def test_every_batch_has_the_declared_layout(data_dir):
    c = _config()
    mesh = sharding.make_mesh(c)
    declared = {k: (shape, np.dtype(dt)) for k, (shape, dt) in batch_lib.config_shapes(c).items()}
    assert list(declared) == list(batch_lib.NAMES)
    assert declared["telemetry"] == ((8, 384, schema.TELEMETRY_DIM), np.float32)
    assert declared["uncertainty"] == ((8, 4, 6), np.float32)

    from_pipeline = next(pipeline.make_train_iterator(c, data_dir))
    abstract = batch_lib.abstract_batch(c, mesh)
    drawn = synthetic.batch(c, seed=1)
    for name, got in (("pipeline", from_pipeline), ("abstract", abstract), ("synthetic", drawn)):
        assert _layout(got) == declared, name
    assert all(isinstance(a.sharding, jax.sharding.NamedSharding) for a in abstract.values())

    # Eval: one example per row (S = 1), the eval batch size, plus the eval-only fields.
    eval_declared = {k: (shape, np.dtype(dt)) for k, (shape, dt) in
                     batch_lib.config_shapes(c, c.eval.batch_size, 1, batch_lib.EVAL_FIELDS).items()}
    ev = next(pipeline.eval_batches(c, data_dir))
    host_only = {"ids", "num_valid"}
    assert set(ev) - set(eval_declared) == host_only
    assert _layout({k: v for k, v in ev.items() if k not in host_only}) == eval_declared
    eval_abstract = batch_lib.abstract_batch(c, mesh, c.eval.batch_size, 1, batch_lib.EVAL_FIELDS)
    assert _layout(eval_abstract) == eval_declared


def test_label_spaces_match_the_model_widths():
    spec = ModelSpec.from_config(base_config().model)
    assert spec.telemetry_dim == schema.TELEMETRY_DIM
    spaces = {"decision": schema.DECISIONS, "confidence": schema.CONFIDENCE_BANDS, "tool": schema.TOOLS,
              "uncertainty": schema.UNCERTAINTY_DIMS, "bias": schema.BIAS_CATEGORIES}
    for h in heads_lib.HEADS:
        if h.kind != "binary":
            assert h.width(spec) == len(spaces[h.label_key]), h.name


def test_every_head_label_is_a_declared_field_of_its_kind():
    fields = {f.name: f for f in batch_lib.FIELDS}
    for h in heads_lib.HEADS:
        f = fields[h.label_key]
        if h.kind == "soft_multilabel":
            assert h.label_key in batch_lib.SOFT_LABELS and f.dtype == np.float32 and len(f.dims) == 3, h.name
        else:
            assert h.label_key in batch_lib.CLASS_LABELS and f.dtype == np.int32 and len(f.dims) == 2, h.name
    assert set(batch_lib.CLASS_LABELS) | set(batch_lib.SOFT_LABELS) <= set(fields)


def test_synthetic_labels_lie_in_each_heads_classes():
    c = _config()
    spec = ModelSpec.from_config(c.model)
    b = synthetic.batch(c, seed=0)
    filled = b["head_mask"] > 0
    assert filled.any() and (b["segment_ids"].max(axis=1) >= 1).all()
    for key, k in synthetic.label_classes(spec).items():
        assert b[key][filled].min() >= 0 and b[key][filled].max() < k, key
    for key in batch_lib.SOFT_LABELS:
        assert ((b[key] >= 0) & (b[key] <= 1)).all()
    np.testing.assert_array_equal(synthetic.batch(c, seed=0)["tokens"], b["tokens"])
    assert not np.array_equal(synthetic.batch(c, seed=1)["tokens"], b["tokens"])
