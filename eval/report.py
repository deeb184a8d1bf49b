"""Pictures and the markdown report of one eval run (matplotlib, Agg: no display)."""
from __future__ import annotations

import os

import numpy as np

from eval import metrics as M


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # headless: eval runs on servers and in CI
    import matplotlib.pyplot as plt
    return plt


def reliability_diagram(p, label, path: str, n_bins: int = M.ECE_BINS, title: str = "") -> str:
    """Accuracy against mean confidence per equal-width bin of the top-label
    confidence, with the bin counts below; the diagonal is perfect calibration."""
    plt = _pyplot()
    bins = M.reliability_bins(p, label, n_bins)
    edges, count = bins["edges"], bins["count"]
    centers = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    full = count > 0
    fig, (ax, axc) = plt.subplots(2, 1, figsize=(5, 6), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], "--", color="gray", lw=1, label="perfect calibration")
    ax.bar(centers[full], bins["accuracy"][full], width=width * 0.95, color="#4C72B0",
           edgecolor="black", lw=0.5, label="accuracy")
    # Mean confidence as outlines: where the outline is above the bar, the model is over-confident.
    ax.bar(centers[full], bins["confidence"][full], width=width * 0.95, fill=False,
           edgecolor="#C44E52", lw=1.5, label="mean confidence")
    e = M.ece(p, label, n_bins)
    ax.set_ylabel("accuracy")
    # Top-label confidence of a binary head is >= 0.5: the bins below are always empty.
    ax.set_xlim(0.5 - width, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title or f"HITL reliability ({n_bins} bins), ECE = {e if e is None else round(e, 4)}")
    ax.legend(loc="upper left", fontsize=8)
    axc.bar(centers, count, width=width * 0.95, color="gray")
    axc.set_xlabel("top-label confidence max(p, 1-p)")
    axc.set_ylabel("examples")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def risk_coverage_plot(p, label, path: str, title: str = "") -> str:
    """Risk (error rate of the kept HITL calls) against coverage when the least
    confident calls are deferred; the shaded area is AURC."""
    plt = _pyplot()
    rc = M.risk_coverage(p, label)
    fig, ax = plt.subplots(figsize=(5, 4))
    if rc["coverage"].size:
        cov = np.r_[0.0, rc["coverage"]]
        risk = np.r_[rc["risk"][0], rc["risk"]]
        ax.plot(cov, risk, color="#4C72B0", lw=1.5, label=f"AURC = {rc['aurc']:.4f}")
        ax.fill_between(cov, 0, risk, color="#4C72B0", alpha=0.15)
        ax.axhline(M.TARGET_RISK, ls="--", color="#C44E52", lw=1,
                   label=f"risk {M.TARGET_RISK:.0%}: coverage {rc['coverage_at_risk']:.2f}")
        ax.set_ylim(0, max(0.1, float(risk.max()) * 1.1))
    ax.set_xlim(0, 1)
    ax.set_xlabel("coverage (share kept by the model)")
    ax.set_ylabel("risk (HITL error rate among kept)")
    ax.set_title(title or "HITL deferral: risk-coverage")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def summary(result: dict) -> str:
    """One line: the headline figures and the gates."""
    keys = ("hitl_accuracy", "hitl_ceiling", "ece", "domain_compliance", "leak_rate", "perplexity")
    gates = ", ".join(f"{k} {_fmt(g['value'])} {'pass' if g['passed'] else 'FAIL'}"
                      for k, g in result["gates"].items())
    return (f"eval step {result['step']} ({result['num_examples']} {result['split']} examples): "
            + ", ".join(f"{k} {_fmt(result.get(k))}" for k in keys) + f"; gates: {gates}")


def pick_samples(gens: list[dict], n: int) -> list[dict]:
    """Up to n generations for the report, half escalated and half answered when possible."""
    esc = [g for g in gens if g["escalated"]]
    ans = [g for g in gens if not g["escalated"]]
    k = min(len(esc), max(n // 2, n - len(ans)))
    return esc[:k] + ans[:n - k]


def markdown(result: dict, samples: list[dict], images: dict[str, str]) -> str:
    """A short human report: headline metrics, gates, pictures, sample generations."""
    lines = [f"# Eval of step {result['step']} ({result['split']}, {result['num_examples']} examples)", ""]
    lines += ["| metric | value |", "|---|---|"]
    for key in ("hitl_accuracy", "hitl_ceiling", "hitl_majority_baseline", "hitl_precision", "hitl_recall",
                "hitl_f1", "ece", "ece_equal_mass", "brier", "aurc", "coverage_at_5pct_risk",
                "domain_compliance", "conflict_resolution_accuracy", "confidence_accuracy",
                "decision_accuracy", "tool_accuracy", "bias_macro_f1", "uncertainty_mae", "perplexity",
                "leak_rate"):
        if key in result:
            lines.append(f"| `{key}` | {_fmt(result[key])} |")
    lines += ["", "## Quality gates", "", "| gate | value | threshold | passed |", "|---|---|---|---|"]
    for name, g in result["gates"].items():
        lines.append(f"| {name} | {_fmt(g['value'])} | {g['threshold']} | {'yes' if g['passed'] else 'NO'} |")
    lines += [""]
    for name, rel in images.items():
        lines += [f"![{name}]({rel})", ""]
    lines += ["## Sample generations (greedy)", ""]
    for s in samples:
        verdict = "escalate" if s["escalated"] else "answer"
        lines += [f"### {s['id']} ({s['domain']}, {s['category']})",
                  f"HITL p = {s['hitl_prob']:.3f} → {verdict} (label: {'escalate' if s['hitl_label'] else 'answer'})"
                  + (f"; leaks: {', '.join(s['leaks'])}" if s["leaks"] else ""),
                  "", "Prompt:", "", "```", s["prompt"].strip(), "```", "", "Response:", "", "```",
                  s["response"].strip() or "(empty)", "```", ""]
    return "\n".join(lines)


def write_report(out_dir: str, result: dict, hitl_prob, hitl_label, samples: list[dict]) -> dict:
    """Writes <step>.reliability.png, <step>.risk_coverage.png and <step>.md into out_dir."""
    step = result["step"]
    rel = reliability_diagram(hitl_prob, hitl_label, os.path.join(out_dir, f"{step}.reliability.png"))
    rc = risk_coverage_plot(hitl_prob, hitl_label, os.path.join(out_dir, f"{step}.risk_coverage.png"))
    images = {"reliability diagram": os.path.basename(rel), "risk-coverage": os.path.basename(rc)}
    md_path = os.path.join(out_dir, f"{step}.md")
    with open(md_path, "w") as f:
        f.write(markdown(result, samples, images))
    return {"reliability": rel, "risk_coverage": rc, "markdown": md_path}

