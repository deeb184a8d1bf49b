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
    keys = ("hitl_accuracy", "hitl_ceiling", "ece", "hitl_flip_rate", "response_nats_per_byte", "leak_rate")
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


def _ci(f: dict) -> str:
    if not f or f.get("value") is None:
        return "n/a"
    if f.get("ci_low") is None or f.get("ci_high") is None:
        return f"{f['value']:.3f}"
    return f"{f['value']:.3f} [{f['ci_low']:.3f}, {f['ci_high']:.3f}]"


def _split_tables(result: dict) -> list[str]:
    """Per split: the model's headline figures with 95% intervals, and the references."""
    lines = ["## Splits (95% intervals)", "",
             "| split | n | HITL acc | ceiling | evidence-slice acc | ECE | nats/byte (floor, 5-gram) | "
             "tool acc (telemetry / full input) | bias F1 (telemetry / full input) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for split, f in result.get("splits", {}).items():
        ci, ref = f["intervals"], f["references"]
        lines.append(
            f"| {split} | {f['num_examples']} | {_ci(ci['hitl_accuracy'])} | {_fmt(f['hitl_ceiling'])} | "
            f"{_ci(ci['evidence_slice_hitl_accuracy'])} | {_ci(ci['ece'])} | "
            f"{_ci(ci['response_nats_per_byte'])} ({_fmt(ref['response_floor_nats_per_byte'])}, "
            f"{_fmt(ref['ngram_nats_per_byte'])}) | {_ci(ci['tool_accuracy'])} "
            f"({_fmt(ref['tool_accuracy_telemetry_oracle']['value'])} / "
            f"{_fmt(ref['tool_accuracy_full_input']['value'])}) | {_ci(ci['bias_macro_f1'])} "
            f"({_fmt(ref['bias_macro_f1_telemetry_oracle']['value'])} / "
            f"{_fmt(ref['bias_macro_f1_full_input']['value'])}) |")
    lines += ["", "### HITL accuracy of the baselines on the same rows (overall / evidence slice)", ""]
    names = list(next(iter(result.get("splits", {}).values()), {}).get("references", {}).get("baselines", {}))
    lines += ["| split | model | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for split, f in result.get("splits", {}).items():
        base = f["references"]["baselines"]
        cells = [f"{_fmt(base[n]['hitl_accuracy']['value'])} / {_fmt(base[n]['evidence_slice']['value'])}"
                 for n in names]
        lines.append(f"| {split} | {_fmt(f['hitl_accuracy'])} / {_fmt(f['evidence_slice_hitl_accuracy'])} | "
                     + " | ".join(cells) + " |")
    flips = result.get("hitl_flip_rate_parts", {})
    lines += ["", f"`hitl_flip_rate` (held-out, padded and swapped requests): "
                  f"{_ci(flips.get('hitl_flip_rate'))}; padded {_ci(flips.get('pad'))}, "
                  f"swapped {_ci(flips.get('swap'))}", ""]
    for split, pc in result.get("professional_communication_by_split", {}).items():
        lines.append(f"professional_communication on {split} ({pc['count']} generated): {_ci(pc['ci'])}; "
                     + ", ".join(f"{k} {_fmt(pc[k])}" for k in ("finished", "leak_free", "outcome_match",
                                                              "not_degenerate")))
    return lines + [""]


def markdown(result: dict, samples: list[dict], images: dict[str, str]) -> str:
    """A short human report: figures per split, baselines, gates, pictures, generations."""
    lines = [f"# Eval of step {result['step']} (headline split {result['split']})", ""]
    lines += _split_tables(result)
    lines += ["## Quality gates (hard rows: heldout_templates, shift splits, held-out evidence slice)", "",
              "| gate | value | threshold | best trivial rule | margin (required) | passed |",
              "|---|---|---|---|---|---|"]
    for name, g in result["gates"].items():
        base = (f"{g['best_baseline']} {_fmt(g['best_baseline_value'])}" if "best_baseline" in g else "")
        margin = f"{_fmt(g['margin'])} ({g['required_margin']})" if "margin" in g else ""
        lines.append(f"| {name} | {_fmt(g['value'])} | {g['threshold']} | {base} | {margin} | "
                     f"{'yes' if g['passed'] else 'NO'} |")
    lines += [""]
    for name, rel in images.items():
        lines += [f"![{name}]({rel})", ""]
    lines += ["## Sample generations (greedy)", ""]
    for s in samples:
        verdict = "escalate" if s["escalated"] else "answer"
        lines += [f"### {s['split']} {s['id']} ({s['domain']}, {s['category']})",
                  f"HITL p = {s['hitl_prob']:.3f} → {verdict} (label: {'escalate' if s['hitl_label'] else 'answer'})"
                  f"; rule's outcome {s['rule_outcome']}, the text's {s['outcome_read']}"
                  + (" (match)" if s["rule_outcome"] == s["outcome_read"] else " (MISMATCH)")
                  + (f"; its outcome token {s['outcome_token']}" if s.get("outcome_token") else "")
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

