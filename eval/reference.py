"""Reference points beside the model, on the same rows (promethios_jax/data/baselines.py).

`reference_columns` adds to each prediction row what the references predict for it, so
that `<step>.predictions.jsonl` alone recomputes every figure:

    baseline_<name>        0/1 HITL verdict of each telemetry baseline (BASELINES), oracle included
    evidence_slice         trust meets the requirement and no distress: the evidence decides
    rule_outcome           the noise-free rule's outcome (eval.communication.OUTCOMES)
    tool_telemetry_oracle  the tool rule (RULES.md) with the noise-free verdict and, for an
                           answer, the train split's most frequent scenario tool of the domain
    tool_full_input        the same with the tool of the generator's scenario the request matches
    bias_telemetry_oracle  the bias labels the telemetry alone implies (no framing read)
    bias_full_input        the bias labels with the framing read from the request
    ngram_nats, ngram_bytes  the byte n-gram's nats for the full reference response, its bytes

`reference_figures` scores them per split with 95% intervals.
"""
from __future__ import annotations

import re
from collections import Counter

import numpy as np

from eval import communication as C
from eval import metrics as M
from promethios_jax.data import baselines as B
from promethios_jax.data import generate, schema, templates
from promethios_jax.data.prompt import split_prompt

BASELINES = ("majority", "one_field", "trust_gate", "two_field", "mlp", "oracle")
TRIVIAL = ("majority", "one_field", "trust_gate", "two_field")  # the rules a gate must beat
NGRAM_ORDER = 5


def _template_regex(text: str) -> re.Pattern:
    parts = re.split(r"\$\{?\w+\}?", text)
    return re.compile(".+?".join(re.escape(p) for p in parts), re.DOTALL | re.IGNORECASE)


def _scenario_readers() -> list:
    """(request regex, tool) of every scenario the generator knows, longest first."""
    out = []
    for tpl in (templates.TRAIN, templates.HELDOUT):
        for scenarios in tpl["scenarios"].values():
            for request, _task, _answer, tool in scenarios:
                out.append((len(request), _template_regex(request), tool))
    return [(rx, tool) for _, rx, tool in sorted(out, key=lambda x: -x[0])]


def _framings() -> list:
    return [(f, name) for tpl in (templates.TRAIN, templates.HELDOUT)
            for name, phrases in tpl["framings"].items() for f in phrases]


class References:
    """The references fit on the train split: baselines, the tool table, the n-gram."""

    def __init__(self, train: list[dict]):
        self.baselines = B.fit_baselines(train)
        by_domain: dict = {}
        for r in train:  # the scenario tools (what neither escalation nor refusal sets)
            if r["labels"]["decision"] not in ("escalate", "decline"):
                by_domain.setdefault(r["domain"], Counter())[r["labels"]["tool"]] += 1
        self.domain_tool = {d: c.most_common(1)[0][0] for d, c in by_domain.items()}
        self.ngram = B.ByteNgram(NGRAM_ORDER).fit([r["response"] for r in train])
        self.scenarios, self.framings = _scenario_readers(), _framings()

    def _tool_from_text(self, request: str) -> str:
        for rx, tool in self.scenarios:
            if rx.search(request):
                return tool
        return schema.TOOLS[0]

    @staticmethod
    def _tool(rule: dict, scenario_tool: str) -> int:
        """RULES.md: human_handoff for HITL, none for a decline, else the scenario's tool."""
        if rule["hitl"]:
            return schema.TOOLS.index("human_handoff")
        return schema.TOOLS.index("none" if rule["decision"] == "decline" else scenario_tool)

    def _framing(self, request: str):
        return next((name for phrase, name in self.framings if phrase in request), None)

    def columns(self, records: list[dict]) -> list[dict]:
        """One dict of reference columns per record (see the module docstring)."""
        preds = {n: self.baselines[n].predict(records) for n in BASELINES}
        evidence = schema.rule_records(records)["evidence"]
        ngram = self.ngram.nats_each([r["response"] for r in records])
        out = []
        for i, r in enumerate(records):
            request = split_prompt(r["prompt"])[1]
            tel, dom = r["telemetry"], r["domain"]
            rule = schema.apply_rule(tel, dom)
            out.append({
                **{f"baseline_{n}": int(preds[n][i]) for n in BASELINES},
                "evidence_slice": bool(evidence[i]),
                "rule_outcome": C.rule_outcome(tel, dom),
                "tool_telemetry_oracle": self._tool(rule, self.domain_tool.get(dom, schema.TOOLS[0])),
                "tool_full_input": self._tool(rule, self._tool_from_text(request)),
                "bias_telemetry_oracle": list(generate.bias_labels(tel, dom, None).values()),
                "bias_full_input": list(generate.bias_labels(tel, dom, self._framing(request)).values()),
                "ngram_nats": round(float(ngram[i]), 6),
                "ngram_bytes": len(r["response"].encode("utf-8")),
            })
        return out


def with_ci(k: int, n: int) -> dict:
    """{value, ci_low, ci_high, n}: a proportion with its 95% Wilson interval."""
    lo, hi = B.wilson_interval(k, n)
    return {"value": k / n if n else None, "ci_low": None if not n else lo, "ci_high": None if not n else hi,
            "n": int(n)}


def accuracy_ci(pred, label) -> dict:
    pred, label = np.asarray(pred), np.asarray(label)
    return with_ci(int((pred == label).sum()), len(label))


def bootstrap_ci(statistic, *arrays, n_boot: int = 200) -> dict:
    """{value, ci_low, ci_high, n}: a statistic of per-row arrays with a percentile bootstrap."""
    n = len(arrays[0])
    if not n:
        return {"value": None, "ci_low": None, "ci_high": None, "n": 0}
    lo, hi = B.bootstrap_interval(statistic, *arrays, n_boot=n_boot)
    return {"value": M._f(statistic(*[np.asarray(a) for a in arrays])), "ci_low": M._f(lo),
            "ci_high": M._f(hi), "n": int(n)}


def _macro_f1(pred, label) -> float:
    f1 = M.multilabel_macro_f1(pred, label)["macro_f1"]
    return np.nan if f1 is None else f1


def _ratio(num, den) -> float:
    return float(num.sum() / den.sum()) if den.sum() else np.nan


def reference_figures(rows: list[dict], floor=None) -> dict:
    """Per-split references: baselines' HITL accuracy (overall, evidence slice), the tool
    and bias oracles, and nats per byte of the n-gram beside the generator's floor."""
    y = np.array([r["hitl_label"] for r in rows])
    ev = np.array([r["evidence_slice"] for r in rows], bool)
    base = {}
    for n in BASELINES:
        p = np.array([r[f"baseline_{n}"] for r in rows])
        base[n] = {"hitl_accuracy": accuracy_ci(p, y), "evidence_slice": accuracy_ci(p[ev], y[ev])}
    tool = np.array([r["tool_label"] for r in rows])
    bias = np.array([r["bias_label"] for r in rows], np.float64)
    out = {"baselines": base}
    for src in ("telemetry_oracle", "full_input"):
        out[f"tool_accuracy_{src}"] = accuracy_ci(np.array([r[f"tool_{src}"] for r in rows]), tool)
        out[f"bias_macro_f1_{src}"] = bootstrap_ci(_macro_f1, np.array([r[f"bias_{src}"] for r in rows],
                                                                       np.float64), bias)
    out["ngram_nats_per_byte"] = _ratio(np.array([r["ngram_nats"] for r in rows]),
                                        np.array([r["ngram_bytes"] for r in rows], np.float64))
    out["response_floor_nats_per_byte"] = floor
    return out


def model_intervals(rows: list[dict]) -> dict:
    """The model's headline figures on one split with 95% intervals."""
    y = np.array([r["hitl_label"] for r in rows])
    p = np.array([r["hitl_prob"] for r in rows])
    pred = np.array([r["hitl_pred"] for r in rows])
    ev = np.array([r["evidence_slice"] for r in rows], bool)
    nll = np.array([r["response_nll_sum"] for r in rows])
    nbytes = np.array([r["response_bytes"] for r in rows], np.float64)
    return {
        "hitl_accuracy": accuracy_ci(pred, y),
        "evidence_slice_hitl_accuracy": accuracy_ci(pred[ev], y[ev]),
        "ece": bootstrap_ci(lambda a, b: np.nan if not len(a) else M.ece(a, b), p, y),
        "tool_accuracy": accuracy_ci(np.array([r["tool_pred"] for r in rows]),
                                     np.array([r["tool_label"] for r in rows])),
        "bias_macro_f1": bootstrap_ci(_macro_f1, np.array([r["bias_pred"] for r in rows], np.float64),
                                      np.array([r["bias_label"] for r in rows], np.float64)),
        "response_nats_per_byte": bootstrap_ci(_ratio, nll, nbytes),
    }

