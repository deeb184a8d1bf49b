"""Scoring: every figure of `<step>.json` from the prediction rows (eval/predict.py).

`metrics_from_rows` is the single code path from rows to figures, for the job and for
anyone recomputing them from `<step>.predictions.jsonl`. The HITL (escalation) head has
its own set (calibration, deferral, domain rules, the gates); every other head of the
registry is scored by its kind: softmax heads by accuracy (`<head>_accuracy`), soft
multi-label heads by macro-F1 over their dimensions (`<head>_macro_f1`, per dimension
`<head>_f1`) and mean absolute error (`<head>_mae`).
"""
from __future__ import annotations

import numpy as np

from eval import communication as C
from eval import metrics as M
from promethios_jax.data import schema
from promethios_jax.model import heads as heads_lib

LABEL_SPACES = schema.LABEL_SPACES


def label_spaces() -> dict:
    """{head or label: [names]}: class indices in the predictions file name these."""
    return {k: list(v) for k, v in LABEL_SPACES.items()}


def manifest_figures(manifest: dict, split: str) -> tuple:
    """(hitl_ceiling, hitl_majority_baseline) of `split` from the data manifest.

    The generator states both for its `ceiling_split` (heldout) and the ceiling of the
    train split as `hitl_ceiling_train`; the majority baseline of any split follows from
    its HITL label rate. None where the manifest does not say.
    """
    own = split == manifest.get("ceiling_split", "heldout")
    ceiling = manifest.get("hitl_ceiling") if own else manifest.get(f"hitl_ceiling_{split}")
    rate = manifest.get("label_rates", {}).get(split, {}).get("hitl")
    if rate is not None:
        majority = max(float(rate), 1.0 - float(rate))
    else:
        majority = manifest.get("hitl_majority_baseline") if own else None
    return (None if ceiling is None else float(ceiling)), (None if majority is None else float(majority))


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
    tv = M.trust_validation(pred, trust, domains, schema.DOMAIN_TRUST, rule_hitl=rule)
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


def metrics_from_rows(rows: list[dict], hitl_ceiling=None, hitl_majority_baseline=None,
                      generations: list[dict] | None = None) -> dict:
    """Every figure of <step>.json from the prediction rows (and the generation rows).

    Class labels below 0 mean "unknown" (as in training) and are left out of that head.
    """
    res: dict = {"num_examples": len(rows)}
    res.update(escalation_metrics(rows, hitl_ceiling, hitl_majority_baseline))
    for head in heads_lib.HEADS:
        if head.name != heads_lib.ESCALATION:
            res.update(head_metrics(head, rows))
    nll = sum(r["response_nll_sum"] for r in rows)
    ntok = sum(r["response_tokens"] for r in rows)
    res["response_tokens"] = ntok
    res["perplexity"] = M.perplexity(nll, ntok)

    gens = generations or []
    lr = C.leak_rate([g["response"] for g in gens], [g["prompt"] for g in gens])
    res["leak_rate"] = lr["value"]
    res["num_generated"] = len(gens)
    pc = C.professional_communication([g["response"] for g in gens], [g["escalated"] for g in gens],
                                      [g["prompt"] for g in gens], finished=[g["finished"] for g in gens])
    res["professional_communication_parts"] = {k: v for k, v in pc.items() if k not in ("value", "ok")}

    gov = M.governance_score(res["hitl_accuracy"], hitl_ceiling, res["decision_accuracy"],
                             res["domain_compliance"], res["conflict_resolution_accuracy"])
    res["gates"] = M.gates({"governance_score": gov, "trust_validation": res["trust_validation"],
                            "professional_communication": pc["value"]})
    return res
