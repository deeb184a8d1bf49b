"""The generator: the governance rule, the mix, determinism, leaks, splits, bad input."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from promethios_jax.data import generate, prompt as prompt_lib, schema, templates, wording
from promethios_jax.data.records import load_split

N = 2000
EVAL = 400  # examples per evaluation split
POOL = N - round(0.03 * N) + EVAL  # train and heldout are drawn together


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("gov")
    manifest = generate.generate_dataset(str(d), N, seed=0, heldout_fraction=0.03, eval_examples=EVAL)
    recs = {s: load_split(str(d), s) for s in generate.SPLITS}
    return d, manifest, recs


def _tel(**kw):
    t = dict(trust=0.95, emotion="CALM", intensity=0.1, verify=1.0, attest=1.0, bound=1.0,
             decision="APPROVED", model="CONSENSUS")
    t.update(kw)
    return t


def test_telemetry_vector_is_raw():
    """The model's telemetry carries the tags and the domain, nothing computed from the rule."""
    assert schema.TELEMETRY_DIM == len(schema.TELEMETRY_FEATURES) == 27
    for name in schema.TELEMETRY_FEATURES:
        assert name == "present" or name in schema.NUMERIC_KEYS or name.split("=")[0] in (
            "domain", "emotion", "decision", "model"), name
    t = _tel(trust=0.72, emotion="ANXIOUS", intensity=0.8)
    a, b = schema.telemetry_vector(t, "finance"), schema.telemetry_vector(t, "healthcare")
    diff = {schema.TELEMETRY_FEATURES[i] for i in np.flatnonzero(a != b)}
    assert diff == {"domain=finance", "domain=healthcare"}  # the requirement is not an input
    for k in schema.NUMERIC_KEYS:
        assert a[schema.TELEMETRY_FEATURES.index(k)] == pytest.approx(t[k])
    calm = schema.telemetry_vector(_tel(trust=0.72, emotion="CALM", intensity=0.8), "finance")
    assert {schema.TELEMETRY_FEATURES[i] for i in np.flatnonzero(a != calm)} == {"emotion=ANXIOUS", "emotion=CALM"}


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


def _disagree(records) -> int:
    return sum(schema.apply_rule(r["telemetry"], r["domain"])["hitl"] != r["labels"]["hitl"] for r in records)


def test_noise_rate_and_ceiling(data):
    _, manifest, recs = data
    assert _disagree(recs["train"] + recs["heldout"]) == round(POOL * schema.LABEL_NOISE_RATE)
    for split in generate.SPLITS:
        rows = recs[split]
        acc = 1 - _disagree(rows) / len(rows)
        fig = manifest["splits"][split]
        assert fig["count"] == len(rows) == manifest["counts"][split]
        assert fig["hitl_ceiling"] == pytest.approx(acc) == manifest[f"hitl_ceiling_{split}"]
        rate = np.mean([r["labels"]["hitl"] for r in rows])
        assert fig["hitl_rate"] == pytest.approx(rate)
        assert fig["hitl_majority_baseline"] == pytest.approx(max(rate, 1 - rate))
        if split not in ("train", "heldout"):
            assert _disagree(rows) == round(EVAL * schema.LABEL_NOISE_RATE), split
    assert manifest["hitl_ceiling"] == manifest["splits"]["heldout"]["hitl_ceiling"]
    assert manifest["hitl_majority_baseline"] == manifest["splits"]["heldout"]["hitl_majority_baseline"]
    assert 0.9 < manifest["hitl_ceiling_train"] < 1.0 and manifest["ceiling_split"] == "heldout"
    assert manifest["label_noise_rate"] == schema.LABEL_NOISE_RATE


def test_mix(data):
    _, manifest, recs = data
    every = recs["train"] + recs["heldout"]
    cats = {c: sum(r["category"] == c for r in every) for c in schema.CATEGORIES}
    total_w = sum(schema.CATEGORY_WEIGHTS.values())
    for c, w in schema.CATEGORY_WEIGHTS.items():
        assert abs(cats[c] - POOL * w / total_w) <= 1, (c, cats[c])
    for b, w in schema.BAND_WEIGHTS.items():  # label noise moves a few examples between bands
        assert abs(sum(r["confidence_band"] == b for r in every) / POOL - w) < 0.025, b
    for d in schema.DOMAINS:
        assert abs(sum(r["domain"] == d for r in every) / POOL - schema.DOMAIN_WEIGHTS[d]) < 0.01
    by = manifest["counts"]["by_split"]
    assert manifest["counts"]["train"] == N - round(0.03 * N) and manifest["counts"]["heldout"] == EVAL
    assert manifest["counts"]["total"] == POOL + 3 * EVAL == sum(len(r) for r in recs.values())
    for s in generate.SPLITS:
        assert sum(by[s]["category"].values()) == len(recs[s])
        assert set(by[s]) == {"category", "domain", "confidence_band"}
    assert 0.25 < manifest["label_rates"]["train"]["hitl"] < 0.36


def test_labels_are_consistent(data):
    _, _, recs = data
    for r in (r for rows in recs.values() for r in rows):
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
    for r in (r for rows in recs.values() for r in rows):
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
    every = [r for rows in recs.values() for r in rows]
    for r in every:
        humans = templates.DOMAIN_SLOTS[r["domain"]]["human"]
        if r["labels"]["hitl"]:
            assert any(h in r["response"] for h in humans), r["response"]
    hitl_texts = {r["response"] for r in every if r["labels"]["hitl"]}
    other_texts = {r["response"] for r in every if not r["labels"]["hitl"]}
    assert not hitl_texts & other_texts
    support = [r for r in every if r["confidence_band"] == "uncertain_emotional"]
    starts = tuple(t.split("$")[0][:20] for tpl in (templates.TRAIN, templates.HELDOUT)
                   for t in tpl["support_templates"])
    assert support and all(r["response"].startswith(starts) for r in support)


def test_every_outcome_shows_in_the_first_words(data):
    """A safeguarded answer opens with its note, like hand-overs and refusals open with theirs,
    so the words that enact the outcome come right after <assess> (RULES.md "Response wording")."""
    _, _, recs = data
    every = [r for rows in recs.values() for r in rows]
    notes = tuple(t.split("$")[0] for tpl in (templates.TRAIN, templates.HELDOUT) for t in tpl["safeguard_notes"])
    safe = [r for r in every if r["labels"]["decision"] == "proceed_with_safeguards"]
    assert safe and all(r["response"].startswith(notes) for r in safe)
    others = [r["response"] for r in every if r["labels"]["decision"] != "proceed_with_safeguards"]
    assert not any(n in t for t in others for n in notes)


def test_scenarios_vary(data):
    _, _, recs = data
    every = recs["train"] + recs["heldout"]
    for c in schema.CATEGORIES:
        assert len(templates.SCENARIOS[c]) >= 8
        reqs = {prompt_lib.split_prompt(r["prompt"])[1] for r in every if r["category"] == c}
        assert len(reqs) > 0.9 * sum(r["category"] == c for r in every)
    saas = [r for r in every if r["category"] == "saas_development" and r["labels"]["decision"] == "proceed"]
    assert any("def " in r["response"] for r in saas)


def test_no_prompt_or_id_repeats_across_splits(data):
    _, manifest, recs = data
    every = [r for rows in recs.values() for r in rows]
    assert len({r["prompt"] for r in every}) == len(every) == len({r["id"] for r in every})
    for split, rows in recs.items():
        assert rows and all(r["split"] == split for r in rows)


def _fragments(texts) -> set:
    """The longest literal run of each template (between $-slots), where it is >= 12 chars."""
    out = set()
    for t in texts:
        runs = [x.strip() for x in re.split(r"\$\{?[a-z_0-9]+\}?", t)]
        best = max(runs, key=len)
        if len(best) >= 12:
            out.add(best)
    return out


def _template_texts(tpl: dict, side: str) -> list:
    scen = [s for rows in tpl["scenarios"].values() for s in rows]
    if side == "request":
        return ([s[0] for s in scen] + [f for v in tpl["framings"].values() for f in v] + tpl["request_closers"]
                + tpl["request_asides"])
    return ([s[2] for s in scen] + tpl["safeguard_notes"] + tpl["decline_templates"]
            + tpl["escalate_templates"] + tpl["support_templates"] + tpl["proceed_closers"])


def test_heldout_templates_never_occur_in_training(data):
    _, manifest, recs = data
    assert manifest["splits"]["heldout_templates"]["templates"] == "heldout"
    train_text = {"request": [prompt_lib.split_prompt(r["prompt"])[1] for r in recs["train"]],
                  "response": [r["response"] for r in recs["train"]]}
    held_text = {"request": [prompt_lib.split_prompt(r["prompt"])[1] for r in recs["heldout_templates"]],
                 "response": [r["response"] for r in recs["heldout_templates"]]}
    for side in ("request", "response"):
        reserved = _fragments(_template_texts(templates.HELDOUT, side))
        trained = _fragments(_template_texts(templates.TRAIN, side))
        assert reserved and trained and not reserved & trained
        for text in train_text[side]:
            assert not any(f in text for f in reserved), text
        for text in held_text[side]:
            assert not any(f in text for f in trained), text
        # every reserved wording is used
        assert all(any(f in t for t in held_text[side]) for f in reserved), side
    scen = {c: [s[0].split("$")[0] for s in rows] for c, rows in templates.HELDOUT["scenarios"].items()}
    for r in recs["heldout_templates"]:
        assert any(p.lower() in r["prompt"].lower() for p in scen[r["category"]]), r["prompt"]


def test_shift_splits(data):
    _, manifest, recs = data
    for split in ("shift_boundary", "shift_evidence"):
        m = schema.rule_records(recs[split])
        req = np.array([schema.DOMAIN_TRUST[r["domain"]] for r in recs[split]])
        trust = np.array([r["telemetry"]["trust"] for r in recs[split]])
        if split == "shift_boundary":
            assert m["boundary"].all() and np.abs(trust - req).max() <= schema.BOUNDARY_WIDTH + 1e-9
            assert (trust < req).mean() > 0.3 and (trust >= req).mean() > 0.3  # both sides of the gate
        else:
            assert m["evidence_near"].all() and m["evidence"].all()
            assert (trust >= req + schema.EVIDENCE_TRUST_CLEARANCE - 1e-9).all()
            assert np.abs(m["risk"] - schema.HITL_THRESHOLD).max() <= schema.EVIDENCE_RISK_WINDOW + 1e-9
            assert m["hitl"].sum() == EVAL // 2  # balanced before label noise
            assert manifest["splits"][split]["evidence_slice"] == EVAL
        assert manifest["splits"][split]["templates"] == "train"
    heldout = schema.rule_records(recs["heldout"])
    assert manifest["splits"]["heldout"]["evidence_slice"] == heldout["evidence"].sum()
    assert 0.5 < heldout["evidence"].mean() < 0.9


def test_response_floor_is_the_generator_probability():
    """`_text`'s log-probability is exact: among draws that give one request, the
    responses' probabilities sum to one and match their frequencies."""
    rng = np.random.default_rng(0)
    cases = [("operational", "finance", "escalate", templates.TRAIN, 6000),
             ("constitutional", "legal", "decline", templates.TRAIN, 8000),
             ("operational", "general", "support", templates.HELDOUT, 6000),
             ("operational", "technology", "safeguards", templates.TRAIN, 20000)]  # 180 answers, the rarest 1/360
    for category, domain, outcome, tpl, n in cases:
        u = rng.random((n, 24))
        u[:, 11] = 0.0  # the first scenario, which shows one slot
        u[:, 12], u[:, 13], u[:, 14], u[:, 15] = 0.99, 0.0, 0.99, 0.0  # no framing, opener, emotion, closer
        draws = [wording.text(category, domain, "CALM", outcome, row, tpl) for row in u]
        by_request = {}
        for d in draws:
            by_request.setdefault(d[0], []).append(d)
        group = max(by_request.values(), key=len)  # condition on one request
        assert len(group) > 500
        freq, logp = {}, {}
        for d in group:
            freq[d[1]] = freq.get(d[1], 0) + 1
            assert logp.setdefault(d[1], d[4]) == pytest.approx(d[4])
        probs = {k: np.exp(v) for k, v in logp.items()}
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-9), (category, outcome)
        for k, p in probs.items():
            assert abs(freq[k] / len(group) - p) < 4 * np.sqrt(p * (1 - p) / len(group)) + 1e-3, (k, p)


def test_manifest_floor(data):
    _, manifest, recs = data
    for split in generate.SPLITS:
        fig = manifest["splits"][split]
        assert fig["response_bytes"] == sum(len(r["response"].encode()) for r in recs[split])
        assert 0.005 < fig["response_floor_nats_per_byte"] < 0.1, split


def test_same_seed_same_bytes(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate.generate_dataset(str(a), 300, seed=7, eval_examples=50)
    generate.generate_dataset(str(b), 300, seed=7, eval_examples=50)
    generate.generate_dataset(str(c), 300, seed=8, eval_examples=50)
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    assert {n.split("-")[0] for n in names if n.endswith(".array_record")} == set(generate.SPLITS)
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
    with pytest.raises(ValueError, match="eval_examples"):
        generate.generate_dataset(str(tmp_path / "y"), 10, 0, eval_examples=-1)


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


def test_prompts_put_the_request_before_the_tags(data):
    d, manifest, recs = data
    assert manifest["prompt_layout"] == "request_tags"
    for r in recs["train"][:50] + recs["shift_evidence"][:50]:
        request, tags = r["prompt"].rsplit("\n", 1)
        assert tags == generate.format_tags(r["telemetry"], r["domain"]) and "<gov:" not in request
        assert prompt_lib.split_prompt(r["prompt"]) == (tags, request, "request_tags")


def test_the_older_layout_differs_only_in_its_order():
    new = generate.generate_examples(30, seed=4)
    old = generate.generate_examples(30, seed=4, prompt_layout="tags_request")
    for a, b in zip(new, old):
        tags, request, layout = prompt_lib.split_prompt(b["prompt"])
        assert layout == "tags_request" and b["prompt"] == f"{tags}\n{request}"
        assert prompt_lib.split_prompt(a["prompt"]) == (tags, request, "request_tags")
        assert {k: v for k, v in a.items() if k != "prompt"} == {k: v for k, v in b.items() if k != "prompt"}
    # A served request may span lines; either layout splits back to it.
    tags = generate.format_tags(new[0]["telemetry"], new[0]["domain"])
    for layout in prompt_lib.PROMPT_LAYOUTS:
        assert prompt_lib.split_prompt(prompt_lib.compose_prompt(tags, "line one\nline two", layout)) == (
            tags, "line one\nline two", layout)
    with pytest.raises(ValueError, match="unknown prompt layout"):
        prompt_lib.compose_prompt(tags, "x", "tags_last")
    with pytest.raises(ValueError, match="no tags line"):
        prompt_lib.split_prompt("just a request\nand more")
