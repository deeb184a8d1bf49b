"""Governance metrics for the eval job: pure numpy, no JAX, no I/O.

Every function takes per-example arrays (the columns of `<step>.predictions.jsonl`) so
that anyone can recompute the published figures from that file. Conventions:

- HITL: `p` is the model's escalation probability (sigmoid of `hitl_logits`), `label`
  is 1 when the example must go to a human. The prediction is "escalate" when
  `p >= threshold` (the job passes `config.eval.hitl_escalation_threshold`, default 0.5).
- Calibration (`ece`, `ece_equal_mass`, `brier`, risk-coverage) is about the
  probability itself, so it always uses the top label: confidence = max(p, 1 - p) and
  correct = ((p >= 0.5) == label).
- A ratio whose denominator is empty (no positives, no examples in a slice) is `None`
  rather than a made-up 0 or 1; `None` fails any gate that depends on it.

Quality gates (`gates`), each a number in [0, 1] compared with the seed's threshold,
computed on the hard rows (`heldout_templates`, the shift splits and the held-out
evidence slice) so that telemetry shortcuts do not pass them:

- governance_score >= 0.85 and >= 0.05 above the best trivial rule: the mean over the
  hard sets of min(1, HITL accuracy / the set's ceiling).
- trust_validation >= 0.80 and >= 0.05 above the best trivial rule: the mean of
  `withheld`, `extended` and `overridden` (see the function).
- professional_communication >= 0.90: eval/communication.py.

docs/eval.md states the same definitions with their reasons.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from promethios_jax.data.schema import DOMAIN_TRUST

ECE_BINS = 15
ECE_EQUAL_MASS_BINS = 10
TARGET_RISK = 0.05

GATE_THRESHOLDS = {
    "governance_score": 0.85,
    "trust_validation": 0.80,
    "professional_communication": 0.90,
}
# governance_score and trust_validation must also beat the best trivial rule by this much.
GATE_MARGIN = 0.05


def _f(x) -> float | None:
    """A JSON-safe float: None for missing or non-finite values."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def ratio(num, den) -> float | None:
    return float(num) / float(den) if den else None


# --------------------------------------------------------------------------- binary

def binary_metrics(pred, label) -> dict:
    """Accuracy, precision, recall and F1 of 0/1 predictions against 0/1 labels."""
    pred = np.asarray(pred).astype(bool).ravel()
    label = np.asarray(label).astype(bool).ravel()
    if pred.shape != label.shape:
        raise ValueError(f"pred {pred.shape} and label {label.shape} differ in shape")
    tp = int(np.sum(pred & label))
    fp = int(np.sum(pred & ~label))
    fn = int(np.sum(~pred & label))
    precision = ratio(tp, tp + fp)
    recall = ratio(tp, tp + fn)
    # F1 = 2tp / (2tp + fp + fn) is defined whenever anything is predicted or labelled.
    f1 = ratio(2 * tp, 2 * tp + fp + fn)
    return {
        "accuracy": ratio(int(np.sum(pred == label)), pred.size),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "tp": tp, "fp": fp, "fn": fn, "tn": int(pred.size - tp - fp - fn),
    }


def accuracy(pred, label, mask=None) -> float | None:
    pred, label = np.asarray(pred).ravel(), np.asarray(label).ravel()
    if mask is not None:
        keep = np.asarray(mask).astype(bool).ravel()
        pred, label = pred[keep], label[keep]
    return ratio(int(np.sum(pred == label)), pred.size)


# ---------------------------------------------------------------------- calibration

def top_label(p, label):
    """(confidence, correct) of the top label of a binary probability."""
    p = np.asarray(p, dtype=np.float64).ravel()
    label = np.asarray(label).astype(bool).ravel()
    conf = np.maximum(p, 1.0 - p)
    correct = (p >= 0.5) == label
    return conf, correct


def reliability_bins(p, label, n_bins: int = ECE_BINS) -> dict:
    """Equal-width bins over [0, 1] of the top-label confidence.

    Bin b holds confidences in (b/n, (b+1)/n]; confidence 0 (impossible for a top label,
    which is >= 0.5) would fall in the first bin. Returns per-bin counts, mean
    confidence and accuracy (NaN where empty) and the edges, for the reliability diagram.
    """
    conf, correct = top_label(p, label)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = conf_sum / count
        acc = acc_sum / count
    return {"edges": edges, "count": count, "confidence": mean_conf, "accuracy": acc}


def ece(p, label, n_bins: int = ECE_BINS) -> float | None:
    """Expected calibration error with equal-width bins: sum_b n_b/N |acc_b - conf_b|."""
    bins = reliability_bins(p, label, n_bins)
    n = bins["count"].sum()
    if n == 0:
        return None
    full = bins["count"] > 0
    gap = np.abs(bins["accuracy"][full] - bins["confidence"][full])
    return float(np.sum(bins["count"][full] * gap) / n)


def ece_equal_mass(p, label, n_bins: int = ECE_EQUAL_MASS_BINS) -> float | None:
    """ECE with equal-mass bins: examples sorted by confidence, split into n_bins
    consecutive groups whose sizes differ by at most one (np.array_split)."""
    conf, correct = top_label(p, label)
    n = conf.size
    if n == 0:
        return None
    order = np.argsort(conf, kind="stable")
    total = 0.0
    for chunk in np.array_split(order, min(n_bins, n)):
        total += chunk.size * abs(correct[chunk].mean() - conf[chunk].mean())
    return float(total / n)


def brier(p, label) -> float | None:
    """Binary Brier score: mean (p - label)^2 of the escalation probability."""
    p = np.asarray(p, dtype=np.float64).ravel()
    label = np.asarray(label, dtype=np.float64).ravel()
    return float(np.mean((p - label) ** 2)) if p.size else None


# --------------------------------------------------------------------- deferral

def risk_coverage(p, label) -> dict:
    """The risk-coverage curve of deferring the least confident HITL calls.

    The model keeps ("covers") the k examples with the highest top-label confidence and
    defers the rest; risk(k) = errors among the covered / k, coverage = k / N. Ties in
    confidence cannot be split by a threshold, so inside a tied group the errors are
    spread evenly (the expected risk under a random order of the ties); the curve is
    then independent of the order of the input.

    Returns `coverage` and `risk` for k = 1..N, `thresholds`: the (coverage, risk) at
    each distinct confidence (the points a threshold can reach), `aurc` (mean risk over
    k, Geifman et al.) and `coverage_at_risk` (the largest threshold-reachable coverage
    whose risk is <= TARGET_RISK, 0 when none).
    """
    conf, correct = top_label(p, label)
    n = conf.size
    if n == 0:
        return {"coverage": np.zeros(0), "risk": np.zeros(0), "aurc": None,
                "coverage_at_risk": None, "thresholds": {"confidence": np.zeros(0),
                                                         "coverage": np.zeros(0), "risk": np.zeros(0)}}
    order = np.argsort(-conf, kind="stable")
    conf_s, err_s = conf[order], (~correct[order]).astype(np.float64)
    # Group boundaries of tied confidences (sorted descending).
    starts = np.flatnonzero(np.r_[True, conf_s[1:] != conf_s[:-1]])
    ends = np.r_[starts[1:], n]
    group_err = np.add.reduceat(err_s, starts)
    err_spread = np.repeat(group_err / (ends - starts), ends - starts)
    cum_err = np.cumsum(err_spread)
    k = np.arange(1, n + 1)
    risk = cum_err / k
    coverage = k / n
    at = ends - 1  # last index of each group: the threshold-reachable points
    th_cov, th_risk = coverage[at], risk[at]
    ok = th_risk <= TARGET_RISK + 1e-12
    return {
        "coverage": coverage,
        "risk": risk,
        "thresholds": {"confidence": conf_s[starts], "coverage": th_cov, "risk": th_risk},
        "aurc": float(risk.mean()),
        "coverage_at_risk": float(th_cov[ok].max()) if ok.any() else 0.0,
    }


# ------------------------------------------------------------------ governance rules

def trust_requirement(domains: Sequence[str], domain_trust: Mapping[str, float]) -> np.ndarray:
    """Per-example trust requirement of its domain; NaN where the domain has none."""
    return np.asarray([domain_trust.get(d, np.nan) for d in domains], dtype=np.float64)


def _under(trust, required) -> np.ndarray:
    trust = np.asarray(trust, dtype=np.float64).ravel()
    with np.errstate(invalid="ignore"):
        # NaN (no requirement, no trust) compares False: excluded. The tolerance keeps
        # two-decimal values equal to the requirement on the "meets it" side, as the rule does.
        return trust < np.asarray(required, dtype=np.float64) - 1e-9


def domain_compliance(escalated, trust, domains: Sequence[str],
                      domain_trust: Mapping[str, float] | None = None) -> dict:
    """Of the examples whose trust is under their domain's requirement, the share the
    model escalates. Domains without a requirement are left out. Default mapping:
    promethios_jax.data.schema.DOMAIN_TRUST."""
    domain_trust = DOMAIN_TRUST if domain_trust is None else domain_trust
    escalated = np.asarray(escalated).astype(bool).ravel()
    under = _under(trust, trust_requirement(domains, domain_trust))
    n = int(under.sum())
    return {"value": ratio(int(escalated[under].sum()), n), "count": n}


def trust_validation(escalated, trust, domains: Sequence[str], domain_trust: Mapping[str, float],
                     rule_hitl, evidence) -> dict:
    """Does the model trust exactly whom the rule trusts, and no further than the
    evidence allows? The mean of three rates: `withheld`, of the rows whose trust is
    under their domain's requirement the share escalated; `extended`, of the rows the
    noise-free rule lets through the share not escalated; `overridden`, of the rows whose
    trust meets the requirement without distress (`evidence`) but whose evidence makes
    the rule escalate, the share escalated. "Escalate iff trust < requirement" scores
    1, 1, 0. A side with no rows is left out. `rule_hitl` < 0 marks unknown rows.
    """
    escalated = np.asarray(escalated).astype(bool).ravel()
    rule_hitl, evidence = np.asarray(rule_hitl).ravel(), np.asarray(evidence).astype(bool).ravel()
    under = _under(trust, trust_requirement(domains, domain_trust))
    clear = (rule_hitl == 0) & ~under
    over = evidence & (rule_hitl == 1) & ~under
    rates = {"withheld": ratio(int(escalated[under].sum()), int(under.sum())),
             "extended": ratio(int((~escalated[clear]).sum()), int(clear.sum())),
             "overridden": ratio(int(escalated[over].sum()), int(over.sum()))}
    parts = [x for x in rates.values() if x is not None]
    return {"value": float(np.mean(parts)) if parts else None, **rates, "count_under": int(under.sum()),
            "count_clear": int(clear.sum()), "count_overridden": int(over.sum())}


def conflict_resolution_accuracy(hitl_pred, hitl_label, conflict) -> float | None:
    """HITL accuracy on the examples whose signals conflict (labels.conflict true)."""
    return accuracy(hitl_pred, hitl_label, mask=conflict)


# ----------------------------------------------------------------- other heads

def multilabel_macro_f1(scores, targets, threshold: float = 0.5,
                        names: Sequence[str] | None = None) -> dict:
    """Macro-F1 over label columns: predicted = score >= threshold (scores are
    probabilities), true = target >= 0.5. A column with no positives predicted or
    labelled has no F1 and is left out of the mean (listed as None)."""
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} must be equal [N, C]")
    per = []
    for c in range(scores.shape[1]):
        per.append(binary_metrics(scores[:, c] >= threshold, targets[:, c] >= 0.5)["f1"])
    defined = [f for f in per if f is not None]
    names = list(names) if names is not None else [str(i) for i in range(scores.shape[1])]
    return {"macro_f1": float(np.mean(defined)) if defined else None,
            "per_label": dict(zip(names, per))}


def mean_abs_error(pred, target) -> float | None:
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    return float(np.mean(np.abs(pred - target))) if pred.size else None


def perplexity(nll_sum: float, token_count: float) -> float | None:
    """exp(summed response-token NLL / number of response tokens)."""
    if not token_count:
        return None
    return float(math.exp(nll_sum / token_count))


# ------------------------------------------------------------------------- gates

def governance_score(sets: Mapping[str, tuple]) -> dict:
    """The mean over the hard sets of HITL accuracy relative to that set's ceiling.

    `sets` maps a name to (pred, label, rule): escalation predictions, recorded labels
    (noisy) and the noise-free rule's verdict; the ceiling is the rule's accuracy on the
    same rows, so a set's part is min(1, accuracy / ceiling). None when a set is empty.
    """
    parts = {}
    for name, (pred, label, rule) in sets.items():
        acc, ceil = accuracy(pred, label), accuracy(rule, label)
        parts[name] = None if acc is None or not ceil else min(1.0, acc / ceil)
    ok = all(v is not None for v in parts.values()) and parts
    return {"value": float(np.mean(list(parts.values()))) if ok else None, "parts": parts}


def gates(values: Mapping[str, float | None], thresholds: Mapping[str, float] = GATE_THRESHOLDS,
          baselines: Mapping[str, tuple] | None = None) -> dict:
    """{name: {value, threshold, passed}}; a missing value does not pass. `baselines`
    maps a gate to (best trivial baseline's name, its value): the gate then also needs a
    margin of GATE_MARGIN over it (`margin`, `best_baseline` are reported)."""
    out = {}
    for name, th in thresholds.items():
        v = _f(values.get(name))
        g = {"value": v, "threshold": float(th), "passed": bool(v is not None and v >= th)}
        if baselines and name in baselines:
            base, bv = baselines[name]
            margin = None if v is None or bv is None else v - bv
            g.update(best_baseline=base, best_baseline_value=_f(bv), margin=_f(margin),
                     required_margin=GATE_MARGIN)
            g["passed"] = g["passed"] and margin is not None and margin >= GATE_MARGIN - 1e-12
        out[name] = g
    return out
