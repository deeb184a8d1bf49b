"""The one declaration of a training batch: field names, shapes, dtypes, logical axes.

Sizes are named: `batch` (rows; the global batch size on the mesh, the host's share in
the pipeline), `length` (config.model.max_seq_len), `segments` (examples packed per
row, config.data.max_segments_per_row; 1 in eval batches) and the fixed label widths
below. The pipeline fills `empty(...)`, the train step is compiled for
`abstract_batch(...)`, the benchmark draws `data.synthetic.batch(...)` and eval adds
`EVAL_FIELDS`; all of them read this table.

Logical axes go through `config.sharding.rules` like the parameters' (rule `batch` for
the rows, `length` for the tokens).
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np

from promethios_jax import sharding
from promethios_jax.data import schema

# Fixed widths (the label spaces of data/schema.py).
WIDTHS = {"telemetry": schema.TELEMETRY_DIM, "uncertainty": len(schema.UNCERTAINTY_DIMS),
          "bias": len(schema.BIAS_CATEGORIES)}


@dataclasses.dataclass(frozen=True)
class Field:
    name: str
    dims: tuple  # "batch", "length", "segments" or a key of WIDTHS
    dtype: type
    logical: tuple  # one logical axis (config.sharding.rules) or None per dim
    doc: str


# (dims, logical axes) of the per-token and per-example-slot fields.
_TOK = (("batch", "length"), ("batch", "length"))
_SLOT = (("batch", "segments"), ("batch", None))

FIELDS = (
    Field("tokens", _TOK[0], np.int32, _TOK[1], "token ids; <pad> after the last example"),
    Field("targets", _TOK[0], np.int32, _TOK[1], "next token of each position (<pad> at each example's end)"),
    Field("loss_mask", _TOK[0], np.float32, _TOK[1], "1 where the target is a response token"),
    Field("segment_ids", _TOK[0], np.int32, _TOK[1], "1.. per packed example, 0 on padding"),
    Field("positions", _TOK[0], np.int32, _TOK[1], "position within its example (RoPE)"),
    Field("telemetry", ("batch", "length", "telemetry"), np.float32, ("batch", "length", "telemetry"),
          "schema.telemetry_vector of the token's example"),
    Field("head_positions", _SLOT[0], np.int32, _SLOT[1], "row index of each example's <assess> token"),
    Field("head_mask", _SLOT[0], np.float32, _SLOT[1], "1 for slots that hold an example"),
    Field("hitl", _SLOT[0], np.int32, _SLOT[1], "1: escalate to a human"),
    Field("decision", _SLOT[0], np.int32, _SLOT[1], "index into schema.DECISIONS"),
    Field("confidence", _SLOT[0], np.int32, _SLOT[1], "index into schema.CONFIDENCE_BANDS"),
    Field("tool", _SLOT[0], np.int32, _SLOT[1], "index into schema.TOOLS"),
    Field("conflict", _SLOT[0], np.int32, _SLOT[1], "index into schema.CONFLICTS (no head; eval reads it)"),
    Field("uncertainty", ("batch", "segments", "uncertainty"), np.float32, ("batch", None, "classes"),
          "soft targets in [0, 1] per schema.UNCERTAINTY_DIMS"),
    Field("bias", ("batch", "segments", "bias"), np.float32, ("batch", None, "classes"),
          "soft targets in [0, 1] per schema.BIAS_CATEGORIES"),
)
# Eval batches (pipeline.eval_batches, one example per row) add these to FIELDS; they
# also carry `ids` (record ids) and `num_valid` (real rows), which are host values.
EVAL_FIELDS = FIELDS + (
    Field("prompt_lengths", ("batch",), np.int32, ("batch",), "tokens through <assess>, where generation starts"),
)
NAMES = tuple(f.name for f in FIELDS)
# Fields that hold a label per example slot (the heads registry's label keys are among them).
CLASS_LABELS = ("hitl", "decision", "confidence", "tool", "conflict")
SOFT_LABELS = ("uncertainty", "bias")


def sizes(config, batch_size: int | None = None, segments: int | None = None) -> dict:
    """The named sizes of a config's batch (default: the global batch of packed rows)."""
    return {"batch": int(config.train.global_batch_size if batch_size is None else batch_size),
            "length": int(config.model.max_seq_len),
            "segments": int(config.data.max_segments_per_row if segments is None else segments),
            **WIDTHS}


def shapes(batch: int, length: int, segments: int, fields=FIELDS) -> dict:
    """{name: (shape, dtype)} for these sizes."""
    named = {"batch": batch, "length": length, "segments": segments, **WIDTHS}
    return {f.name: (tuple(named[d] for d in f.dims), f.dtype) for f in fields}


def empty(batch: int, length: int, segments: int, fields=FIELDS) -> dict:
    """A zero batch (every slot empty, all padding) of numpy arrays, to be filled in."""
    return {k: np.zeros(shape, dt) for k, (shape, dt) in shapes(batch, length, segments, fields).items()}


def config_shapes(config, batch_size: int | None = None, segments: int | None = None, fields=FIELDS) -> dict:
    s = sizes(config, batch_size, segments)
    return shapes(s["batch"], s["length"], s["segments"], fields)


def shardings(config, mesh, batch_size: int | None = None, segments: int | None = None, fields=FIELDS) -> dict:
    """{name: NamedSharding} from the fields' logical axes and config.sharding.rules."""
    shp = config_shapes(config, batch_size, segments, fields)
    return {f.name: jax.sharding.NamedSharding(
                mesh, sharding.logical_to_mesh(f.logical, config.sharding.rules, shp[f.name][0], mesh))
            for f in fields}


def micro_shardings(config, mesh, num_micro: int, fields=FIELDS) -> dict:
    """Shardings of a batch split into [num_micro, batch / num_micro, ...] micro-batches:
    the micro-batch axis unsharded, the rest as in `shardings` for one micro-batch."""
    one = shardings(config, mesh, batch_size=int(config.train.global_batch_size) // num_micro, fields=fields)
    return {k: jax.sharding.NamedSharding(mesh, sharding.micro_batch_spec(s.spec)) for k, s in one.items()}


def abstract_batch(config, mesh, batch_size: int | None = None, segments: int | None = None,
                   fields=FIELDS) -> dict:
    """{name: jax.ShapeDtypeStruct with its NamedSharding}: what the train step is compiled for."""
    shp = config_shapes(config, batch_size, segments, fields)
    sh = shardings(config, mesh, batch_size, segments, fields)
    return {k: jax.ShapeDtypeStruct(shape, dt, sharding=sh[k]) for k, (shape, dt) in shp.items()}
