"""Telemetry draws for the generator: the training distribution (bands apportioned by
weight, telemetry drawn per band by rejection so the labels are the rule's) and the
shift splits' conditions (trust at the boundary, evidence near its threshold).
"""
from __future__ import annotations

import numpy as np

from promethios_jax.data import schema


def apportion(weights: dict, n: int) -> list:
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


def rule(domain_idx, t: dict) -> dict:
    """The rule's arrays (schema.rule_arrays) for telemetry columns `t`."""
    return schema.rule_arrays(domain_idx, t["trust"], t["intensity"], t["verify"], t["attest"], t["bound"],
                              t["emotion"], t["state"], t["model"])


def _sample(rng, domain_idx: np.ndarray, target: np.ndarray, key, tries: int = 16) -> dict:
    """Telemetry with `key(domains, candidates) == target` per example, by vectorized rejection."""
    n = len(domain_idx)
    out = {k: np.zeros(n, np.float64 if k in schema.NUMERIC_KEYS else np.int64)
           for k in ("trust", "intensity", "verify", "attest", "bound", "emotion", "state", "model")}
    todo = np.arange(n)
    for _ in range(200):
        if not len(todo):
            return out
        dom = np.repeat(domain_idx[todo], tries)
        cand = _propose(rng, dom)
        ok = (key(dom, cand) == np.repeat(target[todo], tries)).reshape(len(todo), tries)
        hit = ok.any(axis=1)
        pick = np.arange(len(todo)) * tries + ok.argmax(axis=1)
        for k in out:
            out[k][todo[hit]] = cand[k][pick[hit]]
        todo = todo[~hit]
    raise RuntimeError(f"telemetry sampling did not converge for {len(todo)} examples")


def sample_telemetry(rng, domain_idx: np.ndarray, band_idx: np.ndarray, tries: int = 16) -> dict:
    """Telemetry whose rule band equals `band_idx`, by vectorized rejection sampling."""
    return _sample(rng, domain_idx, band_idx, lambda dom, cand: rule(dom, cand)["band"], tries)


def iid_telemetry(rng, domain_idx: np.ndarray) -> dict:
    """The training distribution: bands apportioned by BAND_WEIGHTS, telemetry drawn per band."""
    n = len(domain_idx)
    band = np.array(apportion(schema.BAND_WEIGHTS, n))[rng.permutation(n)]
    return sample_telemetry(rng, domain_idx, np.array([schema.CONFIDENCE_BANDS.index(b) for b in band]))


def boundary_telemetry(rng, domain_idx: np.ndarray) -> dict:
    """The training proposal with trust moved to within BOUNDARY_WIDTH of the requirement."""
    t = _propose(rng, domain_idx)
    req = np.array([schema.DOMAIN_TRUST[d] for d in schema.DOMAINS])[domain_idx]
    w = int(round(schema.BOUNDARY_WIDTH * 100))
    t["trust"] = np.round(np.clip(req + rng.integers(-w, w + 1, len(domain_idx)) / 100, 0.0, 1.0), 2)
    return t


def evidence_telemetry(rng, domain_idx: np.ndarray) -> dict:
    """Half escalations, half not, all decided by the evidence gate near its threshold."""
    n = len(domain_idx)
    target = rng.permutation(np.arange(n) % 2)

    def key(dom, cand):
        r = rule(dom, cand)
        near = schema.slice_masks(dom, cand["trust"], cand["intensity"], cand["emotion"], r["risk"])
        return np.where(near["evidence_near"], r["hitl"], -1)

    return _sample(rng, domain_idx, target, key)
