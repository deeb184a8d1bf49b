"""Byte-level tokenizer with reserved ids for special tokens and governance tags.

Id layout (the default byte tokenizer, 385 ids; `config.model.vocab_size` must be at
least that, the spare embedding rows are never produced):

    0..7      <pad> <bos> <eos> <assess> and four reserved ids
    8..263    the 256 byte values of UTF-8 text
    264..     one control token per governance tag value (CTRL / SteerLM style):
              <gov:domain=D> per domain; <gov:K=B> for numeric K in 20 buckets of 0.05
              (trust 0.72 -> the [0.70, 0.75) token); one per emotion, state and model.

The numeric buckets are aligned with the rule's thresholds (domain requirements,
0.5, 0.7), so the tokens alone hold enough to apply the trust and distress gates.
Decoding a numeric control token gives its bucket's lower edge.
"""
from __future__ import annotations

import re

import numpy as np

from promethios_jax.data import schema

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<assess>", "<reserved_4>", "<reserved_5>", "<reserved_6>",
                  "<reserved_7>")
PAD_ID, BOS_ID, EOS_ID, ASSESS_ID = 0, 1, 2, 3
BYTE_OFFSET = len(SPECIAL_TOKENS)
GOV_OFFSET = BYTE_OFFSET + 256
N_BUCKETS = 20

_TAG_RE = re.compile(r"<gov:([a-z_]+)=([^<>\s]*)>|<(pad|bos|eos|assess)>")


class TokenizerError(ValueError):
    """Text or a configuration the tokenizer cannot handle."""


def _bucket(value: str) -> int:
    """Bucket of a value given with two decimals; integer hundredths avoid float edge cases."""
    return min(max(int(round(float(value) * 100)) // 5, 0), N_BUCKETS - 1)


class ByteTokenizer:
    """UTF-8 bytes plus special and governance control tokens; downloads nothing."""

    name = "byte"

    def __init__(self):
        self.pad_id, self.bos_id, self.eos_id, self.assess_id = PAD_ID, BOS_ID, EOS_ID, ASSESS_ID
        self._special = {t[1:-1]: i for i, t in enumerate(SPECIAL_TOKENS[:4])}
        self._gov: dict[tuple[str, str], int] = {}  # (key, canonical value) -> id
        self._id_to_piece: dict[int, str] = {i: t for i, t in enumerate(SPECIAL_TOKENS)}
        nid = GOV_OFFSET
        vocab = [("domain", schema.DOMAINS)]
        for key in schema.TELEMETRY_KEYS:
            if key in schema.NUMERIC_KEYS:
                vocab.append((key, tuple(f"{b * 5 / 100:.2f}" for b in range(N_BUCKETS))))
            else:
                vocab.append((key, schema.CATEGORICAL_VALUES[key]))
        for key, values in vocab:
            for v in values:
                self._gov[(key, v)] = nid
                self._id_to_piece[nid] = f"<gov:{key}={v}>"
                nid += 1
        self.vocab_size = nid
        self._tag_cache: dict[str, int] = {}

    def tag_id(self, key: str, value: str) -> int:
        """Id of the control token for a `<gov:key=value>` tag."""
        if key in schema.NUMERIC_KEYS:
            try:
                value = f"{_bucket(value) * 5 / 100:.2f}"
            except ValueError:
                raise TokenizerError(f"<gov:{key}={value}>: {key} needs a number in [0, 1]") from None
        tid = self._gov.get((key, value))
        if tid is None:
            raise TokenizerError(f"unknown governance tag <gov:{key}={value}>")
        return tid

    def encode_array(self, text: str) -> np.ndarray:
        """int32 ids of `text`; tags and <bos>/<eos>/<assess>/<pad> become their single ids."""
        pieces, pos = [], 0
        for m in _TAG_RE.finditer(text):
            if m.start() > pos:
                pieces.append(np.frombuffer(text[pos:m.start()].encode("utf-8"), np.uint8).astype(np.int32)
                              + BYTE_OFFSET)
            tag = m.group(0)
            tid = self._tag_cache.get(tag)
            if tid is None:
                tid = self._special[m.group(3)] if m.group(3) else self.tag_id(m.group(1), m.group(2))
                self._tag_cache[tag] = tid
            pieces.append(np.array([tid], np.int32))
            pos = m.end()
        if pos < len(text):
            pieces.append(np.frombuffer(text[pos:].encode("utf-8"), np.uint8).astype(np.int32) + BYTE_OFFSET)
        return np.concatenate(pieces) if pieces else np.zeros(0, np.int32)

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def decode(self, ids) -> str:
        """Text of `ids`; invalid UTF-8 becomes U+FFFD, ids past the vocabulary become '?'."""
        out, buf = [], bytearray()
        for i in (int(x) for x in ids):
            if BYTE_OFFSET <= i < GOV_OFFSET:
                buf.append(i - BYTE_OFFSET)
                continue
            if buf:
                out.append(buf.decode("utf-8", errors="replace"))
                buf = bytearray()
            out.append(self._id_to_piece.get(i, "?"))
        if buf:
            out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)

    def is_control(self, ids) -> np.ndarray:
        """Mask of governance control tokens."""
        return np.asarray(ids) >= GOV_OFFSET


def build_tokenizer(config) -> ByteTokenizer:
    """The tokenizer named by `config.data.tokenizer`, checked against `config.model.vocab_size`."""
    kind = config.data.tokenizer
    if kind != "byte":
        raise TokenizerError(
            f"config.data.tokenizer={kind!r}: only the byte-level tokenizer ('byte') is available; "
            "SentencePiece models are not supported in this build")
    tok = ByteTokenizer()
    if tok.vocab_size > config.model.vocab_size:
        raise TokenizerError(
            f"config.model.vocab_size={config.model.vocab_size} is smaller than the {tok.vocab_size} ids "
            f"the {tok.name} tokenizer uses; raise it to at least {tok.vocab_size}")
    return tok


def encode_example_arrays(example: dict, tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """(prompt ids, response ids) as int32 arrays: <bos> prompt <assess> | response <eos>."""
    p = tokenizer.encode_array(example["prompt"])
    r = tokenizer.encode_array(example["response"])
    prompt = np.empty(len(p) + 2, np.int32)
    prompt[0], prompt[1:-1], prompt[-1] = tokenizer.bos_id, p, tokenizer.assess_id
    response = np.empty(len(r) + 1, np.int32)
    response[:-1], response[-1] = r, tokenizer.eos_id
    return prompt, response


def encode_example(example: dict, tokenizer) -> tuple[list[int], list[int]]:
    """(prompt_ids, response_ids). The prompt ends with <assess>, where the heads read: the
    model has seen the whole prompt and its tags there, none of the response."""
    p, r = encode_example_arrays(example, tokenizer)
    return p.tolist(), r.tolist()
