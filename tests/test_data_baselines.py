"""Telemetry-only HITL baselines, confidence intervals and the byte n-gram."""
import numpy as np
import pytest

from promethios_jax.data import baselines as B
from promethios_jax.data import generate, schema
from promethios_jax.data.records import load_split


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    d = tmp_path_factory.mktemp("gov")
    generate.generate_dataset(str(d), 2500, seed=1, eval_examples=400)
    return {s: load_split(str(d), s) for s in generate.SPLITS}


@pytest.fixture(scope="module")
def fitted(splits):
    return B.fit_baselines(splits["train"])


def rec(domain="general", hitl=0, **kw):
    t = dict(trust=0.95, emotion="CALM", intensity=0.1, verify=1.0, attest=1.0, bound=1.0,
             decision="APPROVED", model="CONSENSUS")
    t.update(kw)
    return {"domain": domain, "telemetry": t, "labels": {"hitl": hitl}}


def test_rules_on_hand_made_rows():
    rows = [rec("healthcare", trust=0.74), rec("finance", trust=0.74), rec(emotion="ANXIOUS", intensity=0.7),
            rec(emotion="ANXIOUS", intensity=0.69), rec(verify=0.0, attest=0.5), rec()]
    assert B.trust_gate().predict(rows).tolist() == [1, 0, 0, 0, 0, 0]
    assert B.two_field_rule().predict(rows).tolist() == [1, 0, 1, 0, 0, 0]
    assert B.oracle().predict(rows).tolist() == [schema.apply_rule(r["telemetry"], r["domain"])["hitl"]
                                                  for r in rows] == [1, 0, 1, 0, 1, 0]


def test_majority_and_one_field_are_fit_on_train():
    rows = [rec(trust=t / 100, hitl=int(t < 50)) for t in range(100)]
    assert B.majority(rows).predict(rows[:3]).tolist() == [0, 0, 0]  # 50 vs 50: ties go to proceed
    assert B.majority(rows[:60]).predict(rows[80:]).tolist() == [1] * 20
    one = B.one_field_threshold(rows)
    assert one.description == "escalate iff trust < 0.50"
    assert (one.predict(rows) == B.hitl_labels(rows)).all()
    cat = [rec(emotion=e, intensity=0.1 * i, hitl=int(e == "FRUSTRATED"))
           for i, e in enumerate(schema.EMOTIONS * 5)]
    one = B.one_field_threshold(cat)
    assert "emotion" in one.description and (one.predict(cat) == B.hitl_labels(cat)).all()


def test_baselines_on_the_splits(splits, fitted):
    assert list(fitted) == ["majority", "one_field", "trust_gate", "two_field", "mlp", "oracle"]
    scores = {s: B.score(fitted, splits[s]) for s in generate.EVAL_SPLITS}
    for s, sc in scores.items():
        for name, v in sc.items():
            assert v["n"] == len(splits[s]) and v["ci_low"] <= v["accuracy"] <= v["ci_high"], (s, name)
            assert v["evidence_slice"]["n"] == int(schema.rule_records(splits[s])["evidence"].sum())
        assert sc["oracle"]["accuracy"] > 0.95
    held = scores["heldout"]
    assert held["majority"]["accuracy"] < held["one_field"]["accuracy"] < held["trust_gate"]["accuracy"] \
        < held["two_field"]["accuracy"] < held["oracle"]["accuracy"]
    # Where the evidence decides, the rules that ignore it are at chance; the MLP reads the evidence.
    ev = scores["shift_evidence"]
    assert abs(ev["two_field"]["accuracy"] - 0.5) < 0.05 and abs(ev["trust_gate"]["accuracy"] - 0.5) < 0.05
    assert ev["mlp"]["accuracy"] > 0.65
    assert held["mlp"]["accuracy"] > held["trust_gate"]["accuracy"]


def test_mlp_is_deterministic_and_a_probability(splits, fitted):
    again = B.mlp(splits["train"])
    held = splits["heldout"]
    p = fitted["mlp"].prob(held)
    np.testing.assert_array_equal(p, again.prob(held))
    assert ((p > 0) & (p < 1)).all() and 0.05 < p.mean() < 0.6
    with pytest.raises(ValueError, match="at least 10"):
        B.mlp(splits["train"][:5])


def test_wilson_interval():
    lo, hi = B.wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = B.wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    assert B.wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert all(np.isnan(B.wilson_interval(0, 0)))
    acc = B.accuracy([1, 0, 1, 1], [1, 1, 1, 1])
    assert acc["accuracy"] == 0.75 and acc["n"] == 4 and acc["ci_low"] < 0.75 < acc["ci_high"]


def test_bootstrap_interval():
    x = np.random.default_rng(0).normal(1.0, 1.0, 2000)
    lo, hi = B.bootstrap_interval(np.mean, x, n_boot=400)
    assert lo < x.mean() < hi and hi - lo == pytest.approx(2 * 1.96 / np.sqrt(2000), rel=0.2)
    assert (lo, hi) == B.bootstrap_interval(np.mean, x, n_boot=400)  # seeded
    a, b = np.arange(50) % 2, np.ones(50)
    lo, hi = B.bootstrap_interval(lambda p, y: (p == y).mean(), a, b, n_boot=200)  # rows resampled together
    assert lo < 0.5 < hi


def test_byte_ngram_by_hand():
    m = B.ByteNgram(order=1).fit(["ab"])
    # unigram: a, b and the end each seen once out of 3; discount 0.75 spread over uniform 1/257
    p = lambda c: (c - 0.75) / 3 + 0.75 * 3 / 3 / 257  # noqa: E731
    total, nbytes = m.nats(["ab"])
    assert nbytes == 2 and total == pytest.approx(-3 * np.log(p(1)))
    assert m.nats(["z"])[0] == pytest.approx(-np.log(0.75 / 257) - np.log(p(1)))
    seen = B.ByteNgram(order=3).fit(["hello world"] * 5)
    assert seen.nats_per_byte(["hello world"]) < 0.1 < seen.nats_per_byte(["world hello"])
    with pytest.raises(ValueError, match="fit"):
        B.ByteNgram().nats(["x"])


def test_byte_ngram_on_the_splits(splits):
    nats = B.ngram_nats_per_byte(splits["train"], {s: splits[s] for s in generate.EVAL_SPLITS})
    assert 0.3 < nats["heldout"] < 1.0
    assert nats["heldout_templates"] > nats["heldout"] + 0.5  # wordings it never saw
