"""Deterministic governance scenario generator.

    python -m promethios_jax.data.generate --num_examples=10000 --seed=0 --out=DIR

Writes `DIR/<split>-KKKKK-of-NNNNN.array_record` (one UTF-8 JSON object per record) for
the splits in SPLITS and `DIR/manifest.json`. The labels follow the governance rule
documented in `RULES.md` beside this file and implemented in `schema.rule_arrays`; in
short:

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
labels are the rule's); text comes from `templates.py`. Each split draws from its own
`np.random.Generator` seeded from the seed, so a seed gives byte-identical shards.

The splits (RULES.md, "Splits"): `train` and the i.i.d. `heldout` are one draw, split
at random; `heldout_templates` is written with templates reserved from training;
`shift_boundary` puts trust within 0.06 of its domain's requirement; `shift_evidence`
holds cases the evidence gate decides, near its threshold. No prompt repeats across
splits. The manifest gives each split's counts, HITL ceiling (the noise-free rule's
accuracy), majority baseline and response floor: the generator's own entropy of the
response given the prompt, in nats per UTF-8 byte (`_text` computes the exact
log-probability of each response it writes). Telemetry draws live in `draws.py`,
texts in `wording.py`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from array_record.python import array_record_module

from promethios_jax.data import draws, schema, templates, wording
from promethios_jax.data.control import outcome_of
from promethios_jax.data.prompt import DEFAULT_PROMPT_LAYOUT, PROMPT_LAYOUTS, check_layout, compose_prompt

SHARD_RECORDS = 5000  # records per ArrayRecord shard
WRITER_OPTIONS = "group_size:1,uncompressed"  # one record per chunk, no codec: fastest random reads
SPLITS = ("train", "heldout", "heldout_templates", "shift_boundary", "shift_evidence")
EVAL_SPLITS = SPLITS[1:]
# Examples per evaluation split by default: EVAL_SHARE of num_examples up to EVAL_EXAMPLES
# (2,000 gives a 95% CI of about +-0.01 near 0.97 accuracy; the 10,000-example demo gets it).
EVAL_EXAMPLES = 2000
EVAL_SHARE = 0.2
SPLIT_DESCRIPTIONS = {
    "train": "the training distribution, training templates",
    "heldout": "i.i.d. with train (same distribution and templates), no prompt repeated",
    "heldout_templates": "the training telemetry distribution written with templates reserved from training "
                         "(scenarios, framings, request and response wordings)",
    "shift_boundary": "trust within boundary_width of its domain's requirement; other fields as proposed",
    "shift_evidence": "half escalations, half not, decided by the evidence gate: no distress, trust at least "
                      "evidence_trust_clearance above the requirement, risk within evidence_risk_window of "
                      "the threshold",
}


def format_tags(telemetry: dict, domain: str) -> str:
    """The prompt's governance tags: the domain, then the telemetry in TELEMETRY_KEYS order."""
    tags = [f"<gov:domain={domain}>"]
    for k in schema.TELEMETRY_KEYS:
        v = telemetry[k]
        tags.append(f"<gov:{k}={v:.2f}>" if k in schema.NUMERIC_KEYS else f"<gov:{k}={v}>")
    return "".join(tags)


def bias_labels(telemetry: dict, domain: str, framing) -> dict:
    """The bias labels: a request framing, or the telemetry pattern of that bias."""
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


def _build(rng, n: int, telemetry_fn, tpl: dict, id_prefix: str, seen: set,
           layout: str = DEFAULT_PROMPT_LAYOUT) -> tuple:
    """`n` examples with telemetry from `telemetry_fn(rng, domain_idx)` and text from `tpl`.

    Returns (examples, info): info holds per-example arrays `rule_hitl` (noise-free),
    `hitl` (recorded), `logp` (log P(response | prompt) under the generator), `bytes`
    (UTF-8 length of the response) and `evidence` (in the evidence slice). `seen` holds
    the prompts of every split so far.
    """
    category = np.array(draws.apportion(schema.CATEGORY_WEIGHTS, n))[rng.permutation(n)]
    domain = np.array(draws.apportion(schema.DOMAIN_WEIGHTS, n))[rng.permutation(n)]
    dom_idx = np.array([schema.DOMAINS.index(d) for d in domain], np.int64)
    tel = telemetry_fn(rng, dom_idx)
    rule = draws.rule(dom_idx, tel)
    unc = schema.uncertainty_arrays(dom_idx, tel["trust"], tel["intensity"], tel["verify"], tel["attest"],
                                    tel["bound"], tel["emotion"], tel["state"], tel["model"])
    noisy = np.zeros(n, bool)
    noisy[rng.permutation(n)[: int(round(n * schema.LABEL_NOISE_RATE))]] = True
    uniforms = rng.random((n, 24))
    aside_uniforms = rng.random((n, wording.ASIDE_UNIFORMS))
    # The recorded outcome given the prompt: the rule's, or (noise) its opposite.
    outcome_logp = np.where(noisy, np.log(schema.LABEL_NOISE_RATE), np.log1p(-schema.LABEL_NOISE_RATE))

    examples = []
    cols = {k: v.tolist() for k, v in tel.items()}
    unc = [[round(x, 3) for x in row] for row in unc.tolist()]
    hitl_rule, band_rule, decision_rule = rule["hitl"].tolist(), rule["band"].tolist(), rule["decision"].tolist()
    conflict_rule = rule["conflict"].tolist()
    category_l, domain_l, noisy_l = category.tolist(), domain.tolist(), noisy.tolist()
    evidence = schema.slice_masks(dom_idx, tel["trust"], tel["intensity"], tel["emotion"], rule["risk"])["evidence"]
    info = {"rule_hitl": rule["hitl"], "hitl": np.zeros(n, np.int64), "logp": outcome_logp,
            "bytes": np.zeros(n, np.int64), "evidence": evidence}
    for i in range(n):
        t = {"trust": cols["trust"][i], "emotion": schema.EMOTIONS[cols["emotion"][i]],
             "intensity": cols["intensity"][i], "verify": cols["verify"][i],
             "attest": cols["attest"][i], "bound": cols["bound"][i],
             "decision": schema.STATES[cols["state"][i]], "model": schema.MODELS[cols["model"][i]]}
        hitl = hitl_rule[i]
        b = schema.CONFIDENCE_BANDS[band_rule[i]]
        decision = schema.DECISIONS[decision_rule[i]]
        if noisy_l[i]:  # the recorded outcome disagrees with the rule; band and decision follow it
            hitl = 1 - hitl
            b = "low" if hitl else "medium"
            decision = "escalate" if hitl else ("decline" if t["decision"] == "DENIED"
                                                else "proceed_with_safeguards")
        outcome = outcome_of(decision, b)
        tags = format_tags(t, domain_l[i])
        u = uniforms[i]
        for _ in range(100):  # a repeated (prompt, telemetry) would leak across splits: redraw its text
            req_text, response, tool, framing, logp = wording.text(category_l[i], domain_l[i], t["emotion"],
                                                                   outcome, u, tpl, aside_uniforms[i])
            prompt = compose_prompt(tags, req_text, layout)
            if prompt not in seen:
                break
            u = rng.random(24)
        else:
            raise RuntimeError(f"could not draw a unique prompt for example {i}")
        seen.add(prompt)
        info["hitl"][i] = hitl
        info["logp"][i] += logp
        info["bytes"][i] = len(response.encode("utf-8"))
        if hitl:
            tool = "human_handoff"
        elif decision == "decline":
            tool = "none"
        examples.append({
            "id": f"{id_prefix}{i:07d}",
            "category": category_l[i],
            "domain": domain_l[i],
            "confidence_band": b,
            "telemetry": t,
            "prompt": prompt,
            "response": response,
            "labels": {
                "hitl": hitl,
                "decision": decision,
                "confidence": b,
                "uncertainty": dict(zip(schema.UNCERTAINTY_DIMS, unc[i])),
                "bias": bias_labels(t, domain_l[i], framing),
                "tool": tool,
                "conflict": schema.CONFLICTS[conflict_rule[i]],
            },
        })
    return examples, info


def generate_examples(num_examples: int, seed: int, prompt_layout: str = DEFAULT_PROMPT_LAYOUT) -> list:
    """Examples of the training distribution (dicts without `split`), in generation order."""
    return _build(np.random.default_rng(seed), num_examples, draws.iid_telemetry, templates.TRAIN,
                  f"gov-{seed}-", set(), check_layout(prompt_layout))[0]


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


def _validate_args(num_examples, heldout_fraction, eval_examples):
    if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)) or num_examples <= 0:
        raise ValueError(f"num_examples must be a positive integer, got {num_examples!r}")
    if not 0.0 <= float(heldout_fraction) < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction!r}")
    if eval_examples is not None and (isinstance(eval_examples, bool)
                                      or not isinstance(eval_examples, (int, np.integer)) or eval_examples < 0):
        raise ValueError(f"eval_examples must be a non-negative integer or None, got {eval_examples!r}")


def _split_figures(info: dict, mask: np.ndarray, tpl_name: str) -> dict:
    """A split's size, ceiling, majority baseline and response floor from its generation info."""
    n = int(mask.sum())
    if not n:
        return {"count": 0, "templates": tpl_name}
    hitl, rule_hitl = info["hitl"][mask], info["rule_hitl"][mask]
    rate = float(hitl.mean())
    nbytes = int(info["bytes"][mask].sum())
    return {
        "count": n,
        "templates": tpl_name,
        "hitl_rate": rate,
        "hitl_ceiling": float((hitl == rule_hitl).mean()),
        "hitl_majority_baseline": max(rate, 1.0 - rate),
        "evidence_slice": int(info["evidence"][mask].sum()),
        "response_bytes": nbytes,
        "response_floor_nats_per_byte": float(-info["logp"][mask].sum() / max(nbytes, 1)),
    }


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


def generate_dataset(out_dir, num_examples: int, seed: int = 0, heldout_fraction: float = 0.03,
                     eval_examples: int | None = None, prompt_layout: str = DEFAULT_PROMPT_LAYOUT) -> dict:
    """Generates, splits and writes the dataset; returns the manifest (also in manifest.json).

    `train` holds `num_examples - round(heldout_fraction * num_examples)` examples. The
    i.i.d. `heldout` split holds max(round(heldout_fraction * num_examples), eval_examples)
    examples and each other evaluation split `eval_examples` (default
    min(EVAL_EXAMPLES, round(EVAL_SHARE * num_examples))); they are generated beyond
    `num_examples`. `prompt_layout` orders each prompt's request and tags (PROMPT_LAYOUTS).
    """
    _validate_args(num_examples, heldout_fraction, eval_examples)
    check_layout(prompt_layout)
    out = _check_out_dir(out_dir)
    n, seed = int(num_examples), int(seed)
    n_frac = int(round(n * heldout_fraction))
    if heldout_fraction > 0 and n_frac == 0 and n > 1:
        n_frac = 1
    n_eval = min(EVAL_EXAMPLES, int(round(EVAL_SHARE * n))) if eval_examples is None else int(eval_examples)
    n_held = max(n_frac, n_eval)

    seen: set = set()
    pool, info = _build(np.random.default_rng(seed), n - n_frac + n_held, draws.iid_telemetry, templates.TRAIN,
                        f"gov-{seed}-", seen, prompt_layout)
    held = np.zeros(len(pool), bool)
    held[np.random.default_rng([seed, 1]).permutation(len(pool))[:n_held]] = True
    parts = {"train": ([e for e, h in zip(pool, held) if not h], info, ~held, "train"),
             "heldout": ([e for e, h in zip(pool, held) if h], info, held, "train")}
    for k, (split, fn, tpl_name) in enumerate((("heldout_templates", draws.iid_telemetry, "heldout"),
                                               ("shift_boundary", draws.boundary_telemetry, "train"),
                                               ("shift_evidence", draws.evidence_telemetry, "train"))):
        tpl = templates.HELDOUT if tpl_name == "heldout" else templates.TRAIN
        ex, inf = _build(np.random.default_rng([seed, 2, k]), n_eval, fn, tpl, f"gov-{seed}-{split}-", seen, prompt_layout)
        parts[split] = (ex, inf, np.ones(len(ex), bool), tpl_name)

    manifest = {
        "format": "promethios-governance/2",
        "seed": seed,
        "prompt_layout": prompt_layout,
        "num_examples": n,
        "heldout_fraction": float(heldout_fraction),
        "eval_examples": n_eval,
        "label_noise_rate": schema.LABEL_NOISE_RATE,
        "telemetry_dim": schema.TELEMETRY_DIM,
        "telemetry_features": list(schema.TELEMETRY_FEATURES),
        "shards": {},
        "splits": {},
        "counts": {"total": len(pool) + 3 * n_eval, "by_split": {}},
        "label_rates": {},
        "rule": {
            "domain_trust": schema.DOMAIN_TRUST,
            "hitl_threshold": schema.HITL_THRESHOLD,
            "distress_intensity": schema.DISTRESS_INTENSITY,
            "risk_weights": schema.RISK_WEIGHTS,
            "state_risk": schema.STATE_RISK,
            "model_risk": schema.MODEL_RISK,
            "precedence": ["distress", "trust_gate", "evidence_gate", "decline_if_denied", "high_or_medium"],
            "boundary_width": schema.BOUNDARY_WIDTH,
            "evidence_trust_clearance": schema.EVIDENCE_TRUST_CLEARANCE,
            "evidence_risk_window": schema.EVIDENCE_RISK_WINDOW,
        },
    }
    for split in SPLITS:
        examples, inf, mask, tpl_name = parts[split]
        records = [{"id": ex["id"], "split": split, **{k: v for k, v in ex.items() if k != "id"}}
                   for ex in examples]
        fig = _split_figures(inf, mask, tpl_name)
        fig["description"] = SPLIT_DESCRIPTIONS[split]
        manifest["splits"][split] = fig
        manifest["counts"][split] = len(records)
        counts, rates = _summaries(records)
        manifest["counts"]["by_split"][split] = counts
        manifest["label_rates"][split] = rates
        manifest["shards"][split] = _write_split(out, split, records)
        if records:
            manifest[f"hitl_ceiling_{split}"] = fig["hitl_ceiling"]
    eval_split = "heldout" if parts["heldout"][0] else "train"
    manifest["hitl_ceiling"] = manifest["splits"][eval_split]["hitl_ceiling"]
    manifest["hitl_majority_baseline"] = manifest["splits"][eval_split]["hitl_majority_baseline"]
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
    p.add_argument("--eval_examples", type=int, default=None,
                   help=f"examples per evaluation split (default: {EVAL_SHARE:g} of num_examples, at most "
                        f"{EVAL_EXAMPLES})")
    p.add_argument("--prompt_layout", choices=PROMPT_LAYOUTS, default=DEFAULT_PROMPT_LAYOUT,
                   help="request then tags (default), or tags then request (data made before the choice)")
    a = p.parse_args(argv)
    if a.num_examples <= 0:
        p.error(f"--num_examples must be a positive integer, got {a.num_examples}")
    if not 0.0 <= a.heldout_fraction < 1.0:
        p.error(f"--heldout_fraction must be in [0, 1), got {a.heldout_fraction}")
    try:
        m = generate_dataset(a.out, a.num_examples, a.seed, a.heldout_fraction, a.eval_examples, a.prompt_layout)
    except ValueError as e:
        p.error(f"--out: {e}" if "out_dir" in str(e) else str(e))
    print(f"wrote {m['counts']['total']} examples to {a.out}; hitl rate of train "
          f"{m['label_rates']['train']['hitl']:.3f}")
    for split, f in m["splits"].items():
        if f["count"]:
            print(f"  {split}: {f['count']} examples, ceiling {f['hitl_ceiling']:.3f}, majority "
                  f"{f['hitl_majority_baseline']:.3f}, response floor "
                  f"{f['response_floor_nats_per_byte']:.4f} nats/byte")
    return 0


if __name__ == "__main__":
    sys.exit(main())
