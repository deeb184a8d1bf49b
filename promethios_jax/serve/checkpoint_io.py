"""The serve package's one seam to the rest of the code base.

Everything the server needs from a training run goes through here: the model, config
and tokenizer of a workdir's checkpoint, the prompt built exactly as the eval job and
the generator build it, the telemetry vector, and the label spaces. When the modules
behind these move, only this file changes.
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import nnx

from promethios_jax.checkpoint import load as load_checkpoint
from promethios_jax.data.records import load_split
from promethios_jax.workdir import data_dir, read_config
from promethios_jax.data import schema
from promethios_jax.data.generate import bias_labels as _generator_bias_labels, format_tags
from promethios_jax.data.prompt import compose_prompt, split_prompt
from promethios_jax.data.tokenizer import build_tokenizer, encode_example
from promethios_jax.generate import sample_token  # noqa: F401 -- re-exported for the engine

# Label spaces, in the order of the heads' outputs.
DOMAINS = schema.DOMAINS
DECISIONS = schema.DECISIONS
CONFIDENCE_BANDS = schema.CONFIDENCE_BANDS
TOOLS = schema.TOOLS
CONFLICTS = schema.CONFLICTS
UNCERTAINTY_DIMS = schema.UNCERTAINTY_DIMS
BIAS_CATEGORIES = schema.BIAS_CATEGORIES
LABEL_SPACES = schema.LABEL_SPACES
TELEMETRY_KEYS = schema.TELEMETRY_KEYS
NUMERIC_KEYS = schema.NUMERIC_KEYS
CATEGORICAL_VALUES = schema.CATEGORICAL_VALUES
DOMAIN_TRUST = schema.DOMAIN_TRUST
CATEGORY_NAMES = schema.CATEGORIES
telemetry_vector = schema.telemetry_vector
apply_rule = schema.apply_rule
uncertainty_arrays = schema.uncertainty_arrays
codes = schema.codes


def bias_labels(telemetry: dict, domain: str) -> dict:
    """The generator's bias labels of a request without a framing cue (the telemetry-driven ones)."""
    return _generator_bias_labels(telemetry, domain, None)


class PromptError(ValueError):
    """A request text the prompt cannot carry; the message names the problem."""


@dataclasses.dataclass
class Served:
    model: object  # GovernanceTransformer, parameters on one device
    config: object  # the checkpoint's resolved ConfigDict
    tokenizer: object
    step: int

    @property
    def hitl_threshold(self) -> float:
        """The eval job's escalation threshold, so both give the same verdict."""
        return float(self.config.eval.hitl_escalation_threshold)

    @property
    def max_len(self) -> int:
        return int(self.config.model.max_seq_len)


def load(workdir, step: int | None = None, device=None) -> Served:
    """The checkpoint at `step` (default: the newest) with its config and tokenizer.

    The parameters are placed on one device: a decode step for a few dozen rows gains
    nothing from a mesh and would pay for its collectives.
    """
    _, step = read_config(workdir, step)
    model, config = load_checkpoint(workdir, step=step)
    graphdef, state = nnx.split(model)
    state = jax.device_put(state, device or jax.devices()[0])
    return Served(nnx.merge(graphdef, state), config, build_tokenizer(config), int(step))


def request_prompt(telemetry: dict, domain: str, text: str, layout: str) -> str:
    """The prompt text of a request, as the generator writes it in `layout`
    (config.data.prompt_layout of the checkpoint)."""
    return compose_prompt(format_tags(telemetry, domain), text, layout)


def prompt_ids(tokenizer, telemetry: dict, domain: str, text: str, layout: str) -> list[int]:
    """<bos> request tags <assess> (or tags first, as `layout` says): the ids the eval job
    feeds for the same record.

    A request text holding a control or special token would let a caller set its own
    telemetry or end the prompt early, so it is refused.
    """
    own = np.asarray(tokenizer.encode(text), np.int64)
    special = {tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.assess_id}
    if len(own) and (tokenizer.is_control(own).any() or np.isin(own, list(special)).any()):
        raise PromptError("the request text contains a reserved governance or special tag (<gov:...>, <bos>, "
                          "<eos>, <assess>, <pad>); send telemetry in the `telemetry` field instead")
    ids, _ = encode_example({"prompt": request_prompt(telemetry, domain, text, layout), "response": ""}, tokenizer)
    return ids


def param_count(model) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.split(model, nnx.Param)[1])))


def heldout_requests(workdir, split: str = "heldout", max_tokens: int | None = None) -> list[dict]:
    """The run's held-out records as request bodies' parts: text, telemetry, domain.

    With max_tokens, only those whose prompt leaves room for max_tokens in the context."""
    config, _ = read_config(workdir)
    out = [{"text": split_prompt(r["prompt"])[1], "telemetry": r["telemetry"], "domain": r["domain"]}
           for r in load_split(str(data_dir(config, workdir)), split)]
    if max_tokens is not None:
        tok, room = build_tokenizer(config), int(config.model.max_seq_len) - max_tokens
        out = [r for r in out if len(prompt_ids(tok, r["telemetry"], r["domain"], r["text"],
                                                 config.data.prompt_layout)) <= room]
    return out
