"""The governance control tokens: their pieces, the tag syntax, and encoding around tags.

Every tokenizer (byte, SentencePiece, Hugging Face) gives each piece one id; telemetry
values are bucketed in steps of 0.05 aligned with the rule's thresholds (domain
requirements, 0.5, 0.7), so `<gov:trust=0.72>` is the `<gov:trust=0.70>` token.
"""
from __future__ import annotations

import re

import numpy as np

from promethios_jax.data import schema

N_BUCKETS = 20

TAG_RE = re.compile(r"<gov:([a-z_]+)=([^<>\s]*)>|<(pad|bos|eos|assess)>")


class TokenizerError(ValueError):
    """Text or a configuration the tokenizer cannot handle."""


def _bucket(value: str) -> int:
    """Bucket of a value given with two decimals; integer hundredths avoid float edge cases."""
    return min(max(int(round(float(value) * 100)) // 5, 0), N_BUCKETS - 1)


def control_pieces() -> list[str]:
    """Every governance control piece, in id order: `<gov:domain=D>`, then per telemetry key."""
    pieces = [f"<gov:domain={d}>" for d in schema.DOMAINS]
    for key in schema.TELEMETRY_KEYS:
        if key in schema.NUMERIC_KEYS:
            pieces += [f"<gov:{key}={b * 5 / 100:.2f}>" for b in range(N_BUCKETS)]
        else:
            pieces += [f"<gov:{key}={v}>" for v in schema.CATEGORICAL_VALUES[key]]
    return pieces


# What a response does (data/RULES.md), one piece each. With config.data.outcome_token the
# response starts with its outcome's piece: the model commits to the outcome in one token,
# read where the heads read, instead of at a wording that splits its probability over the
# variants that express it (greedy decoding then favours outcomes with fewer variants).
OUTCOMES = ("escalate", "support", "safeguards", "decline", "proceed")


def outcome_piece(outcome: str) -> str:
    """The piece of one of OUTCOMES. Pieces are never encoded from text and decode to ""."""
    return f"<outcome:{outcome}>"


def outcome_pieces() -> list[str]:
    """The outcome pieces, in id order."""
    return [outcome_piece(o) for o in OUTCOMES]


def outcome_of(decision: str, band: str) -> str:
    """The outcome a response enacts for a decision and confidence band (as the generator
    writes it): an escalation is `support` when the user is in distress."""
    if decision == "escalate":
        return "support" if band == "uncertain_emotional" else "escalate"
    return {"proceed": "proceed", "proceed_with_safeguards": "safeguards", "decline": "decline"}[decision]


def canonical_tag(key: str, value: str) -> str:
    """The control piece of a `<gov:key=value>` tag (numeric values bucketed)."""
    if key in schema.NUMERIC_KEYS:
        try:
            value = f"{_bucket(value) * 5 / 100:.2f}"
        except ValueError:
            raise TokenizerError(f"<gov:{key}={value}>: {key} needs a number in [0, 1]") from None
    elif key != "domain" and key not in schema.CATEGORICAL_VALUES:
        raise TokenizerError(f"unknown governance tag <gov:{key}={value}>")
    return f"<gov:{key}={value}>"


def encode_around_tags(text: str, encode_plain, special: dict, gov: dict) -> np.ndarray:
    """int32 ids of `text`: the runs between tags through `encode_plain`, each tag one id
    (`special[name]` for <bos>/<eos>/<assess>/<pad>, `gov[canonical piece]` otherwise)."""
    ids, pos = [], 0
    for m in TAG_RE.finditer(text):
        if m.start() > pos:
            ids += encode_plain(text[pos:m.start()])
        tid = special[m.group(3)] if m.group(3) else gov.get(canonical_tag(m.group(1), m.group(2)))
        if tid is None:
            raise TokenizerError(f"unknown governance tag {m.group(0)}")
        ids.append(tid)
        pos = m.end()
    if pos < len(text):
        ids += encode_plain(text[pos:])
    return np.asarray(ids, np.int32)


# ----------------------------------------------------------------------- trained on first use

TRAINED_PREFIX = "sentencepiece:"
# pad, bos, eos, unk, <assess>, the outcome pieces, 256 byte-fallback pieces, at least one merge
MIN_TRAINED_VOCAB = 5 + len(OUTCOMES) + 256 + 1


def trained_vocab_size(spec) -> int | None:
    """N of a `config.data.tokenizer="sentencepiece:N"` (a SentencePiece model of N pieces
    trained on the dataset's train split on first use); None for any other spec."""
    if not isinstance(spec, str) or not spec.startswith(TRAINED_PREFIX):
        return None
    n = spec[len(TRAINED_PREFIX):]
    low = MIN_TRAINED_VOCAB + len(control_pieces())
    if not n.isdigit() or int(n) < low:
        raise TokenizerError(f"config.data.tokenizer={spec!r}: give the number of pieces, at least {low} "
                             f"(the special, control and byte pieces), e.g. 'sentencepiece:1024'")
    return int(n)
