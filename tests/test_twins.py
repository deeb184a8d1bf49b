"""Twin rows (config.data.twin_rate) and the HITL consistency loss that pairs them: an
example beside itself with neutral asides added, and the squared gap of their verdicts."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from promethios_jax.data import pipeline, templates
from promethios_jax.model import loss as loss_lib
from tests.test_data_pipeline import config, data_dir  # noqa: F401  (the module's fixture)
from tests.test_model_loss import _labels, _outputs

LABELS = ("hitl", "decision", "confidence", "tool", "conflict", "uncertainty", "bias")


def rows(data_dir, rate, n=24):  # noqa: F811
    c = config(max_len=1024, segments=8)  # two byte-tokenized copies of an example fit
    c.data.twin_rate = rate
    lengths, _ = pipeline.fitted_lengths(data_dir, c)
    packed = pipeline.PackedRows(data_dir, c, lengths)
    return packed, [packed(r) for r in range(n)]


def test_a_twin_row_holds_one_example_and_the_same_request_with_asides(data_dir):  # noqa: F811
    packed, out = rows(data_dir, 1.0)
    tok = packed.tokenizer
    twins = [r for r in out if r["twin"][1] == 1]
    assert len(twins) >= len(out) // 2
    for r in twins:
        assert r["head_mask"].tolist() == [1, 1] + [0] * 6 and r["twin"].tolist() == [0, 1] + [0] * 6
        for k in LABELS:
            np.testing.assert_array_equal(r[k][0], r[k][1], err_msg=k)
        seg = r["segment_ids"]
        np.testing.assert_array_equal(r["telemetry"][seg == 1][0], r["telemetry"][seg == 2][0])
        p0, p1 = (tok.decode(r["tokens"][seg == s][:r["head_positions"][s - 1] - (seg == s).argmax()].tolist())
                  for s in (1, 2))
        assert p1.startswith(p0) and p1 != p0
        added = p1[len(p0):].strip()
        assert added and all(a in templates.TRAIN["request_asides"] for a in split_asides(added))
        # The responses (what the LM trains on) are the same.
        assert tok.decode(r["targets"][seg == 1][r["loss_mask"][seg == 1] == 1].tolist()) == \
            tok.decode(r["targets"][seg == 2][r["loss_mask"][seg == 2] == 1].tolist())


def split_asides(text):
    pool = sorted(templates.TRAIN["request_asides"], key=len, reverse=True)
    found = []
    while text:
        a = next((a for a in pool if text.startswith(a)), None)
        if a is None:
            return [text]
        found.append(a)
        text = text[len(a):].strip()
    return found


def test_no_twins_by_default_and_rows_keep_their_plan(data_dir):  # noqa: F811
    _, plain = rows(data_dir, 0.0, n=8)
    packed, half = rows(data_dir, 0.5, n=8)
    assert all(r["twin"].sum() == 0 for r in plain)
    assert 0 < sum(r["twin"].sum() for r in half) < 8
    for a, b in zip(plain, half):  # a row not drawn for twins is its planned row
        if b["twin"].sum() == 0:
            for k in a:
                np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    with pytest.raises(ValueError, match="twin_rate"):
        c = config()
        c.data.twin_rate = 1.5
        pipeline.PackedRows(data_dir, c, packed.lengths)


def test_the_consistency_loss_is_the_squared_gap_of_twin_verdicts():
    rng = np.random.default_rng(3)
    out, b = _outputs(rng), _labels(rng)
    b["twin"] = np.zeros_like(b["head_mask"])
    b["twin"][0, 1] = 1.0  # slot 1 is slot 0's twin in row 0
    b["twin"][2, 2] = 1.0  # and slot 2 is slot 1's in row 2
    sums, counts = loss_lib.loss_sums(out, b), loss_lib.loss_counts(b)
    h = np.asarray(out.heads["hitl"], np.float64)
    gap2 = (h[0, 1] - h[0, 0]) ** 2 + (h[2, 2] - h[2, 1]) ** 2
    np.testing.assert_allclose(sums["hitl_consistency"], gap2, rtol=1e-5)
    assert float(counts["hitl_consistency"]) == 2
    cfg = {k: 1.0 for k in loss_lib.PARTS}
    off, parts_off = loss_lib.combine(sums, counts, {**cfg, "hitl_consistency": 0.0})
    on, parts_on = loss_lib.combine(sums, counts, {**cfg, "hitl_consistency": 0.5})
    assert "hitl_consistency" not in parts_off
    np.testing.assert_allclose(float(on) - float(off), 0.5 * gap2 / 2, rtol=1e-4)
    # Its gradient pulls each twin pair's logits together and touches nothing else.
    g = jax.grad(lambda o: loss_lib.combine(loss_lib.loss_sums(o, b), counts,
                                            {**{k: 0.0 for k in loss_lib.PARTS}, "hitl_consistency": 1.0})[0])(out)
    gh = np.asarray(g.heads["hitl"])
    assert np.sign(gh[0, 1]) == np.sign(h[0, 1] - h[0, 0]) == -np.sign(gh[0, 0])
    mask = np.zeros_like(gh, bool)
    mask[0, :2] = mask[2, 1:3] = True
    assert np.all(gh[~mask] == 0) and np.all(gh[mask] != 0)
    assert all(np.all(np.asarray(v) == 0) for k, v in g.heads.items() if k != "hitl")
