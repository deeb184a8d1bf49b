"""How a prompt's two parts, the request and the tags line, are laid out.

`request_tags` (the default): request, newline, tags; the tokenizer adds <bos> before and
<assess> after, so every tag stands at the same distance from <assess> (where the verdict
is read) and from the answer whatever the request's length. `tags_request`: tags first,
the layout of data and checkpoints made before the choice existed. This module is the
only code that orders or parses the two parts (data/RULES.md, "Prompt layout").
"""
from __future__ import annotations

from promethios_jax.data.records import DataError, read_manifest

PROMPT_LAYOUTS = ("request_tags", "tags_request")
DEFAULT_PROMPT_LAYOUT = "request_tags"
LEGACY_PROMPT_LAYOUT = "tags_request"  # data and checkpoints that do not name their layout


def check_layout(layout: str) -> str:
    if layout not in PROMPT_LAYOUTS:
        raise ValueError(f"unknown prompt layout {layout!r}; expected one of {PROMPT_LAYOUTS}")
    return layout


def compose_prompt(tags: str, request: str, layout: str = DEFAULT_PROMPT_LAYOUT) -> str:
    """The prompt text: the request and the tags line, in `layout`'s order."""
    return request + "\n" + tags if check_layout(layout) == "request_tags" else tags + "\n" + request


def split_prompt(prompt: str) -> tuple[str, str, str]:
    """(tags, request, layout) of a prompt written by `compose_prompt` in either layout: the
    tags are the line that opens with a domain tag (a request cannot hold a tag)."""
    head, _, tail = prompt.partition("\n")
    if head.startswith("<gov:domain="):
        return head, tail, "tags_request"
    request, _, tags = prompt.rpartition("\n")
    if not tags.startswith("<gov:domain="):
        raise ValueError(f"prompt has no tags line: {prompt[:80]!r}")
    return tags, request, "request_tags"


def data_layout(data_dir) -> str:
    """The layout a data directory's prompts were written in (its manifest's `prompt_layout`)."""
    return read_manifest(data_dir).get("prompt_layout", LEGACY_PROMPT_LAYOUT)


def check_data_layout(data_dir, layout: str) -> None:
    """DataError unless the data's prompts are in `layout`: a model trained on one layout and
    served in another reads its tags at distances it never saw."""
    made = data_layout(data_dir)
    if made != layout:
        raise DataError(f"the data in {data_dir} lays prompts out as {made!r} but config.data.prompt_layout="
                        f"{layout!r}: regenerate the data (python -m promethios_jax.data.generate "
                        f"--prompt_layout={layout} --out=DIR, or delete {data_dir} when it is the workdir's) "
                        f"or set --config.data.prompt_layout={made}")
