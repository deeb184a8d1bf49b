"""Label spaces, telemetry encoding and the governance rule (the ground truth).

The rule is documented for readers in `RULES.md` beside this file; `apply_rule` and
`rule_arrays` below are its only implementation. The generator labels every example
with it (plus the stated label noise) and eval scores the model against it.
"""
from __future__ import annotations

import numpy as np

# Domains and the trust each one requires; trust below the requirement escalates.
DOMAINS = ("healthcare", "legal", "finance", "technology", "general")
DOMAIN_TRUST = {"healthcare": 0.75, "legal": 0.8, "finance": 0.7, "technology": 0.65, "general": 0.6}
DOMAIN_WEIGHTS = {"healthcare": 0.2, "legal": 0.2, "finance": 0.2, "technology": 0.2, "general": 0.2}

# The evidence gate: a risk score at or above this escalates to a human.
HITL_THRESHOLD = 0.4
# Distress gate: a distressed emotion at or above this intensity hands over.
DISTRESS_INTENSITY = 0.7
# A non-escalated case is "high" confidence only with this much trust headroom and low risk.
HIGH_TRUST_MARGIN = 0.1
HIGH_MAX_RISK = 0.2
# Fraction of examples whose recorded HITL outcome disagrees with the rule (reviewer noise).
LABEL_NOISE_RATE = 0.025
# Held-out slices (RULES.md, "Splits"): the boundary is trust within BOUNDARY_WIDTH of its
# domain's requirement; shift_evidence keeps trust at least EVIDENCE_TRUST_CLEARANCE above
# it and risk within EVIDENCE_RISK_WINDOW of HITL_THRESHOLD.
BOUNDARY_WIDTH = 0.06
EVIDENCE_TRUST_CLEARANCE = 0.06
EVIDENCE_RISK_WINDOW = 0.1

# Capability categories of the production package and their mix.
CATEGORY_WEIGHTS = {
    "constitutional": 0.16,
    "operational": 0.16,
    "trust_management": 0.16,
    "saas_development": 0.20,
    "collaboration": 0.16,
    "professional_communication": 0.16,
    "memory_integration": 0.12,
}
CATEGORIES = tuple(CATEGORY_WEIGHTS)

# Confidence bands; "low" and "uncertain_emotional" are the HITL bands.
CONFIDENCE_BANDS = ("high", "medium", "low", "uncertain_emotional")
BAND_WEIGHTS = {"high": 0.30, "medium": 0.40, "low": 0.20, "uncertain_emotional": 0.10}
HITL_BANDS = ("low", "uncertain_emotional")

# What the assistant does (labels.decision).
DECISIONS = ("proceed", "proceed_with_safeguards", "escalate", "decline")
# Which tool the assistant reaches for (labels.tool); HITL cases use human_handoff.
TOOLS = ("none", "code_sandbox", "policy_lookup", "memory_store", "agent_coordinator", "human_handoff")
# Which signals disagree (labels.conflict); the first that applies is recorded.
CONFLICTS = ("none", "trust_vs_verification", "emotion_vs_evidence", "evidence_vs_state")
UNCERTAINTY_DIMS = ("epistemic", "aleatoric", "confidence", "contextual", "temporal", "social")
BIAS_CATEGORIES = ("authority", "confirmation", "anchoring", "automation", "availability", "emotional")

# Telemetry value spaces. STATE is the upstream governance decision, MODEL the agreement
# of the evaluator ensemble; each carries a risk in [0, 1] that enters the risk score.
EMOTIONS = ("FOCUSED", "CALM", "CONFIDENT", "CURIOUS", "ANXIOUS", "FRUSTRATED", "CONFUSED", "DISTRESSED")
DISTRESSED_EMOTIONS = ("ANXIOUS", "FRUSTRATED", "CONFUSED", "DISTRESSED")
STATES = ("APPROVED", "PENDING", "REVIEW", "DENIED")
STATE_RISK = {"APPROVED": 0.0, "PENDING": 0.33, "REVIEW": 0.67, "DENIED": 1.0}
MODELS = ("CONSENSUS", "MAJORITY", "SINGLE", "SPLIT")
MODEL_RISK = {"CONSENSUS": 0.0, "MAJORITY": 0.33, "SINGLE": 0.67, "SPLIT": 1.0}

NUMERIC_KEYS = ("trust", "intensity", "verify", "attest", "bound")
# Label names per head or label, in class / dimension order (eval's "label_spaces", the
# server's verdict).
LABEL_SPACES = {"decision": DECISIONS, "confidence": CONFIDENCE_BANDS, "tool": TOOLS, "conflict": CONFLICTS,
                "uncertainty": UNCERTAINTY_DIMS, "bias": BIAS_CATEGORIES}

TELEMETRY_KEYS = ("trust", "emotion", "intensity", "verify", "attest", "bound", "decision", "model")
CATEGORICAL_VALUES = {"emotion": EMOTIONS, "decision": STATES, "model": MODELS}

# Risk weights; each is below HITL_THRESHOLD, so no single evidence field escalates alone.
RISK_WEIGHTS = {"verify": 0.30, "attest": 0.20, "bound": 0.20, "model": 0.15, "decision": 0.15}

# The continuous telemetry vector, feature by feature: the tags' raw values and the
# domain, nothing computed from the rule (no requirement, margin or distress flag), so
# that each domain's trust requirement is something the model has to learn.
TELEMETRY_FEATURES = (
    ("present",)
    + tuple(f"domain={d}" for d in DOMAINS)
    + NUMERIC_KEYS
    + tuple(f"emotion={e}" for e in EMOTIONS)
    + tuple(f"decision={s}" for s in STATES)
    + tuple(f"model={m}" for m in MODELS)
)
TELEMETRY_DIM = len(TELEMETRY_FEATURES)  # 27

_DOMAIN_INDEX = {d: i for i, d in enumerate(DOMAINS)}
_EMOTION_INDEX = {e: i for i, e in enumerate(EMOTIONS)}
_STATE_INDEX = {s: i for i, s in enumerate(STATES)}
_MODEL_INDEX = {m: i for i, m in enumerate(MODELS)}
_REQ = np.array([DOMAIN_TRUST[d] for d in DOMAINS], np.float64)
_DISTRESSED = np.array([e in DISTRESSED_EMOTIONS for e in EMOTIONS])
_STATE_RISK = np.array([STATE_RISK[s] for s in STATES])
_MODEL_RISK = np.array([MODEL_RISK[m] for m in MODELS])
_O_DOMAIN, _O_NUM = 1, 1 + len(DOMAINS)
_O_EMOTION = _O_NUM + len(NUMERIC_KEYS)
_O_STATE = _O_EMOTION + len(EMOTIONS)
_O_MODEL = _O_STATE + len(STATES)


def telemetry_vector(telemetry: dict, domain: str) -> np.ndarray:
    """The example's telemetry as float32[TELEMETRY_DIM] (see TELEMETRY_FEATURES).

    A presence flag, the domain as a one-hot, the numeric tags raw, the categorical
    tags as one-hots: exactly what the prompt's tags say.
    """
    v = np.zeros(TELEMETRY_DIM, np.float32)
    v[0] = 1.0
    v[_O_DOMAIN + _DOMAIN_INDEX[domain]] = 1.0
    v[_O_NUM:_O_EMOTION] = [float(telemetry[k]) for k in NUMERIC_KEYS]
    v[_O_EMOTION + _EMOTION_INDEX[telemetry["emotion"]]] = 1.0
    v[_O_STATE + _STATE_INDEX[telemetry["decision"]]] = 1.0
    v[_O_MODEL + _MODEL_INDEX[telemetry["model"]]] = 1.0
    return v


def rule_arrays(domain, trust, intensity, verify, attest, bound, emotion, state, model) -> dict:
    """The governance rule over arrays (domain/emotion/state/model as integer codes).

    Returns int arrays `hitl`, `band`, `decision`, `conflict` (indices into the label
    tuples) and float `risk`. Precedence, first that applies: distress, trust gate,
    evidence gate; otherwise high or medium confidence. See RULES.md.
    """
    domain, emotion, state, model = (np.asarray(a, np.int64) for a in (domain, emotion, state, model))
    trust, intensity, verify, attest, bound = (np.asarray(a, np.float64)
                                               for a in (trust, intensity, verify, attest, bound))
    req = _REQ[domain]
    risk = (RISK_WEIGHTS["verify"] * (1 - verify) + RISK_WEIGHTS["attest"] * (1 - attest)
            + RISK_WEIGHTS["bound"] * (1 - bound) + RISK_WEIGHTS["model"] * _MODEL_RISK[model]
            + RISK_WEIGHTS["decision"] * _STATE_RISK[state])
    # Tolerances keep values given to two decimals on the side the rule states.
    distress = _DISTRESSED[emotion] & (intensity >= DISTRESS_INTENSITY - 1e-9)
    trust_low = trust < req - 1e-9
    risky = risk >= HITL_THRESHOLD - 1e-9
    hitl = distress | trust_low | risky
    high = ~hitl & (trust >= req + HIGH_TRUST_MARGIN - 1e-9) & (risk < HIGH_MAX_RISK - 1e-9)
    band = np.where(distress, 3, np.where(hitl, 2, np.where(high, 0, 1)))
    denied = state == _STATE_INDEX["DENIED"]
    decision = np.where(hitl, 2, np.where(denied, 3, np.where(high, 0, 1)))
    conflict = np.select(
        [(trust >= req + HIGH_TRUST_MARGIN - 1e-9) & (verify < 0.5),
         distress & ~trust_low & ~risky,
         (denied & (risk < 0.25)) | ((state == _STATE_INDEX["APPROVED"]) & risky)],
        [1, 2, 3], 0)
    return {"hitl": hitl.astype(np.int64), "band": band, "decision": decision,
            "conflict": conflict, "risk": risk}


def slice_masks(domain, trust, intensity, emotion, risk) -> dict:
    """Boolean masks of the held-out slices (see RULES.md), over arrays as in `rule_arrays`.

    `evidence`: neither trust nor distress decides (trust meets the requirement, no
    distress), so the rule's verdict is the evidence gate's. `evidence_near`: the
    `shift_evidence` condition, evidence with trust clear of the requirement and risk near
    the threshold. `boundary`: the `shift_boundary` condition.
    """
    domain, emotion = np.asarray(domain, np.int64), np.asarray(emotion, np.int64)
    trust, intensity, risk = (np.asarray(a, np.float64) for a in (trust, intensity, risk))
    req = _REQ[domain]
    distress = _DISTRESSED[emotion] & (intensity >= DISTRESS_INTENSITY - 1e-9)
    evidence = (trust >= req - 1e-9) & ~distress
    near = (evidence & (trust >= req + EVIDENCE_TRUST_CLEARANCE - 1e-9)
            & (np.abs(risk - HITL_THRESHOLD) <= EVIDENCE_RISK_WINDOW + 1e-9))
    return {"evidence": evidence, "evidence_near": near,
            "boundary": np.abs(trust - req) <= BOUNDARY_WIDTH + 1e-9}


def requirement(domain) -> np.ndarray:
    """The trust requirement of domain codes (array)."""
    return _REQ[np.asarray(domain, np.int64)]


def record_arrays(records) -> dict:
    """The rule's inputs of records (dicts with `telemetry` and `domain`) as arrays."""
    out = {k: np.array([r["telemetry"][k] for r in records], np.float64) for k in NUMERIC_KEYS}
    out["domain"] = np.array([_DOMAIN_INDEX[r["domain"]] for r in records], np.int64)
    out["emotion"] = np.array([_EMOTION_INDEX[r["telemetry"]["emotion"]] for r in records], np.int64)
    out["state"] = np.array([_STATE_INDEX[r["telemetry"]["decision"]] for r in records], np.int64)
    out["model"] = np.array([_MODEL_INDEX[r["telemetry"]["model"]] for r in records], np.int64)
    return out


def rule_records(records) -> dict:
    """`rule_arrays` over records, plus their `slice_masks`."""
    a = record_arrays(records)
    r = rule_arrays(a["domain"], a["trust"], a["intensity"], a["verify"], a["attest"], a["bound"],
                    a["emotion"], a["state"], a["model"])
    r.update(slice_masks(a["domain"], a["trust"], a["intensity"], a["emotion"], r["risk"]))
    return r


def apply_rule(telemetry: dict, domain: str) -> dict:
    """The rule for one example: {hitl: int, band, decision, conflict: names, risk: float}."""
    r = rule_arrays([_DOMAIN_INDEX[domain]], [telemetry["trust"]], [telemetry["intensity"]],
                    [telemetry["verify"]], [telemetry["attest"]], [telemetry["bound"]],
                    [_EMOTION_INDEX[telemetry["emotion"]]], [_STATE_INDEX[telemetry["decision"]]],
                    [_MODEL_INDEX[telemetry["model"]]])
    return {"hitl": int(r["hitl"][0]), "band": CONFIDENCE_BANDS[r["band"][0]],
            "decision": DECISIONS[r["decision"][0]], "conflict": CONFLICTS[r["conflict"][0]],
            "risk": float(r["risk"][0])}


def uncertainty_arrays(domain, trust, intensity, verify, attest, bound, emotion, state, model) -> np.ndarray:
    """The six uncertainty targets in [0, 1], float64[N, 6] in UNCERTAINTY_DIMS order."""
    domain, emotion, state, model = (np.asarray(a, np.int64) for a in (domain, emotion, state, model))
    trust, intensity, verify, attest, bound = (np.asarray(a, np.float64)
                                               for a in (trust, intensity, verify, attest, bound))
    out = np.stack([
        1 - (0.6 * verify + 0.4 * attest),                      # epistemic: unverified knowledge
        0.6 * _MODEL_RISK[model] + 0.4 * (1 - bound),           # aleatoric: evaluators disagree
        0.5 - 2.0 * (trust - _REQ[domain]),                     # confidence: trust headroom
        1 - bound,                                              # contextual: outside known bounds
        _STATE_RISK[state],                                     # temporal: decision still open
        intensity * np.where(_DISTRESSED[emotion], 1.0, 0.3),   # social: emotional load
    ], axis=-1)
    return np.clip(out, 0.0, 1.0)


def codes(telemetry: dict, domain: str) -> tuple:
    """(domain, emotion, state, model) integer codes of one example."""
    return (_DOMAIN_INDEX[domain], _EMOTION_INDEX[telemetry["emotion"]],
            _STATE_INDEX[telemetry["decision"]], _MODEL_INDEX[telemetry["model"]])
