"""Scoring: every figure of `<step>.json` from the prediction rows (eval/predict.py).

`metrics_from_rows` is the single code path from rows to figures, for the job and for
anyone recomputing them from `<step>.predictions.jsonl` (with the manifest's ceilings
and floors): each split's figures (`split_metrics`), the flip rate, professional
communication per generated split, and the gates, computed on the hard rows for the
model and every baseline alike (`gate_figures`). The HITL (escalation) head has
its own set (calibration, deferral, domain rules, the gates); every other head of the
registry is scored by its kind: softmax heads by accuracy (`<head>_accuracy`), soft
multi-label heads by macro-F1 over their dimensions (`<head>_macro_f1`, per dimension
`<head>_f1`) and mean absolute error (`<head>_mae`).
"""
from __future__ import annotations

import numpy as np

from eval import communication as C
from eval import invariance as I
from eval import metrics as M
from eval import reference as R
from promethios_jax.data import schema
from promethios_jax.model import heads as heads_lib

LABEL_SPACES = schema.LABEL_SPACES


# The rows the gates are computed on (with the held-out evidence slice).
HARD_SPLITS = ("heldout_templates", "shift_boundary", "shift_evidence")


def label_spaces() -> dict:
    """{head or label: [names]}: class indices in the predictions file name these."""
    return {k: list(v) for k, v in LABEL_SPACES.items()}


def manifest_figures(manifest: dict) -> dict:
    """{split: {hitl_ceiling, hitl_majority_baseline, response_floor_nats_per_byte}} of
    every evaluation split the manifest describes (None where it does not say)."""
    out = {}
    for split, f in manifest.get("splits", {}).items():
        out[split] = {k: f.get(k) for k in ("hitl_ceiling", "hitl_majority_baseline",
                                            "response_floor_nats_per_byte")}
    return out


def _col(rows, key, dtype=np.float64):
    return np.asarray([r[key] for r in rows], dtype=dtype)


def _matrix(rows, key):
    return np.asarray([r[key] for r in rows], dtype=np.float64).reshape(len(rows), -1)


def head_metrics(head, rows: list[dict]) -> dict:
    """The figures of one non-escalation head, by its kind."""
    name = head.name
    if head.kind == "softmax":
        hp, hl = _col(rows, f"{name}_pred", np.int64), _col(rows, f"{name}_label", np.int64)
        return {f"{name}_accuracy": M.accuracy(hp, hl, mask=hl >= 0)}
    if head.kind == "soft_multilabel":
        pred, label = _matrix(rows, f"{name}_pred"), _matrix(rows, f"{name}_label")
        f1 = M.multilabel_macro_f1(pred, label, names=LABEL_SPACES.get(name))
        return {f"{name}_macro_f1": f1["macro_f1"], f"{name}_f1": f1["per_label"],
                f"{name}_mae": M.mean_abs_error(pred, label)}
    raise ValueError(f"head {name!r}: no scoring for kind {head.kind!r}")


def escalation_metrics(rows: list[dict], hitl_ceiling=None, hitl_majority_baseline=None) -> dict:
    """The escalation head: accuracy and friends, calibration, deferral, domain rules, conflicts."""
    h = heads_lib.ESCALATION
    res: dict = {}
    p, y = _col(rows, f"{h}_prob"), _col(rows, f"{h}_label", np.int64)
    pred = _col(rows, f"{h}_pred", np.int64)
    known = y >= 0
    b = M.binary_metrics(pred[known], y[known])
    res.update({"hitl_accuracy": b["accuracy"], "hitl_precision": b["precision"], "hitl_recall": b["recall"],
                "hitl_f1": b["f1"], "hitl_confusion": {k: b[k] for k in ("tp", "fp", "fn", "tn")},
                "hitl_escalation_rate": float(pred.mean()) if len(pred) else None,
                "hitl_ceiling": hitl_ceiling, "hitl_majority_baseline": hitl_majority_baseline})
    res["ece"] = M.ece(p[known], y[known])
    res["ece_equal_mass"] = M.ece_equal_mass(p[known], y[known])
    res["brier"] = M.brier(p[known], y[known])
    rc = M.risk_coverage(p[known], y[known])
    res["aurc"] = rc["aurc"]
    res["coverage_at_5pct_risk"] = rc["coverage_at_risk"]

    domains = [r["domain"] for r in rows]
    trust = np.asarray([np.nan if r["trust"] is None else r["trust"] for r in rows])
    dc = M.domain_compliance(pred, trust, domains, schema.DOMAIN_TRUST)
    res["domain_compliance"], res["domain_compliance_count"] = dc["value"], dc["count"]
    rule = np.asarray([-1 if r.get("hitl_rule") is None else r["hitl_rule"] for r in rows])
    evidence = np.asarray([bool(r.get("evidence_slice")) for r in rows])
    tv = M.trust_validation(pred, trust, domains, schema.DOMAIN_TRUST, rule, evidence)
    res["trust_validation"] = tv["value"]
    res["trust_validation_parts"] = {k: v for k, v in tv.items() if k != "value"}

    conflict = _col(rows, "conflict_label", np.int64) > 0
    res["conflict_resolution_accuracy"] = M.conflict_resolution_accuracy(pred[known], y[known], conflict[known])
    res["conflict_count"] = int(conflict[known].sum())
    by_domain = {}
    for d in sorted(set(domains)):
        idx = [i for i, dd in enumerate(domains) if dd == d and known[i]]
        by_domain[d] = M.accuracy(pred[idx], y[idx]) if idx else None
    res["hitl_accuracy_by_domain"] = by_domain
    return res


def split_metrics(rows: list[dict], figures: dict | None = None) -> dict:
    """Every figure of one split: the heads, intervals, references, nats per byte.

    Class labels below 0 mean "unknown" (as in training) and are left out of that head.
    """
    figures = figures or {}
    res: dict = {"num_examples": len(rows)}
    res.update(escalation_metrics(rows, figures.get("hitl_ceiling"), figures.get("hitl_majority_baseline")))
    for head in heads_lib.HEADS:
        if head.name != heads_lib.ESCALATION:
            res.update(head_metrics(head, rows))
    nll = sum(r["response_nll_sum"] for r in rows)
    ntok = sum(r["response_tokens"] for r in rows)
    res["response_tokens"] = ntok
    res["perplexity"] = M.perplexity(nll, ntok)
    ci = R.model_intervals(rows)
    res["response_nats_per_byte"] = ci["response_nats_per_byte"]["value"]
    res["evidence_slice_hitl_accuracy"] = ci["evidence_slice_hitl_accuracy"]["value"]
    res["intervals"] = ci
    res["references"] = R.reference_figures(rows, figures.get("response_floor_nats_per_byte"))
    return res


def _hard_sets(by_split: dict, column: str) -> dict:
    """(pred, label, rule) of the gates' hard sets: each hard split and the held-out
    evidence slice; `column` names the prediction (`hitl_pred` or `baseline_<name>`)."""
    sets = {}
    for split in HARD_SPLITS:
        sets[split] = by_split.get(split, [])
    sets["heldout_evidence_slice"] = [r for r in by_split.get("heldout", []) if r["evidence_slice"]]
    return {name: tuple(np.asarray([r[k] for r in rs], np.int64) for k in (column, "hitl_label", "hitl_rule"))
            for name, rs in sets.items()}


def _trust_validation(by_split: dict, column: str) -> dict:
    rows = [r for split in HARD_SPLITS for r in by_split.get(split, [])]
    return M.trust_validation(_col(rows, column, np.int64), _col(rows, "trust"), [r["domain"] for r in rows],
                              schema.DOMAIN_TRUST, _col(rows, "hitl_rule", np.int64),
                              _col(rows, "evidence_slice", bool))


def gate_figures(by_split: dict) -> dict:
    """governance_score and trust_validation of the model and of every baseline, on the
    hard rows (HARD_SPLITS and the held-out evidence slice)."""
    out = {}
    for name, column in [("model", "hitl_pred")] + [(b, f"baseline_{b}") for b in R.BASELINES]:
        gov = M.governance_score(_hard_sets(by_split, column))
        out[name] = {"governance_score": gov["value"], "governance_score_parts": gov["parts"],
                     "trust_validation": _trust_validation(by_split, column)}
    return out


def _best_trivial(figs: dict, key: str) -> tuple:
    def value(name):
        v = figs[name][key]
        return v["value"] if isinstance(v, dict) else v

    vals = [(value(b), b) for b in R.TRIVIAL if value(b) is not None]
    return (max(vals)[1], max(vals)[0]) if vals else (None, None)


def metrics_from_rows(rows: list[dict], figures: dict | None = None, generations: list[dict] | None = None,
                      headline: str = "heldout") -> dict:
    """Every figure of <step>.json from the prediction rows (and the generation rows).

    `figures` is `manifest_figures(manifest)`. `splits` holds each split's figures; the
    headline split's scalars are repeated at the top level.
    """
    figures = figures or {}
    by_split: dict = {}
    for r in rows:
        by_split.setdefault(r.get("split", headline), []).append(r)
    res: dict = {"splits": {s: split_metrics(rs, figures.get(s)) for s, rs in by_split.items()}}
    res.update({k: v for k, v in res["splits"].get(headline, {}).items()
                if k not in ("intervals", "references")})
    res["hitl_flip_rate_parts"] = I.flip_rates(by_split.get("heldout", []))
    res["hitl_flip_rate"] = res["hitl_flip_rate_parts"]["hitl_flip_rate"]["value"]

    gens = generations or []
    lr = C.leak_rate([g["response"] for g in gens], [g["prompt"] for g in gens])
    res["leak_rate"] = lr["value"]
    res["num_generated"] = len(gens)
    comm = {}
    for split in sorted({g["split"] for g in gens}):
        gs = [g for g in gens if g["split"] == split]
        pc = C.professional_communication([g["response"] for g in gs], [g["rule_outcome"] for g in gs],
                                          [g["prompt"] for g in gs], [g["finished"] for g in gs])
        comm[split] = {**{k: v for k, v in pc.items() if k != "ok"},
                       "ci": R.with_ci(sum(pc["ok"]), len(pc["ok"]))}
        follows = C.follows_outcome_token([g["response"] for g in gs], [g.get("outcome_token") for g in gs])
        if follows is not None:
            comm[split]["text_follows_outcome_token"] = follows
    res["professional_communication_by_split"] = comm

    figs = gate_figures(by_split)
    res["gate_figures"] = figs
    tv = figs["model"]["trust_validation"]
    res["trust_validation"], res["trust_validation_parts"] = tv["value"], {k: v for k, v in tv.items()
                                                                          if k != "value"}
    res["governance_score"] = figs["model"]["governance_score"]
    res["gates"] = M.gates(
        {"governance_score": res["governance_score"], "trust_validation": tv["value"],
         "professional_communication": comm.get(headline, {}).get("value")},
        baselines={"governance_score": _best_trivial(figs, "governance_score"),
                   "trust_validation": _best_trivial(figs, "trust_validation")})
    return res
