"""Example texts from a template set, with the exact log-probability of each response.

The generator draws every slot and template pick from a row of uniforms (`Slots`), so
the probability of the response it wrote, given the prompt and the outcome, is known:
the manifest's response floor is its mean negative log, per UTF-8 byte.
"""
from __future__ import annotations

import functools
import string

import numpy as np

from promethios_jax.data import schema, templates


class _Slots:
    """Per-example slot values, drawn from a row of uniforms so text costs no RNG calls.

    Each pick uses a fresh uniform (at most ~21 per example, fewer than the row holds), so
    a pick takes each entry of its sequence with probability 1/len: `prob` says how likely
    the value drawn was, for the response floor.
    """

    def __init__(self, u: np.ndarray):
        self.u, self.i = u.tolist(), 0  # Python floats: indexing a list is cheaper than numpy

    def pick(self, seq):
        n = len(seq)
        x = seq[min(int(self.u[self.i % len(self.u)] * n), n - 1)]
        self.i += 1
        return x

    def chance(self, p: float) -> bool:
        x = self.u[self.i % len(self.u)] < p
        self.i += 1
        return x


def _prob(seq, value) -> float:
    """Probability that a uniform pick from `seq` gives `value` (duplicates count)."""
    return sum(v == value for v in seq) / len(seq)


@functools.lru_cache(maxsize=None)
def _slot_names(text: str) -> frozenset:
    return frozenset(m.group("named") or m.group("braced") for m in string.Template.pattern.finditer(text)
                     if m.group("named") or m.group("braced"))


# Slots drawn together: ${eid} comes with $entity, ${role_id} with $role.
_SLOT_GROUP = {"eid": "entity", "role_id": "role"}


def _fill(text: str, slots: dict) -> str:
    return string.Template(text).substitute(slots)


def text(category: str, domain: str, emotion: str, outcome: str, u: np.ndarray, tpl: dict,
         aside_u: np.ndarray | None = None) -> tuple:
    """(request, response, scenario tool, framing bias or None, log P(response | request, outcome)).

    `tpl` is a template set (`templates.TRAIN` or `templates.HELDOUT`). `aside_u` (its own
    uniforms, so the other picks do not move) adds neutral asides to the request, after
    the request itself or at its end. The log-probability
    sums the response-side picks and the slot values the response shows but the request
    does not (values the request shows are known given the prompt).
    """
    s = _Slots(u)
    ds = templates.DOMAIN_SLOTS[domain]
    entity, eid = s.pick(ds["entity"])
    role, role_id = s.pick(ds["role"])
    agent = s.pick(templates.AGENTS)
    agent2 = s.pick([a for a in templates.AGENTS if a != agent])
    slots = {"subject": s.pick(ds["subject"]), "system": s.pick(ds["system"]), "human": s.pick(ds["human"]),
             "team": s.pick(ds["team"]), "recipient": s.pick(ds["recipient"]), "entity": entity, "eid": eid,
             "role": role, "role_id": role_id, "agent": agent, "agent2": agent2,
             "deadline": s.pick(templates.DEADLINES), "weekday": s.pick(templates.WEEKDAYS)}
    request, task, answer, tool = s.pick(tpl["scenarios"][category])
    framing = s.pick(list(tpl["framings"])) if s.chance(templates.FRAMING_RATE) else None
    distressed = emotion in schema.DISTRESSED_EMOTIONS
    opener = s.pick(tpl["request_openers"])
    if opener.endswith(","):  # "Hi, draft ..." reads as one sentence
        request = request[0].lower() + request[1:]
    parts = [opener, request]
    if framing:
        parts.append(s.pick(tpl["framings"][framing]))
    if s.chance(0.6 if distressed else 0.25):
        parts.append(s.pick(templates.EMOTION_PHRASES[emotion]))
    parts.append(s.pick(tpl["request_closers"]))
    if aside_u is not None:
        at = 2 if aside_u[2] < 0.5 else len(parts)
        parts[at:at] = _asides(aside_u, tpl["request_asides"])
    req_template = " ".join(p for p in parts if p)
    req_text = _fill(req_template, slots)
    slots["task"] = _fill(task, slots)
    logp = 0.0
    alternative = None
    if outcome == "support":
        resp = s.pick(tpl["support_templates"])
        logp += np.log(_prob(tpl["support_templates"], resp))
    elif outcome == "escalate":
        resp = s.pick(tpl["escalate_templates"])
        logp += np.log(_prob(tpl["escalate_templates"], resp))
    elif outcome == "decline":
        alternative = s.pick(tpl["decline_alternatives"])
        slots["alternative"] = _fill(alternative, slots)
        resp = s.pick(tpl["decline_templates"])
        logp += np.log(_prob(tpl["decline_alternatives"], alternative) * _prob(tpl["decline_templates"], resp))
    else:
        sep = "\n\n" if "\n" in answer else " "  # code stands on its own lines
        if outcome == "safeguards":
            # The caveat comes first: a reader sees what the answer is worth before using it,
            # and the outcome shows in the words right after <assess>, where it is decided.
            note = s.pick(tpl["safeguard_notes"])
            logp += np.log(_prob(tpl["safeguard_notes"], note))
            resp = sep.join((note, answer))
        else:
            closer, opener = s.pick(tpl["proceed_closers"]), s.pick(tpl["proceed_openers"])
            logp += np.log(_prob(tpl["proceed_closers"], closer) * _prob(tpl["proceed_openers"], opener))
            resp = sep.join(p for p in (opener, answer, closer) if p)
    used = set(_slot_names(resp))
    for name, text in (("task", task), ("alternative", alternative)):
        if name in used:
            used |= _slot_names(text)
    logp += _hidden_slots_logp(used - {"task", "alternative"},
                               _slot_names(req_template), slots, ds)
    return req_text, _fill(resp, slots), tool, framing, logp


ASIDE_UNIFORMS = 3 + 16  # whether, how many, where, and a sort key per pool entry (pools hold <= 16)


def _asides(u: np.ndarray, pool: list) -> list:
    """0..MAX_ASIDES distinct asides from `pool` (u[0]: whether, u[1]: how many, u[3:]: which)."""
    if u[0] >= templates.ASIDE_RATE:
        return []
    k = min(1 + int(u[1] * templates.MAX_ASIDES), len(pool))
    return [pool[i] for i in np.argsort(u[3:3 + len(pool)])[:k]]


def _hidden_slots_logp(used: set, known: set, slots: dict, ds: dict) -> float:
    """log P of the slot values the response uses that the request does not show."""
    group = lambda n: _SLOT_GROUP.get(n, n)  # noqa: E731
    known = {group(n) for n in known}
    hidden = {group(n) for n in used} - known
    logp = 0.0
    for g in sorted(hidden):
        if g == "agent2":  # drawn from the agents other than $agent
            n = len(templates.AGENTS) - (1 if ("agent" in known or "agent" in hidden) else 0)
            logp -= np.log(n)
        elif g == "agent":
            logp -= np.log(len(templates.AGENTS))
        elif g in ("deadline", "weekday"):
            seq = templates.DEADLINES if g == "deadline" else templates.WEEKDAYS
            logp += np.log(_prob(seq, slots[g]))
        elif g in ("entity", "role"):
            logp -= np.log(len(ds[g]))
        else:
            logp += np.log(_prob(ds[g], slots[g]))
    return logp
