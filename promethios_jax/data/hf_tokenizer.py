"""A pretrained base's own tokenizer, with the governance control tokens added.

`config.data.tokenizer` may name a Hugging Face tokenizer: a directory holding
`tokenizer.json` (read with the `tokenizers` library) or, where that is all the base
ships, a SentencePiece `tokenizer.model`; or one of those files. The tokenizer keeps
every id of the base and appends, as special tokens, whatever of these the base lacks:

    <pad> <bos> <eos>        only when tokenizer_config.json names none and the base has
                             no usual piece for it (<s>, </s>, <|begin_of_text|>, ...)
    <assess>                 where the governance heads read
    <gov:...>                the control pieces of `tokenizer.control_pieces()`

A piece the base already holds (a base exported by us holds them all) keeps its id. The
embedding and LM-head rows the model needs are `padded_vocab_size`: the ids used,
rounded up to a multiple of 128 (`model.vocab.grow_vocab` adds them).

With `tokenizer.json`, a text is encoded in one call of the `tokenizers` library after
its tags are bucketed, so the ids are the ones `AutoTokenizer` gives for the exported
tokenizer (`save_pretrained`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from promethios_jax.data.control import TAG_RE, TokenizerError, canonical_tag, control_pieces, encode_around_tags

VOCAB_MULTIPLE = 128
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_MODEL = "tokenizer.model"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"

# Usual pieces of Llama-family bases, tried when tokenizer_config.json names no token.
_USUAL = {
    "bos": ("<s>", "<|begin_of_text|>", "<bos>"),
    "eos": ("</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>"),
    "pad": ("<pad>", "<|finetune_right_pad_id|>"),
}


def round_vocab(n: int, multiple: int = VOCAB_MULTIPLE) -> int:
    """`n` rounded up to a multiple of `multiple`."""
    return -(-int(n) // multiple) * multiple


def resolve_files(path) -> tuple[Path, Path | None]:
    """(tokenizer file, tokenizer_config.json or None) of a directory or file; TokenizerError if missing."""
    p = Path(path)
    if p.is_dir():
        for name in (TOKENIZER_JSON, TOKENIZER_MODEL):
            if (p / name).is_file():
                file = p / name
                break
        else:
            raise TokenizerError(f"config.data.tokenizer={str(path)!r}: the directory holds neither "
                                 f"{TOKENIZER_JSON} nor {TOKENIZER_MODEL}")
    elif p.is_file():
        file = p
    else:
        raise TokenizerError(f"config.data.tokenizer={str(path)!r}: no such tokenizer file or directory")
    if file.suffix not in (".json", ".model"):
        raise TokenizerError(f"config.data.tokenizer={str(path)!r}: expected a {TOKENIZER_JSON} or a "
                             f"SentencePiece {TOKENIZER_MODEL}")
    cfg = file.parent / TOKENIZER_CONFIG
    return file, (cfg if cfg.is_file() else None)


def base_files(file: Path) -> list[Path]:
    """The files of a base's tokenizer: `file` (tokenizer.json / .model) first, then the
    configuration beside it that exists."""
    beside = [file.parent / n for n in (TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP, CHAT_TEMPLATE_FILE) if n != file.name]
    return [file] + [p for p in beside if p.is_file()]


def ships_tokenizer(hf_dir) -> bool:
    return any((Path(hf_dir) / n).is_file() for n in (TOKENIZER_JSON, TOKENIZER_MODEL))


@dataclasses.dataclass(frozen=True)
class VocabPlan:
    """How a checkpoint's embedding rows become the rows the tokenizer needs."""
    base_rows: int  # rows in the checkpoint
    rows: int  # rows after growth: the ids used, rounded up to a multiple of 128
    mean_rows: int  # the rows whose mean seeds the new ones (the base tokenizer's)
    reset_ids: tuple  # added ids that fall inside the checkpoint's unused padding rows


def vocab_plan(tok: "HFTokenizer", base_rows: int) -> VocabPlan:
    mean_rows = min(tok.base_vocab_size, base_rows)
    added = sorted(tok._base.token_to_id(p) for p in tok.added_pieces)
    return VocabPlan(base_rows=int(base_rows), rows=round_vocab(max(tok.vocab_size, base_rows)),
                     mean_rows=mean_rows, reset_ids=tuple(i for i in added if mean_rows <= i < base_rows))


def _token_content(value) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


class _TokenizersBase:
    """A `tokenizer.json`, through the `tokenizers` library."""

    def __init__(self, file: Path):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise TokenizerError(f"config.data.tokenizer={str(file)!r} needs the 'tokenizers' package") from None
        try:
            self.tok = Tokenizer.from_file(str(file))
        except Exception as e:  # the Rust error says what is wrong with the file
            raise TokenizerError(f"{file}: not a tokenizers file: {e}") from None
        vocab = self.tok.get_vocab(with_added_tokens=True)
        self.size = max(vocab.values()) + 1 if vocab else 0

    def token_to_id(self, piece: str):
        return self.tok.token_to_id(piece)

    def add(self, pieces: list[str]) -> None:
        from tokenizers import AddedToken

        self.tok.add_special_tokens([AddedToken(p, special=True, normalized=False) for p in pieces])

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)


class _SentencePieceBase:
    """A base's SentencePiece `tokenizer.model`; added pieces live beyond its ids."""

    def __init__(self, file: Path):
        try:
            import sentencepiece as spm
        except ImportError:
            raise TokenizerError(f"config.data.tokenizer={str(file)!r} needs the optional "
                                 "'sentencepiece' package (pip install sentencepiece)") from None
        try:
            self.sp = spm.SentencePieceProcessor(model_proto=file.read_bytes())
        except Exception as e:
            raise TokenizerError(f"{file}: not a SentencePiece model: {e}") from None
        self.size = self.sp.get_piece_size()
        self.added: dict[str, int] = {}

    def token_to_id(self, piece: str):
        if piece in self.added:
            return self.added[piece]
        i = self.sp.piece_to_id(piece)
        return None if i == self.sp.unk_id() and piece != self.sp.id_to_piece(i) else i

    def add(self, pieces: list[str]) -> None:
        for p in pieces:
            self.added[p] = self.size + len(self.added)

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(ids)


class HFTokenizer:
    """A Hugging Face tokenizer plus the governance control tokens (see the module doc)."""

    name = "hf"

    def __init__(self, path, use_chat_template: bool = False):
        self.path = Path(path)
        self.use_chat_template = bool(use_chat_template)
        self.file, cfg_file = resolve_files(path)
        self.tokenizer_config = json.loads(cfg_file.read_text()) if cfg_file else {}
        self.kind = "tokenizers" if self.file.suffix == ".json" else "sentencepiece"
        self._base = _TokenizersBase(self.file) if self.kind == "tokenizers" else _SentencePieceBase(self.file)
        self.base_vocab_size = self._base.size

        special = {}
        for role in ("pad", "bos", "eos"):
            named = _token_content(self.tokenizer_config.get(f"{role}_token"))
            if named is not None and self._base.token_to_id(named) is None:
                raise TokenizerError(f"{cfg_file}: {role}_token {named!r} is not in {self.file.name}")
            usual = [p for p in _USUAL[role] if self._base.token_to_id(p) is not None]
            special[role] = named or (usual[0] if usual else f"<{role}>")
        self.special_pieces = special
        wanted = [special["pad"], special["bos"], special["eos"], "<assess>"] + control_pieces()
        missing = list(dict.fromkeys(p for p in wanted if self._base.token_to_id(p) is None))
        self._base.add(missing)
        self.added_pieces = missing
        ids = {p: self._base.token_to_id(p) for p in wanted}
        self.pad_id, self.bos_id, self.eos_id = (ids[special[r]] for r in ("pad", "bos", "eos"))
        self.assess_id = ids["<assess>"]
        self._gov = {p: ids[p] for p in control_pieces()}
        self._special_ids = {"pad": self.pad_id, "bos": self.bos_id, "eos": self.eos_id, "assess": self.assess_id}
        self.vocab_size = max([self.base_vocab_size - 1, *ids.values()]) + 1
        self.padded_vocab_size = round_vocab(self.vocab_size)
        self._control = np.zeros(self.vocab_size, bool)
        self._control[list(self._gov.values())] = True
        self._piece_of = {i: p for p, i in self._gov.items()}
        self._piece_of[self.assess_id] = "<assess>"
        if self.use_chat_template and self.chat_template is None:
            raise TokenizerError(f"config.data.chat_template=True but {self.path} ships no chat template "
                                 f"({TOKENIZER_CONFIG} chat_template or {CHAT_TEMPLATE_FILE})")
        digest = hashlib.sha1(self.file.read_bytes())
        digest.update(json.dumps([special, missing, self.use_chat_template and self.chat_template]).encode())
        self.fingerprint = "hf-" + digest.hexdigest()[:16]

    # ----- the tokenizer interface (as ByteTokenizer / SentencePieceTokenizer) ----------
    def tag_id(self, key: str, value: str) -> int:
        tid = self._gov.get(canonical_tag(key, value))
        if tid is None:
            raise TokenizerError(f"unknown governance tag <gov:{key}={value}>")
        return tid

    def _piece(self, m) -> str:
        if m.group(3):
            return "<assess>" if m.group(3) == "assess" else self.special_pieces[m.group(3)]
        return canonical_tag(m.group(1), m.group(2))

    def canonical_text(self, text: str) -> str:
        """`text` as the exported tokenizer should be given it: tags bucketed, <bos>/<eos>/<pad>
        as the base's pieces. `AutoTokenizer(export).encode(canonical_text(t))` is `encode(t)`."""
        return TAG_RE.sub(self._piece, text)

    def encode_array(self, text: str) -> np.ndarray:
        """int32 ids of `text`; tags (bucketed) and <bos>/<eos>/<assess>/<pad> become single ids."""
        if self.kind == "tokenizers":  # added tokens split the text inside the library
            return np.asarray(self._base.encode(self.canonical_text(text)), np.int32)
        return encode_around_tags(text, self._base.encode, self._special_ids, self._gov)

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def decode(self, ids) -> str:
        """Text of `ids`; ids past the vocabulary (padding rows) become '?'."""
        out, run = [], []

        def flush():
            if run:
                out.append(self._base.decode(run))
                run.clear()

        for i in (int(x) for x in ids):
            if not 0 <= i < self.vocab_size:
                flush()
                out.append("?")
            elif self.kind == "sentencepiece" and i >= self.base_vocab_size:
                flush()
                out.append(self.added_pieces[i - self.base_vocab_size])
            else:
                run.append(i)
        flush()
        return "".join(out)

    def is_control(self, ids) -> np.ndarray:
        ids = np.asarray(ids)
        inside = (ids >= 0) & (ids < self.vocab_size)
        return self._control[np.where(inside, ids, 0)] & inside

    # ----- export -----------------------------------------------------------------------
    def save_pretrained(self, out_dir) -> list[str]:
        """Writes the tokenizer, with the added tokens, so that `AutoTokenizer.from_pretrained(out_dir)`
        gives our ids; returns the file names written."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        cfg = {k: v for k, v in self.tokenizer_config.items() if k != "added_tokens_decoder"}
        cfg.update({f"{r}_token": p for r, p in self.special_pieces.items()})
        cfg.setdefault("model_max_length", int(1e30))
        added = {str(self._base.token_to_id(p)): {"content": p, "special": True, "normalized": False,
                                                  "lstrip": False, "rstrip": False, "single_word": False}
                 for p in self.added_pieces}
        if self.kind == "tokenizers":
            self._base.tok.save(str(out / TOKENIZER_JSON))
            cfg.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
            written = [TOKENIZER_JSON]
        else:
            shutil.copyfile(self.file, out / TOKENIZER_MODEL)
            cfg["added_tokens_decoder"] = added
            cfg.setdefault("tokenizer_class", "LlamaTokenizer")
            written = [TOKENIZER_MODEL]
        (out / TOKENIZER_CONFIG).write_text(json.dumps(cfg, indent=2, ensure_ascii=False))
        if (self.file.parent / CHAT_TEMPLATE_FILE).is_file():
            shutil.copyfile(self.file.parent / CHAT_TEMPLATE_FILE, out / CHAT_TEMPLATE_FILE)
            written.append(CHAT_TEMPLATE_FILE)
        (out / SPECIAL_TOKENS_MAP).write_text(json.dumps(
            {f"{r}_token": p for r, p in self.special_pieces.items()}, indent=2, ensure_ascii=False))
        return written + [TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP]

    def copy_base(self, out_dir) -> Path:
        """Copies the base's files (tokenizer, tokenizer_config.json) into `out_dir`; returns the directory."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for src in base_files(self.file):
            shutil.copyfile(src, out / src.name)
        return out

    # ----- chat template ----------------------------------------------------------------
    @property
    def chat_template(self) -> str | None:
        t = self.tokenizer_config.get("chat_template")
        if isinstance(t, list):  # named templates: the default one
            t = next((x.get("template") for x in t if x.get("name") == "default"), None)
        if t is None and (self.file.parent / CHAT_TEMPLATE_FILE).is_file():
            t = (self.file.parent / CHAT_TEMPLATE_FILE).read_text()
        return t if isinstance(t, str) else None

    def apply_chat_template(self, user_text: str) -> str:
        """`user_text` as one user turn followed by the assistant's prompt, rendered like
        transformers' `apply_chat_template(..., add_generation_prompt=True, tokenize=False)`."""
        template = self.chat_template
        if template is None:
            raise TokenizerError(f"{self.path}: the tokenizer ships no chat template")
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise TokenizerError(f"chat template: {message}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=[jinja2.ext.loopcontrols])
        env.globals["raise_exception"] = raise_exception
        return env.from_string(template).render(
            messages=[{"role": "user", "content": user_text}], add_generation_prompt=True,
            bos_token=self.special_pieces["bos"], eos_token=self.special_pieces["eos"])
