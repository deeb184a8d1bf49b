"""Deterministic governance scenario generator.

    python -m promethios_jax.data.generate --num_examples=10000 --seed=0 --out=DIR

Writes `DIR/{train,heldout}-KKKKK-of-NNNNN.array_record` (one UTF-8 JSON object per
record) and `DIR/manifest.json`. The labels follow the governance rule documented in
`RULES.md` beside this file and implemented in `schema.rule_arrays`; in short:

1. distress (a distressed emotion at intensity >= 0.7) hands over to a human;
2. trust below the domain's requirement (healthcare 0.75, legal 0.8, finance 0.7,
   technology 0.65, general 0.6) escalates;
3. a risk score (verify, attest, bound, evaluator agreement, upstream state) at or
   above 0.4 escalates, whatever the trust: evidence outranks trust;
4. otherwise the assistant proceeds (high or medium confidence) or declines an action
   the upstream governance state denied.
A stated 2.5% of examples carry the opposite HITL outcome (reviewer noise).

How an example is made: the category, domain and confidence band are apportioned
exactly by their weights and shuffled; telemetry is drawn from a broad proposal and
kept only when the rule puts it in the example's band (rejection sampling, so the
labels are the rule's); text comes from `templates.py`. Everything draws from one
`np.random.Generator(seed)`, so a seed gives byte-identical shards.
"""
from __future__ import annotations

import argparse
import json
import os
import string
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from array_record.python import array_record_module

from promethios_jax.data import schema, templates

SHARD_RECORDS = 5000  # records per ArrayRecord shard
WRITER_OPTIONS = "group_size:1,uncompressed"  # one record per chunk, no codec: fastest random reads
SPLITS = ("train", "heldout")


def _apportion(weights: dict, n: int) -> list:
    """Exact counts by largest remainder, as a flat list of keys."""
    keys = list(weights)
    w = np.array([weights[k] for k in keys], np.float64)
    w = w / w.sum()
    raw = w * n
    counts = np.floor(raw).astype(np.int64)
    for i in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    return [k for k, c in zip(keys, counts) for _ in range(c)]


def _propose(rng, domain_idx: np.ndarray) -> dict:
    """Broad telemetry proposal: every band gets mass, trust centred on the domain's requirement."""
    n = len(domain_idx)
    req = np.array([schema.DOMAIN_TRUST[d] for d in schema.DOMAINS])[domain_idx]
    r2 = lambda x: np.round(np.clip(x, 0.0, 1.0), 2)  # noqa: E731
    return {
        "trust": r2(np.clip(req + rng.normal(0.05, 0.16, n), 0.05, 1.0)),
        "intensity": r2(rng.random(n)),
        "verify": r2(rng.beta(4.0, 1.8, n)),
        "attest": r2(rng.beta(4.0, 1.8, n)),
        "bound": r2(rng.beta(4.0, 1.8, n)),
        "emotion": rng.integers(0, len(schema.EMOTIONS), n),
        "state": rng.choice(len(schema.STATES), n, p=[0.35, 0.35, 0.2, 0.1]),
        "model": rng.choice(len(schema.MODELS), n, p=[0.4, 0.3, 0.2, 0.1]),
    }


def _rule(domain_idx, t: dict) -> dict:
    return schema.rule_arrays(domain_idx, t["trust"], t["intensity"], t["verify"], t["attest"], t["bound"],
                              t["emotion"], t["state"], t["model"])


def sample_telemetry(rng, domain_idx: np.ndarray, band_idx: np.ndarray, tries: int = 16) -> dict:
    """Telemetry whose rule band equals `band_idx`, by vectorized rejection sampling."""
    n = len(domain_idx)
    out = {k: np.zeros(n, np.float64 if k in schema.NUMERIC_KEYS else np.int64)
           for k in ("trust", "intensity", "verify", "attest", "bound", "emotion", "state", "model")}
    todo = np.arange(n)
    for _ in range(200):
        if not len(todo):
            return out
        dom = np.repeat(domain_idx[todo], tries)
        cand = _propose(rng, dom)
        ok = (_rule(dom, cand)["band"] == np.repeat(band_idx[todo], tries)).reshape(len(todo), tries)
        hit = ok.any(axis=1)
        pick = np.arange(len(todo)) * tries + ok.argmax(axis=1)
        for k in out:
            out[k][todo[hit]] = cand[k][pick[hit]]
        todo = todo[~hit]
    raise RuntimeError(f"telemetry sampling did not converge for {len(todo)} examples")


class _Slots:
    """Per-example slot values, drawn from a row of uniforms so text costs no RNG calls."""

    def __init__(self, u: np.ndarray):
        self.u, self.i = u, 0

    def pick(self, seq):
        x = seq[min(int(self.u[self.i % len(self.u)] * len(seq)), len(seq) - 1)]
        self.i += 1
        return x

    def chance(self, p: float) -> bool:
        x = self.u[self.i % len(self.u)] < p
        self.i += 1
        return bool(x)


def _fill(text: str, slots: dict) -> str:
    return string.Template(text).substitute(slots)


def _text(category: str, domain: str, emotion: str, outcome: str, u: np.ndarray) -> tuple:
    """(request, response, scenario tool, framing bias or None) for one example."""
    s = _Slots(u)
    ds = templates.DOMAIN_SLOTS[domain]
    entity, eid = s.pick(ds["entity"])
    role, role_id = s.pick(ds["role"])
    agent = s.pick(templates.AGENTS)
    agent2 = s.pick([a for a in templates.AGENTS if a != agent])
    slots = {"subject": s.pick(ds["subject"]), "system": s.pick(ds["system"]), "human": s.pick(ds["human"]),
             "team": s.pick(ds["team"]), "recipient": s.pick(ds["recipient"]), "entity": entity, "eid": eid,
             "role": role, "role_id": role_id, "agent": agent, "agent2": agent2,
             "deadline": s.pick(templates.DEADLINES), "weekday": s.pick(templates.WEEKDAYS)}
    request, task, answer, tool = s.pick(templates.SCENARIOS[category])
    framing = s.pick(list(templates.FRAMINGS)) if s.chance(templates.FRAMING_RATE) else None
    distressed = emotion in schema.DISTRESSED_EMOTIONS
    opener = s.pick(templates.REQUEST_OPENERS)
    if opener.endswith(","):  # "Hi, draft ..." reads as one sentence
        request = request[0].lower() + request[1:]
    parts = [opener, request]
    if framing:
        parts.append(s.pick(templates.FRAMINGS[framing]))
    if s.chance(0.6 if distressed else 0.25):
        parts.append(s.pick(templates.EMOTION_PHRASES[emotion]))
    parts.append(s.pick(templates.REQUEST_CLOSERS))
    req_text = _fill(" ".join(p for p in parts if p), slots)
    slots["task"] = _fill(task, slots)
    if outcome == "support":
        resp = s.pick(templates.SUPPORT_TEMPLATES)
    elif outcome == "escalate":
        resp = s.pick(templates.ESCALATE_TEMPLATES)
    elif outcome == "decline":
        slots["alternative"] = _fill(s.pick(templates.DECLINE_ALTERNATIVES), slots)
        resp = s.pick(templates.DECLINE_TEMPLATES)
    else:
        tail = (s.pick(templates.SAFEGUARD_NOTES) if outcome == "safeguards"
                else s.pick(templates.PROCEED_CLOSERS))
        opener = s.pick(templates.PROCEED_OPENERS)
        sep = "\n\n" if "\n" in answer else " "  # code stands on its own lines
        resp = sep.join(p for p in (opener, answer, tail) if p)
    return req_text, _fill(resp, slots), tool, framing


def format_tags(telemetry: dict, domain: str) -> str:
    """The prompt's governance tags: the domain, then the telemetry in TELEMETRY_KEYS order."""
    tags = [f"<gov:domain={domain}>"]
    for k in schema.TELEMETRY_KEYS:
        v = telemetry[k]
        tags.append(f"<gov:{k}={v:.2f}>" if k in schema.NUMERIC_KEYS else f"<gov:{k}={v}>")
    return "".join(tags)


def _bias(telemetry: dict, domain: str, framing) -> dict:
    req = schema.DOMAIN_TRUST[domain]
    active = {
        "authority": framing == "authority" or (telemetry["trust"] >= req + schema.HIGH_TRUST_MARGIN - 1e-9
                                                and telemetry["verify"] < 0.5),
        "confirmation": framing == "confirmation",
        "anchoring": framing == "anchoring",
        "automation": framing == "automation" or (telemetry["decision"] == "APPROVED"
                                                  and telemetry["model"] == "SINGLE"),
        "availability": framing == "availability",
        "emotional": telemetry["emotion"] in schema.DISTRESSED_EMOTIONS and telemetry["intensity"] >= 0.5,
    }
    return {k: int(active[k]) for k in schema.BIAS_CATEGORIES}


def generate_examples(num_examples: int, seed: int) -> list:
    """The examples (dicts without `split`), in generation order."""
    rng = np.random.default_rng(seed)
    n = num_examples
    category = np.array(_apportion(schema.CATEGORY_WEIGHTS, n))[rng.permutation(n)]
    domain = np.array(_apportion(schema.DOMAIN_WEIGHTS, n))[rng.permutation(n)]
    band = np.array(_apportion(schema.BAND_WEIGHTS, n))[rng.permutation(n)]
    dom_idx = np.array([schema.DOMAINS.index(d) for d in domain])
    band_idx = np.array([schema.CONFIDENCE_BANDS.index(b) for b in band])
    tel = sample_telemetry(rng, dom_idx, band_idx)
    rule = _rule(dom_idx, tel)
    assert np.array_equal(rule["band"], band_idx)
    unc = schema.uncertainty_arrays(dom_idx, tel["trust"], tel["intensity"], tel["verify"], tel["attest"],
                                    tel["bound"], tel["emotion"], tel["state"], tel["model"])
    noisy = np.zeros(n, bool)
    noisy[rng.permutation(n)[: int(round(n * schema.LABEL_NOISE_RATE))]] = True
    uniforms = rng.random((n, 24))

    examples, seen = [], set()
    for i in range(n):
        t = {"trust": float(tel["trust"][i]), "emotion": schema.EMOTIONS[tel["emotion"][i]],
             "intensity": float(tel["intensity"][i]), "verify": float(tel["verify"][i]),
             "attest": float(tel["attest"][i]), "bound": float(tel["bound"][i]),
             "decision": schema.STATES[tel["state"][i]], "model": schema.MODELS[tel["model"][i]]}
        hitl = int(rule["hitl"][i])
        b = schema.CONFIDENCE_BANDS[rule["band"][i]]
        decision = schema.DECISIONS[rule["decision"][i]]
        if noisy[i]:  # the recorded outcome disagrees with the rule; band and decision follow it
            hitl = 1 - hitl
            b = "low" if hitl else "medium"
            decision = "escalate" if hitl else ("decline" if t["decision"] == "DENIED"
                                                else "proceed_with_safeguards")
        outcome = {"proceed": "proceed", "proceed_with_safeguards": "safeguards", "decline": "decline",
                   "escalate": "support" if b == "uncertain_emotional" else "escalate"}[decision]
        tags = format_tags(t, str(domain[i]))
        u = uniforms[i]
        for _ in range(100):  # a repeated (prompt, telemetry) would leak across splits: redraw its text
            req_text, response, tool, framing = _text(str(category[i]), str(domain[i]), t["emotion"], outcome, u)
            prompt = tags + "\n" + req_text
            if prompt not in seen:
                break
            u = rng.random(24)
        else:
            raise RuntimeError(f"could not draw a unique prompt for example {i}")
        seen.add(prompt)
        if hitl:
            tool = "human_handoff"
        elif decision == "decline":
            tool = "none"
        examples.append({
            "id": f"gov-{seed}-{i:07d}",
            "category": str(category[i]),
            "domain": str(domain[i]),
            "confidence_band": b,
            "telemetry": t,
            "prompt": prompt,
            "response": response,
            "labels": {
                "hitl": hitl,
                "decision": decision,
                "confidence": b,
                "uncertainty": {k: round(float(unc[i, j]), 3) for j, k in enumerate(schema.UNCERTAINTY_DIMS)},
                "bias": _bias(t, str(domain[i]), framing),
                "tool": tool,
                "conflict": schema.CONFLICTS[rule["conflict"][i]],
            },
        })
    return examples


def _check_out_dir(out_dir) -> Path:
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"out_dir {str(out)!r} cannot be written: {e.strerror or e}") from None
    return out


def _validate_args(num_examples, heldout_fraction):
    if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)) or num_examples <= 0:
        raise ValueError(f"num_examples must be a positive integer, got {num_examples!r}")
    if not 0.0 <= float(heldout_fraction) < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction!r}")


def _rule_accuracy(records: list) -> float:
    if not records:
        return float("nan")
    hits = sum(schema.apply_rule(r["telemetry"], r["domain"])["hitl"] == r["labels"]["hitl"] for r in records)
    return hits / len(records)


def _summaries(records: list) -> tuple:
    counts = {k: dict(sorted(Counter(r[k] for r in records).items()))
              for k in ("category", "domain", "confidence_band")}
    n = max(len(records), 1)
    lab = [r["labels"] for r in records]
    rates = {
        "hitl": sum(x["hitl"] for x in lab) / n,
        "decision": {k: sum(x["decision"] == k for x in lab) / n for k in schema.DECISIONS},
        "tool": {k: sum(x["tool"] == k for x in lab) / n for k in schema.TOOLS},
        "conflict": {k: sum(x["conflict"] == k for x in lab) / n for k in schema.CONFLICTS},
        "bias": {k: sum(x["bias"][k] for x in lab) / n for k in schema.BIAS_CATEGORIES},
        "uncertainty_mean": {k: sum(x["uncertainty"][k] for x in lab) / n for k in schema.UNCERTAINTY_DIMS},
    }
    return counts, rates


def _write_split(out: Path, split: str, records: list) -> list:
    for old in out.glob(f"{split}-*-of-*.array_record"):
        old.unlink()
    n_shards = max(1, -(-len(records) // SHARD_RECORDS))
    shards = []
    for k in range(n_shards):
        name = f"{split}-{k:05d}-of-{n_shards:05d}.array_record"
        chunk = records[k * SHARD_RECORDS:(k + 1) * SHARD_RECORDS]
        writer = array_record_module.ArrayRecordWriter(str(out / name), WRITER_OPTIONS)
        for r in chunk:
            writer.write(json.dumps(r).encode("utf-8"))
        writer.close()
        shards.append({"file": name, "records": len(chunk)})
    return shards


def generate_dataset(out_dir, num_examples: int, seed: int = 0, heldout_fraction: float = 0.03) -> dict:
    """Generates, splits and writes the dataset; returns the manifest (also in manifest.json)."""
    _validate_args(num_examples, heldout_fraction)
    out = _check_out_dir(out_dir)
    seed = int(seed)
    examples = generate_examples(int(num_examples), seed)
    n = len(examples)
    n_held = int(round(n * heldout_fraction))
    if heldout_fraction > 0 and n_held == 0 and n > 1:
        n_held = 1
    held = np.zeros(n, bool)
    held[np.random.default_rng([seed, 1]).permutation(n)[:n_held]] = True
    splits = {"train": [], "heldout": []}
    for ex, h in zip(examples, held):
        split = "heldout" if h else "train"
        rec = {"id": ex["id"], "split": split}
        rec.update((k, v) for k, v in ex.items() if k != "id")
        splits[split].append(rec)

    manifest = {
        "format": "promethios-governance/1",
        "seed": seed,
        "num_examples": n,
        "heldout_fraction": float(heldout_fraction),
        "label_noise_rate": schema.LABEL_NOISE_RATE,
        "telemetry_dim": schema.TELEMETRY_DIM,
        "shards": {},
        "counts": {"total": n, **{s: len(splits[s]) for s in SPLITS}, "by_split": {}},
        "label_rates": {},
        "rule": {
            "domain_trust": schema.DOMAIN_TRUST,
            "hitl_threshold": schema.HITL_THRESHOLD,
            "distress_intensity": schema.DISTRESS_INTENSITY,
            "risk_weights": schema.RISK_WEIGHTS,
            "state_risk": schema.STATE_RISK,
            "model_risk": schema.MODEL_RISK,
            "precedence": ["distress", "trust_gate", "evidence_gate", "decline_if_denied", "high_or_medium"],
        },
    }
    for split in SPLITS:
        counts, rates = _summaries(splits[split])
        manifest["counts"]["by_split"][split] = counts
        manifest["label_rates"][split] = rates
        manifest["shards"][split] = _write_split(out, split, splits[split])
    eval_split = "heldout" if splits["heldout"] else "train"
    rate = manifest["label_rates"][eval_split]["hitl"]
    manifest["hitl_ceiling"] = _rule_accuracy(splits[eval_split])
    manifest["hitl_ceiling_train"] = _rule_accuracy(splits["train"])
    manifest["hitl_majority_baseline"] = max(rate, 1.0 - rate)
    manifest["ceiling_split"] = eval_split
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out / "manifest.json")
    return manifest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m promethios_jax.data.generate", description=__doc__.split("\n")[0])
    p.add_argument("--num_examples", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--heldout_fraction", type=float, default=0.03)
    a = p.parse_args(argv)
    if a.num_examples <= 0:
        p.error(f"--num_examples must be a positive integer, got {a.num_examples}")
    if not 0.0 <= a.heldout_fraction < 1.0:
        p.error(f"--heldout_fraction must be in [0, 1), got {a.heldout_fraction}")
    try:
        m = generate_dataset(a.out, a.num_examples, a.seed, a.heldout_fraction)
    except ValueError as e:
        p.error(f"--out: {e}" if "out_dir" in str(e) else str(e))
    print(f"wrote {m['counts']['train']} train and {m['counts']['heldout']} held-out examples to {a.out}; "
          f"hitl rate {m['label_rates']['train']['hitl']:.3f}, ceiling {m['hitl_ceiling']:.3f}, "
          f"majority baseline {m['hitl_majority_baseline']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
