"""The one registry of governance heads.

Each head is declared once here: its name (also its parameter subtree `heads.<name>`,
its loss part and `config.loss` weight key, its `ModelOutput.heads` key), its output
width (a ModelSpec key), its loss kind, the batch key of its label, which layers it
reads, and its default loss weight. The heads' modules,
the loss, generation's verdict and eval iterate this table; adding a head is a line
here plus its label in `data/batch.py`.

The order is the loss order (loss parts and their weighted sum follow it); the modules
are built in `build_order()` (final-state heads, then pooled ones), which keeps the
parameter initialisation of earlier runs.
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np

KINDS = ("binary", "softmax", "soft_multilabel")


@dataclasses.dataclass(frozen=True)
class HeadDef:
    name: str
    kind: str  # binary: one logit (sigmoid); softmax: classes; soft_multilabel: sigmoid per dimension
    width_key: str | None  # ModelSpec field holding the output width; None: one logit
    pools: str | None = None  # ModelSpec field with the 1-based inclusive layer range it averages;
    #                           None: the final normed state at the head positions
    label: str = ""  # batch key of the label ("" : the head's name)
    reads_prompt: bool = False  # also reads the mean of the final normed states over its example's
    #                             prompt (concatenated): what the request says, not only where <assess> is
    loss_weight: float = 0.5  # default of config.loss.<name>

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"head {self.name!r}: kind {self.kind!r} is not one of {KINDS}")
        if (self.kind == "binary") != (self.width_key is None):
            raise ValueError(f"head {self.name!r}: a binary head has one logit and no width key")

    @property
    def label_key(self) -> str:
        return self.label or self.name

    def width(self, spec) -> int:
        """Output width (1 for a binary head, whose logit is squeezed in ModelOutput)."""
        return 1 if self.width_key is None else int(getattr(spec, self.width_key))

    def num_classes(self, spec) -> int | None:
        """Label classes for class heads (binary: 2); None for soft multi-label heads."""
        if self.kind == "binary":
            return 2
        return self.width(spec) if self.kind == "softmax" else None


HEADS = (
    HeadDef("hitl", "binary", None, loss_weight=1.0),
    HeadDef("decision", "softmax", "n_decisions"),
    HeadDef("confidence", "softmax", "n_confidence"),
    HeadDef("uncertainty", "soft_multilabel", "n_uncertainty", pools="uncertainty_layers"),
    HeadDef("bias", "soft_multilabel", "n_bias", reads_prompt=True),
    HeadDef("tool", "softmax", "n_tools", pools="tool_layers", reads_prompt=True),
)
NAMES = tuple(h.name for h in HEADS)
# The escalation head: its probability against a threshold is the HITL verdict.
ESCALATION = "hitl"
# The loss's parts: the LM, then one per head, in registry order.
LOSS_PARTS = ("lm",) + NAMES
# ModelSpec fields naming layer ranges (ModelSpec.check validates them).
POOL_KEYS = tuple(dict.fromkeys(h.pools for h in HEADS if h.pools))

_BY_NAME = {h.name: h for h in HEADS}


def get(name: str) -> HeadDef:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"no governance head {name!r} (have {NAMES})") from None


def build_order() -> tuple:
    """The order the head modules are created in (and so draw their init keys)."""
    return tuple(sorted(HEADS, key=lambda h: h.pools is not None))


def probabilities(head: HeadDef, logits):
    """Sigmoid for binary and multi-label heads, softmax over the last axis for class heads."""
    logits = jax.numpy.asarray(logits, jax.numpy.float32)
    return jax.nn.softmax(logits, axis=-1) if head.kind == "softmax" else jax.nn.sigmoid(logits)


def verdict(head: HeadDef, logits) -> dict:
    """One example's reading of a head, as plain Python values:
    binary -> {"<name>_prob": p}; softmax -> {"<name>": argmax, "<name>_probs": [...]};
    soft multi-label -> {"<name>": [sigmoid per dimension]}."""
    if head.kind == "binary":
        return {f"{head.name}_prob": float(jax.nn.sigmoid(logits))}
    probs = np.asarray(probabilities(head, logits))
    if head.kind == "softmax":
        return {head.name: int(probs.argmax()), f"{head.name}_probs": probs.tolist()}
    return {head.name: probs.tolist()}
