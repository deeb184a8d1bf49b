"""The generator: the governance rule, the mix, determinism, leaks, splits, bad input."""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from promethios_jax.data import generate, schema, templates
from promethios_jax.data.records import load_split

N = 2000


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("gov")
    manifest = generate.generate_dataset(str(d), N, seed=0, heldout_fraction=0.03)
    recs = {s: load_split(str(d), s) for s in ("train", "heldout")}
    return d, manifest, recs


def _tel(**kw):
    t = dict(trust=0.95, emotion="CALM", intensity=0.1, verify=1.0, attest=1.0, bound=1.0,
             decision="APPROVED", model="CONSENSUS")
    t.update(kw)
    return t


def test_rule_constants():
    assert schema.DOMAIN_TRUST["healthcare"] == 0.75
    assert schema.DOMAIN_TRUST["legal"] == 0.8
    assert schema.DOMAIN_TRUST["finance"] == 0.7
    assert {"healthcare", "legal", "finance", "general"} <= set(schema.DOMAINS)
    assert schema.HITL_THRESHOLD == 0.4
    assert 0.01 <= schema.LABEL_NOISE_RATE <= 0.05
    assert max(schema.RISK_WEIGHTS.values()) < schema.HITL_THRESHOLD
    assert (Path(generate.__file__).parent / "RULES.md").is_file()
    assert "RULES.md" in generate.__doc__


@pytest.mark.parametrize("domain", schema.DOMAINS)
def test_rule_domain_trust_requirement(domain):
    req = schema.DOMAIN_TRUST[domain]
    below = schema.apply_rule(_tel(trust=round(req - 0.01, 2)), domain)
    at = schema.apply_rule(_tel(trust=req), domain)
    assert below["hitl"] == 1 and below["band"] == "low" and below["decision"] == "escalate"
    assert at["hitl"] == 0
    # The same trust passes in a laxer domain and escalates in a stricter one.
    assert schema.apply_rule(_tel(trust=0.72), "finance")["hitl"] == 0
    assert schema.apply_rule(_tel(trust=0.72), "healthcare")["hitl"] == 1


def test_rule_escalation_threshold():
    # risk = 0.30 (1 - verify) + 0.20 (1 - attest): exactly 0.4 escalates, just under does not.
    assert schema.apply_rule(_tel(verify=0.0, attest=0.5), "general")["risk"] == pytest.approx(0.4)
    assert schema.apply_rule(_tel(verify=0.0, attest=0.5), "general")["hitl"] == 1
    assert schema.apply_rule(_tel(verify=0.0, attest=0.55), "general")["hitl"] == 0


def test_rule_precedence():
    # Distress outranks strong evidence and low trust alike.
    r = schema.apply_rule(_tel(emotion="DISTRESSED", intensity=0.7), "legal")
    assert (r["hitl"], r["band"], r["conflict"]) == (1, "uncertain_emotional", "emotion_vs_evidence")
    assert schema.apply_rule(_tel(emotion="ANXIOUS", intensity=0.9, trust=0.3), "legal")["band"] == \
        "uncertain_emotional"
    assert schema.apply_rule(_tel(emotion="ANXIOUS", intensity=0.69), "legal")["hitl"] == 0
    assert schema.apply_rule(_tel(emotion="CALM", intensity=1.0), "legal")["hitl"] == 0
    # High trust with low verification: evidence outranks trust.
    r = schema.apply_rule(_tel(trust=0.99, verify=0.2, attest=0.5, bound=0.6, decision="PENDING",
                               model="MAJORITY"), "legal")
    assert (r["hitl"], r["conflict"]) == (1, "trust_vs_verification")
    r = schema.apply_rule(_tel(trust=0.99, verify=0.3), "legal")  # the rest of the evidence is strong
    assert (r["hitl"], r["conflict"]) == (0, "trust_vs_verification")
    # An upstream approval does not override risk; an upstream denial with clear evidence is declined.
    r = schema.apply_rule(_tel(trust=0.65, verify=0.0, attest=0.4), "general")
    assert (r["hitl"], r["conflict"]) == (1, "evidence_vs_state")
    r = schema.apply_rule(_tel(decision="DENIED"), "general")
    assert (r["hitl"], r["decision"], r["conflict"]) == (0, "decline", "evidence_vs_state")
    assert schema.apply_rule(_tel(), "general")["decision"] == "proceed"
    assert schema.apply_rule(_tel(trust=0.65), "general")["decision"] == "proceed_with_safeguards"


def test_no_single_field_decides():
    worst = dict(verify=0.0, attest=0.0, bound=0.0, decision="DENIED", model="SPLIT", intensity=1.0,
                 emotion="DISTRESSED")
    for k, v in worst.items():
        if k in ("intensity", "emotion"):
            continue  # the distress gate needs both
        assert schema.apply_rule(_tel(**{k: v}), "general")["hitl"] == 0, k
    assert schema.apply_rule(_tel(intensity=1.0), "general")["hitl"] == 0
    assert schema.apply_rule(_tel(emotion="DISTRESSED"), "general")["hitl"] == 0


def test_single_fields_predict_far_below_the_rule(data):
    _, manifest, recs = data
    rows = recs["train"]
    y = np.array([r["labels"]["hitl"] for r in rows])
    best = {}
    for k in schema.TELEMETRY_KEYS + ("domain",):
        x = np.array([r["domain"] if k == "domain" else r["telemetry"][k] for r in rows])
        if k in schema.NUMERIC_KEYS:
            x = x.astype(float)
            best[k] = max(max(((x >= t) == y).mean(), ((x < t) == y).mean()) for t in np.unique(x))
        else:
            best[k] = sum(max((y[x == v] == 1).sum(), (y[x == v] == 0).sum()) for v in np.unique(x)) / len(y)
    assert max(best.values()) < 0.85, best
    assert manifest["hitl_ceiling_train"] > max(best.values()) + 0.1


def test_noise_rate_and_ceiling(data):
    _, manifest, recs = data
    every = recs["train"] + recs["heldout"]
    disagree = [r for r in every if schema.apply_rule(r["telemetry"], r["domain"])["hitl"] != r["labels"]["hitl"]]
    assert len(disagree) == round(N * schema.LABEL_NOISE_RATE)
    held = recs["heldout"]
    acc = np.mean([schema.apply_rule(r["telemetry"], r["domain"])["hitl"] == r["labels"]["hitl"] for r in held])
    assert manifest["hitl_ceiling"] == pytest.approx(acc)
    assert 0.9 < manifest["hitl_ceiling_train"] < 1.0
    rate = np.mean([r["labels"]["hitl"] for r in held])
    assert manifest["hitl_majority_baseline"] == pytest.approx(max(rate, 1 - rate))
    assert manifest["label_noise_rate"] == schema.LABEL_NOISE_RATE


def test_mix(data):
    _, manifest, recs = data
    every = recs["train"] + recs["heldout"]
    cats = {c: sum(r["category"] == c for r in every) for c in schema.CATEGORIES}
    total_w = sum(schema.CATEGORY_WEIGHTS.values())
    for c, w in schema.CATEGORY_WEIGHTS.items():
        assert abs(cats[c] - N * w / total_w) <= 1, (c, cats[c])
    for b, w in schema.BAND_WEIGHTS.items():  # label noise moves a few examples between bands
        assert abs(sum(r["confidence_band"] == b for r in every) / N - w) < 0.025, b
    for d in schema.DOMAINS:
        assert abs(sum(r["domain"] == d for r in every) / N - schema.DOMAIN_WEIGHTS[d]) < 0.01
    by = manifest["counts"]["by_split"]
    assert manifest["counts"]["total"] == N == manifest["counts"]["train"] + manifest["counts"]["heldout"]
    for s in ("train", "heldout"):
        assert sum(by[s]["category"].values()) == len(recs[s])
        assert set(by[s]) == {"category", "domain", "confidence_band"}
    assert 0.25 < manifest["label_rates"]["train"]["hitl"] < 0.36


def test_labels_are_consistent(data):
    _, _, recs = data
    for r in recs["train"] + recs["heldout"]:
        lab = r["labels"]
        hitl = lab["hitl"]
        assert set(r) == {"id", "split", "category", "domain", "confidence_band", "telemetry", "prompt",
                          "response", "labels"}
        assert set(r["telemetry"]) == set(schema.TELEMETRY_KEYS)
        assert (r["confidence_band"] in schema.HITL_BANDS) == bool(hitl)
        assert lab["confidence"] == r["confidence_band"]
        assert (lab["decision"] == "escalate") == bool(hitl)
        assert (lab["tool"] == "human_handoff") == bool(hitl)
        assert lab["tool"] in schema.TOOLS and lab["conflict"] in schema.CONFLICTS
        assert list(lab["uncertainty"]) == list(schema.UNCERTAINTY_DIMS)
        assert all(0.0 <= v <= 1.0 for v in lab["uncertainty"].values())
        assert list(lab["bias"]) == list(schema.BIAS_CATEGORIES)
        assert set(lab["bias"].values()) <= {0, 1}


def test_prompt_carries_the_tags(data):
    _, _, recs = data
    for r in recs["train"][:300]:
        tags = dict(re.findall(r"<gov:([a-z]+)=([^>]+)>", r["prompt"]))
        assert tags.pop("domain") == r["domain"]
        assert list(tags) == list(schema.TELEMETRY_KEYS)
        for k, v in tags.items():
            t = r["telemetry"][k]
            assert (float(v) == t) if k in schema.NUMERIC_KEYS else (v == t)


def test_responses_never_leak_telemetry(data):
    _, _, recs = data
    enums = schema.EMOTIONS + schema.STATES + schema.MODELS
    for r in recs["train"] + recs["heldout"]:
        resp = r["response"]
        assert "<gov" not in resp and "<" not in resp, resp
        assert "telemetry" not in resp.lower() and "score" not in resp.lower()
        assert not re.search(r"\d\.\d|\d%|\.\d\d", resp), resp
        for e in enums:
            assert e not in resp, (e, resp)
        for e in schema.EMOTIONS:
            assert not re.search(rf"\b{e.lower()}\b", resp.lower()), (e, resp)
        for k in schema.NUMERIC_KEYS:
            v = r["telemetry"][k]
            assert f"{v:.2f}" not in resp and f"{v}" not in resp.split() and k not in resp.lower().split()


def test_hitl_responses_hand_over(data):
    _, _, recs = data
    every = recs["train"] + recs["heldout"]
    for r in every:
        humans = templates.DOMAIN_SLOTS[r["domain"]]["human"]
        if r["labels"]["hitl"]:
            assert any(h in r["response"] for h in humans), r["response"]
    hitl_texts = {r["response"] for r in every if r["labels"]["hitl"]}
    other_texts = {r["response"] for r in every if not r["labels"]["hitl"]}
    assert not hitl_texts & other_texts
    support = [r for r in every if r["confidence_band"] == "uncertain_emotional"]
    starts = tuple(t.split("$")[0][:20] for t in templates.SUPPORT_TEMPLATES)
    assert support and all(r["response"].startswith(starts) for r in support)


def test_scenarios_vary(data):
    _, _, recs = data
    every = recs["train"] + recs["heldout"]
    for c in schema.CATEGORIES:
        assert len(templates.SCENARIOS[c]) >= 8
        reqs = {r["prompt"].split("\n", 1)[1] for r in every if r["category"] == c}
        assert len(reqs) > 0.9 * sum(r["category"] == c for r in every)
    saas = [r for r in every if r["category"] == "saas_development" and r["labels"]["decision"] == "proceed"]
    assert any("def " in r["response"] for r in saas)


def test_heldout_never_repeats_train(data):
    _, manifest, recs = data
    key = lambda r: (r["prompt"], json.dumps(r["telemetry"], sort_keys=True))  # noqa: E731
    train = {key(r) for r in recs["train"]}
    assert not any(key(r) in train for r in recs["heldout"])
    assert len(recs["heldout"]) == round(0.03 * N) == manifest["counts"]["heldout"]
    ids = [r["id"] for r in recs["train"] + recs["heldout"]]
    assert len(set(ids)) == N
    assert all(r["split"] == "train" for r in recs["train"]) and all(r["split"] == "heldout" for r in recs["heldout"])


def test_same_seed_same_bytes(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate.generate_dataset(str(a), 300, seed=7)
    generate.generate_dataset(str(b), 300, seed=7)
    generate.generate_dataset(str(c), 300, seed=8)
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir()) and any(n.endswith(".array_record") for n in names)
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n
    shard = "train-00000-of-00001.array_record"
    assert (a / shard).read_bytes() != (c / shard).read_bytes()
    assert [r["prompt"] for r in load_split(str(a), "train")] != \
        [r["prompt"] for r in load_split(str(c), "train")]


@pytest.mark.parametrize("n", [0, -5])
def test_bad_num_examples(tmp_path, n):
    with pytest.raises(ValueError, match="num_examples"):
        generate.generate_dataset(str(tmp_path / "x"), n, 0)


def test_unwritable_out_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match=re.escape(str(blocker / "sub"))):
        generate.generate_dataset(str(blocker / "sub"), 10, 0)
    with pytest.raises(ValueError, match="heldout_fraction"):
        generate.generate_dataset(str(tmp_path / "y"), 10, 0, heldout_fraction=1.5)


def test_cli_errors_name_the_flag(tmp_path):
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "promethios_jax.data.generate", "--num_examples=0",
                        f"--out={tmp_path / 'o'}"], capture_output=True, text=True, cwd=root)
    assert r.returncode == 2 and "--num_examples" in r.stderr
    blocker = tmp_path / "f"
    blocker.write_text("")
    r = subprocess.run([sys.executable, "-m", "promethios_jax.data.generate", "--num_examples=5",
                        f"--out={blocker / 'd'}"], capture_output=True, text=True, cwd=root)
    assert r.returncode == 2 and "--out" in r.stderr and str(blocker / "d") in r.stderr
