"""Byte-level tokenizer with reserved ids for special tokens and governance tags.

Id layout (the default byte tokenizer, 385 ids; `config.model.vocab_size` must be at
least that, the spare embedding rows are never produced):

    0..7      <pad> <bos> <eos> <assess> and four reserved ids
    8..263    the 256 byte values of UTF-8 text
    264..     one control token per governance tag value (CTRL / SteerLM style):
              <gov:domain=D> per domain; <gov:K=B> for numeric K in 20 buckets of 0.05
              (trust 0.72 -> the [0.70, 0.75) token); one per emotion, state and model.

`ByteTokenizer(outcome_tokens=True)` (config.data.outcome_token) appends the five
outcome pieces of data/control.py after them (390 ids).

The numeric buckets are aligned with the rule's thresholds (domain requirements,
0.5, 0.7), so the tokens alone hold enough to apply the trust and distress gates.
Decoding a numeric control token gives its bucket's lower edge.

`config.data.tokenizer="sentencepiece:N"` (the demo's) trains a SentencePiece model of N
pieces on the train split the first time training opens the data, and keeps it as
DATA_DIR/tokenizer/sentencepiece-N.model (`ensure_trained`). Every checkpoint stores the
tokenizer's files (`checkpoint_record`; workdir.read_config puts them back), so eval,
loading, export and serving read the ids the model was trained with.

`config.data.tokenizer` may also name a SentencePiece model file trained by hand:

    python -m promethios_jax.data.tokenizer --data_dir=DIR --vocab_size=4000 --out=DIR/spm

Its model holds the same special and control tokens as single pieces (tags are
bucketed before SentencePiece sees the text) and falls back to bytes, so every text
encodes. It needs the optional `sentencepiece` package.

Or a pretrained base's own tokenizer (a Hugging Face directory with `tokenizer.json` or
`tokenizer.model`, or the file), with the control tokens added: data/hf_tokenizer.py.
The control tokens themselves (pieces, tag syntax, buckets) are data/control.py's.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import os
import re
import time
from pathlib import Path
from typing import Iterable

import numpy as np

from promethios_jax.data.control import (TAG_RE, TokenizerError, canonical_tag,  # noqa: F401 (re-exported)
                                         control_pieces, encode_around_tags, outcome_of, outcome_piece,
                                         outcome_pieces, trained_vocab_size)
from promethios_jax.data.hf_tokenizer import HFTokenizer, base_files, resolve_files
from promethios_jax.data.records import load_split

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<assess>", "<reserved_4>", "<reserved_5>", "<reserved_6>",
                  "<reserved_7>")
PAD_ID, BOS_ID, EOS_ID, ASSESS_ID = 0, 1, 2, 3
BYTE_OFFSET = len(SPECIAL_TOKENS)
GOV_OFFSET = BYTE_OFFSET + 256
_TAG_RE_BYTES = re.compile(TAG_RE.pattern.encode())


class ByteTokenizer:
    """UTF-8 bytes plus special and governance control tokens; downloads nothing."""

    name = "byte"

    def __init__(self, outcome_tokens: bool = False):
        self.pad_id, self.bos_id, self.eos_id, self.assess_id = PAD_ID, BOS_ID, EOS_ID, ASSESS_ID
        self._special = {t[1:-1]: i for i, t in enumerate(SPECIAL_TOKENS[:4])}
        self._id_to_piece: dict[int, str] = {i: t for i, t in enumerate(SPECIAL_TOKENS)}
        self._gov = {piece: GOV_OFFSET + i for i, piece in enumerate(control_pieces())}
        self._id_to_piece.update((i, piece) for piece, i in self._gov.items())
        end = GOV_OFFSET + len(self._gov)
        # Optional so that byte checkpoints saved without them keep their size and fingerprint.
        self.outcome_ids = {p: end + k for k, p in enumerate(outcome_pieces())} if outcome_tokens else {}
        self._id_to_piece.update((i, "") for i in self.outcome_ids.values())
        self.vocab_size = end + len(self.outcome_ids)
        self.fingerprint = f"byte-{self.vocab_size}"
        self._tag_cache: dict[str, int] = {}

    def tag_id(self, key: str, value: str) -> int:
        """Id of the control token for a `<gov:key=value>` tag."""
        tid = self._gov.get(canonical_tag(key, value))
        if tid is None:
            raise TokenizerError(f"unknown governance tag <gov:{key}={value}>")
        return tid

    def encode_array(self, text: str) -> np.ndarray:
        """int32 ids of `text`; tags and <bos>/<eos>/<assess>/<pad> become their single ids."""
        raw = text.encode("utf-8")
        ids = np.frombuffer(raw, np.uint8).astype(np.int32)
        ids += BYTE_OFFSET
        keep = None
        for m in _TAG_RE_BYTES.finditer(raw):  # one pass over the bytes; a tag collapses to its id
            tag = m.group(0)
            tid = self._tag_cache.get(tag)
            if tid is None:
                if m.group(3):
                    tid = self._special[m.group(3).decode()]
                else:
                    tid = self.tag_id(m.group(1).decode(), m.group(2).decode("utf-8", "replace"))
                self._tag_cache[tag] = tid
            if keep is None:
                keep = np.ones(len(ids), bool)
            ids[m.start()] = tid
            keep[m.start() + 1:m.end()] = False
        return ids if keep is None else ids[keep]

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


class SentencePieceTokenizer:
    """A SentencePiece model trained by `train_sentencepiece` (same special and control pieces)."""

    name = "sentencepiece"

    def __init__(self, model_file: str):
        try:
            import sentencepiece as spm
        except ImportError:
            raise TokenizerError(f"config.data.tokenizer={model_file!r} needs the optional "
                                 "'sentencepiece' package (pip install sentencepiece)") from None
        path = Path(model_file)
        if not path.is_file():
            raise TokenizerError(f"config.data.tokenizer={model_file!r}: no such SentencePiece model file")
        blob = path.read_bytes()
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=blob)
        except Exception as e:
            raise TokenizerError(f"config.data.tokenizer={model_file!r}: not a SentencePiece model: {e}") from None
        sp = self._sp
        self.pad_id, self.bos_id, self.eos_id = sp.pad_id(), sp.bos_id(), sp.eos_id()
        self.assess_id = sp.piece_to_id("<assess>")
        self._special = {"pad": self.pad_id, "bos": self.bos_id, "eos": self.eos_id, "assess": self.assess_id}
        self._gov = {p: sp.piece_to_id(p) for p in control_pieces()}
        missing = [p for p, i in self._gov.items() if i == sp.unk_id()]
        if min(self.pad_id, self.bos_id, self.eos_id) < 0 or self.assess_id == sp.unk_id() or missing:
            raise TokenizerError(f"config.data.tokenizer={model_file!r} lacks the special or governance pieces "
                                 f"(e.g. {missing[:2]}); train it with python -m promethios_jax.data.tokenizer")
        self._control = np.zeros(sp.get_piece_size(), bool)
        self._control[list(self._gov.values())] = True
        self._id_to_piece = {i: p for p, i in self._gov.items()}
        self._id_to_piece.update({i: f"<{k}>" for k, i in self._special.items()})
        # Models trained before the outcome pieces existed lack them (outcome_token refuses those).
        outcome = {p: sp.piece_to_id(p) for p in outcome_pieces()}
        self.outcome_ids = outcome if sp.unk_id() not in outcome.values() else {}
        self._id_to_piece.update((i, "") for i in self.outcome_ids.values())
        self.vocab_size = sp.get_piece_size()
        self.fingerprint = "spm-" + hashlib.sha1(blob).hexdigest()[:16]

    def encode_array(self, text: str) -> np.ndarray:
        return encode_around_tags(text, self._sp.encode, self._special, self._gov)

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def decode(self, ids) -> str:
        out, run = [], []
        for i in (int(x) for x in ids):
            piece = self._id_to_piece.get(i)
            if piece is None:
                if 0 <= i < self.vocab_size:
                    run.append(i)
                else:
                    out.append(self._sp.decode(run) + "?")
                    run = []
                continue
            out.append(self._sp.decode(run))
            run = []
            out.append(piece)
        out.append(self._sp.decode(run))
        return "".join(out)

    def is_control(self, ids) -> np.ndarray:
        ids = np.asarray(ids)
        return self._control[np.clip(ids, 0, len(self._control) - 1)] & (ids >= 0) & (ids < len(self._control))


def train_sentencepiece(texts: Iterable[str], out_prefix, vocab_size: int = 4000) -> str:
    """Trains a SentencePiece model on `texts` (e.g. a split's prompts and responses);
    returns the model path.

    Control and special pieces are user-defined symbols (always one piece); text is
    kept verbatim (identity normalization, whitespace kept) with byte fallback.
    """
    import sentencepiece as spm  # optional dependency (the sentencepiece extra)

    lines = []
    for text in texts:
        text = TAG_RE.sub(lambda m: m.group(0) if m.group(3) else canonical_tag(m.group(1), m.group(2)), text)
        lines += [line for line in text.split("\n") if line]
    out_prefix = str(out_prefix)
    Path(out_prefix).parent.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=out_prefix, vocab_size=int(vocab_size),
        model_type="bpe", character_coverage=1.0, byte_fallback=True, split_digits=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
        allow_whitespace_only_pieces=True, hard_vocab_limit=False,
        pad_id=0, bos_id=1, eos_id=2, unk_id=3, pad_piece="<pad>", bos_piece="<bos>", eos_piece="<eos>",
        user_defined_symbols=["<assess>"] + control_pieces() + outcome_pieces(), num_threads=2, minloglevel=2)
    return out_prefix + ".model"


def is_hf_tokenizer(spec: str) -> bool:
    """Whether `config.data.tokenizer` names a Hugging Face tokenizer: a directory, a
    `*.json` file, or a base's `tokenizer.model` (our trained SentencePiece models are
    named after their prefix)."""
    p = Path(spec)
    return p.is_dir() or p.suffix == ".json" or p.name == "tokenizer.model" or spec.endswith(("/", "\\"))


def trained_path(data_dir, pieces: int) -> Path:
    """Where a "sentencepiece:N" tokenizer of a dataset lives."""
    return Path(data_dir).absolute() / "tokenizer" / f"sentencepiece-{int(pieces)}.model"


def ensure_trained(config, data_dir) -> Path | None:
    """Trains the "sentencepiece:N" tokenizer of `config.data.tokenizer` on DATA_DIR's
    train split unless it exists; returns its path (None for other tokenizers). One
    process only: the others wait for it."""
    pieces = trained_vocab_size(config.data.tokenizer)
    if pieces is None:
        return None
    path = trained_path(data_dir, pieces)
    if path.is_file():
        return path
    t0 = time.time()
    records = load_split(str(data_dir), "train")
    if not records:
        raise TokenizerError(f"config.data.tokenizer={config.data.tokenizer!r}: {data_dir} has no train examples "
                             "to train it on")
    tmp = path.with_name(f".{path.stem}.{os.getpid()}")
    made = Path(train_sentencepiece((t for r in records for t in (r["prompt"], r["response"])), tmp, pieces))
    os.replace(made, path)  # appears whole or not at all
    Path(str(tmp) + ".vocab").unlink(missing_ok=True)
    print(f"trained a {pieces:,}-piece SentencePiece tokenizer on {len(records):,} train examples in "
        f"{time.time() - t0:.1f}s: {path}", flush=True)
    return path


def _resolve(config, data_dir) -> str:
    spec = config.data.tokenizer
    pieces = trained_vocab_size(spec)
    if pieces is None:
        return spec
    if data_dir is None:
        raise TokenizerError(f"config.data.tokenizer={spec!r} is trained on a dataset on first use, and no "
                             "data directory was given to find it (a checkpoint's config names its own copy)")
    path = trained_path(data_dir, pieces)
    if not path.is_file():
        raise TokenizerError(f"config.data.tokenizer={spec!r}: {path} does not exist; training makes it on first "
                             f"use, or: python -m promethios_jax.data.tokenizer --data_dir={data_dir} "
                             f"--vocab_size={pieces} --out={path.with_suffix('')}")
    return str(path)


def build_tokenizer(config, data_dir=None):
    """The tokenizer named by `config.data.tokenizer` ("byte", "sentencepiece:N" trained on
    `data_dir`'s train split, a SentencePiece model file trained here, or a Hugging Face
    tokenizer directory/file), checked against `config.model.vocab_size`."""
    tok = _open(config, data_dir)
    if tok.vocab_size > config.model.vocab_size:
        need = getattr(tok, "padded_vocab_size", tok.vocab_size)
        raise TokenizerError(
            f"config.model.vocab_size={config.model.vocab_size} is smaller than the {tok.vocab_size} ids "
            f"the {tok.name} tokenizer uses; raise it to at least {need}")
    return tok


def _open(config, data_dir):
    kind = _resolve(config, data_dir)
    outcome = bool(config.data.get("outcome_token", False))
    if kind == "byte":
        tok = ByteTokenizer(outcome_tokens=outcome)
    elif is_hf_tokenizer(kind):
        tok = HFTokenizer(kind, use_chat_template=bool(config.data.get("chat_template", False)))
    else:
        tok = SentencePieceTokenizer(kind)
    if outcome and not getattr(tok, "outcome_ids", None):
        hint = (f"delete {kind} so that training makes it again" if trained_vocab_size(config.data.tokenizer)
                else "use 'byte' or a SentencePiece model trained here")
        raise TokenizerError(f"config.data.outcome_token=True needs the outcome pieces {outcome_pieces()}, which "
                             f"config.data.tokenizer={config.data.tokenizer!r} lacks: {hint}")
    tok.outcome_token = outcome
    if config.data.get("chat_template", False) and not getattr(tok, "use_chat_template", False):
        raise TokenizerError(f"config.data.chat_template=True needs a Hugging Face tokenizer with a chat template; "
                             f"config.data.tokenizer={kind!r} is not one")
    return tok


RECORD_FORMAT = "promethios-tokenizer/1"


def checkpoint_record(config, data_dir=None) -> dict:
    """What a checkpoint stores of its tokenizer: name, size, fingerprint, and its files
    (base64, with their SHA-256), so that it can be rebuilt where the original is gone.
    `target` says whether config.data.tokenizer names the first file ("file") or the
    directory holding them ("dir"); the byte tokenizer has no files. Not checked against
    config.model.vocab_size: a model trained without text (a parity test's) still saves."""
    tok = _open(config, data_dir)
    spec = _resolve(config, data_dir)
    if spec == "byte":
        target, files, where = "", [], ""
    elif is_hf_tokenizer(spec):
        target = "dir" if Path(spec).is_dir() else "file"
        files = base_files(resolve_files(spec)[0])
        where = str(Path(spec).absolute())
    else:
        target, files, where = "file", [Path(spec)], str(Path(spec).absolute())
    stored = {}
    for f in files:
        blob = f.read_bytes()
        stored[f.name] = {"sha256": hashlib.sha256(blob).hexdigest(), "data": base64.b64encode(blob).decode()}
    return {"format": RECORD_FORMAT, "spec": config.data.tokenizer, "name": tok.name,
            "vocab_size": int(tok.vocab_size), "fingerprint": tok.fingerprint, "target": target, "path": where,
            "files": stored}


def encode_example_arrays(example: dict, tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """(prompt ids, response ids) as int32 arrays: <bos> prompt <assess> | response <eos>.

    A tokenizer with a chat template in use (`config.data.chat_template`) renders the
    prompt as one user turn and the assistant's header (its <bos> included) instead.
    With `config.data.outcome_token` the response starts with the outcome piece of the
    example's recorded decision and band (an example without labels and with a response
    is refused; a prompt alone, `"response": ""`, needs none)."""
    if getattr(tokenizer, "use_chat_template", False):
        p = tokenizer.encode_array(tokenizer.apply_chat_template(example["prompt"]))
        prompt = np.append(p, np.int32(tokenizer.assess_id)).astype(np.int32)
    else:
        p = tokenizer.encode_array(example["prompt"])
        prompt = np.empty(len(p) + 2, np.int32)
        prompt[0], prompt[1:-1], prompt[-1] = tokenizer.bos_id, p, tokenizer.assess_id
    r = tokenizer.encode_array(example["response"])
    if getattr(tokenizer, "outcome_token", False) and (example["response"] or "labels" in example):
        labels = example.get("labels")
        if not labels or "decision" not in labels or "confidence" not in labels:
            raise TokenizerError(f"example {example.get('id', '?')!r}: config.data.outcome_token needs its "
                                 "labels' decision and confidence to start the response with the outcome")
        piece = outcome_piece(outcome_of(labels["decision"], labels["confidence"]))
        r = np.concatenate([np.int32([tokenizer.outcome_ids[piece]]), r])
    response = np.empty(len(r) + 1, np.int32)
    response[:-1], response[-1] = r, tokenizer.eos_id
    return prompt, response


def encode_example(example: dict, tokenizer) -> tuple[list[int], list[int]]:
    """(prompt_ids, response_ids). The prompt ends with <assess>, where the heads read: the
    model has seen the whole prompt and its tags there, none of the response."""
    p, r = encode_example_arrays(example, tokenizer)
    return p.tolist(), r.tolist()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m promethios_jax.data.tokenizer",
                                description="Train a SentencePiece model on the generated corpus.")
    p.add_argument("--data_dir", required=True)
    p.add_argument("--out", required=True, help="model prefix; writes OUT.model and OUT.vocab")
    p.add_argument("--vocab_size", type=int, default=4000)
    a = p.parse_args(argv)
    if a.vocab_size <= len(control_pieces()) + 256 + 5:
        p.error(f"--vocab_size={a.vocab_size} leaves no room beyond the control and byte pieces")
    texts = (t for r in load_split(a.data_dir, "train") for t in (r["prompt"], r["response"]))
    path = train_sentencepiece(texts, a.out, a.vocab_size)
    print(f"wrote {path}; set --config.data.tokenizer={path} and config.model.vocab_size >= "
          f"{SentencePieceTokenizer(path).vocab_size}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
