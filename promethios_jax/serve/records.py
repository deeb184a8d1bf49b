"""The audit log and the escalation store, both on disk under the workdir.

Audit: one JSON line per request (never the key, and the prompt's SHA-256 rather than
its text unless asked). Escalations: one JSON file per escalated request in
WORKDIR/serve/escalations/, open until a reviewer resolves it; resolved ones become
dataset records of the generator's schema (`export`), so a later training run can
learn from the reviewer's answer.

    python -m promethios_jax.serve.records export --workdir=DIR --out=FILE.jsonl
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

from promethios_jax.serve import checkpoint_io as io


def serve_dir(workdir) -> Path:
    return Path(workdir) / "serve"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class AuditLog:
    def __init__(self, path, log_prompts: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.log_prompts = log_prompts
        self._lock = threading.Lock()
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, entry: dict, prompt_text: str) -> dict:
        entry = dict(entry, prompt_sha256=sha256(prompt_text))
        if self.log_prompts:
            entry["prompt"] = prompt_text
        line = json.dumps(entry, sort_keys=True)
        with self._lock:
            self._f.write(line + "\n")
            self._f.flush()
        return entry

    def close(self) -> None:
        with self._lock:
            self._f.close()


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


class EscalationStore:
    """Escalated requests, at most `max_open` open at a time (beyond it, new ones are not kept)."""

    def __init__(self, directory, max_open: int = 10000):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_open = max_open
        self._lock = threading.Lock()
        # Counted once here and kept up to date by add and resolve: re-reading every file at
        # each escalation made a long-running server slower with every request it kept.
        self._num_open = len(self.open())

    def _path(self, esc_id: str) -> Path:
        if not esc_id.replace("-", "").isalnum():
            raise KeyError(esc_id)
        return self.dir / f"{esc_id}.json"

    def all(self) -> list[dict]:
        out = []
        for p in sorted(self.dir.glob("*.json")):
            try:
                out.append(json.loads(p.read_text()))
            except (OSError, ValueError):
                continue  # a file being replaced; the next listing sees it
        return sorted(out, key=lambda e: e["created"])

    def open(self) -> list[dict]:
        return [e for e in self.all() if e["status"] == "open"]

    def add(self, entry: dict) -> bool:
        """Keeps an escalation; False when max_open are already open."""
        with self._lock:
            if self._num_open >= self.max_open:
                return False
            _write_json(self._path(entry["id"]), dict(entry, status="open", created=time.time()))
            self._num_open += 1
            return True

    def get(self, esc_id: str) -> dict:
        path = self._path(esc_id)
        if not path.is_file():
            raise KeyError(esc_id)
        return json.loads(path.read_text())

    def resolve(self, esc_id: str, resolution: dict) -> dict:
        with self._lock:
            entry = self.get(esc_id)
            if entry["status"] != "open":
                raise ValueError(f"escalation {esc_id} is already {entry['status']}")
            entry.update(status="resolved", resolution=dict(resolution, resolved_at=time.time()))
            _write_json(self._path(esc_id), entry)
            self._num_open -= 1
            return entry


def dataset_record(entry: dict, layout: str) -> dict:
    """A resolved escalation as a record of the generator's schema (split "train"), its
    prompt in `layout` (the checkpoint's config.data.prompt_layout).

    The reviewer's decision sets hitl and decision; the band follows the rule unless the
    reviewer disagrees with it (then "low" for a hand-over, "medium" otherwise, as the
    generator does for its noisy labels); uncertainty, bias and conflict follow the rule.
    """
    tel, domain, res = entry["telemetry"], entry["domain"], entry["resolution"]
    hitl = int(res["decision"] == "escalate")
    rule = io.apply_rule(tel, domain)
    band = rule["band"] if rule["hitl"] == hitl else ("low" if hitl else "medium")
    d, e, s, m = io.codes(tel, domain)
    unc = io.uncertainty_arrays([d], [tel["trust"]], [tel["intensity"]], [tel["verify"]], [tel["attest"]],
                                [tel["bound"]], [e], [s], [m])[0]
    tool = res.get("tool") or ("human_handoff" if hitl else "none")
    return {
        "id": f"esc-{entry['id']}",
        "split": "train",
        "category": res.get("category", "operational"),
        "domain": domain,
        "confidence_band": band,
        "telemetry": tel,
        "prompt": io.request_prompt(tel, domain, entry["request_text"], layout),
        "response": res["answer"],
        "labels": {
            "hitl": hitl,
            "decision": res["decision"],
            "confidence": band,
            "uncertainty": {k: round(float(v), 3) for k, v in zip(io.UNCERTAINTY_DIMS, np.asarray(unc))},
            "bias": io.bias_labels(tel, domain),
            "tool": tool,
            "conflict": rule["conflict"],
        },
        "source": {"escalation": entry["id"], "reviewer": res["reviewer"], "model_step": entry["step"]},
    }


def export(workdir, out) -> int:
    """Writes every resolved escalation as a dataset record (JSONL); returns the count."""
    store = EscalationStore(serve_dir(workdir) / "escalations")
    layout = io.read_config(workdir)[0].data.prompt_layout
    records = [dataset_record(e, layout) for e in store.all() if e["status"] == "resolved"]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, sort_keys=True) + "\n")
    os.replace(tmp, out)
    return len(records)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m promethios_jax.serve.records",
                                description="Export resolved escalations as dataset records.")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="resolved escalations -> JSONL records of the generator's schema")
    e.add_argument("--workdir", required=True)
    e.add_argument("--out", required=True)
    a = p.parse_args(argv)
    if not (serve_dir(a.workdir) / "escalations").is_dir():
        p.error(f"--workdir={a.workdir}: no escalations (no {serve_dir(a.workdir) / 'escalations'}); "
                "has a server run on this workdir?")
    n = export(a.workdir, a.out)
    print(f"wrote {n} resolved escalations as dataset records to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
