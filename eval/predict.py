"""Prediction rows: the model's per-example outputs on a split, and greedy generations.

`predict` runs the split through the model (one jitted forward, cached across
checkpoints by the model's graph); `build_rows` turns its outputs into the JSON-ready
rows of `<step>.predictions.jsonl`, one per example, with a column set per head of the
registry (model/heads.py):

    binary head h:          h_prob, h_pred (h_prob >= threshold), h_label
    softmax head h:         h_pred (argmax), h_label
    soft multi-label head h: h_pred (sigmoid per dimension), h_label

plus the example's domain, category, trust, the rule's verdict and the response NLL.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from promethios_jax import generate as gen
from promethios_jax.data import batch as batch_lib
from promethios_jax.data import pipeline, schema
from promethios_jax.data import tokenizer as tok_lib
from promethios_jax.data.control import OUTCOMES, outcome_piece
from promethios_jax.model import heads as heads_lib
from promethios_jax.model.loss import lm_token_losses

# The batch fields the model reads.
MODEL_KEYS = ("tokens", "targets", "loss_mask", "segment_ids", "positions", "telemetry", "head_positions")
# Label columns that belong to no head (eval reads them for the conflict metric).
EXTRA_LABELS = ("conflict",)

_FORWARD_CACHE: dict = {}


def _forward_fn(model):
    """A jitted forward over (params state, batch) returning per-example columns: every
    head's probabilities (`<head>`), the response NLL sum and its token count."""
    graphdef, state = nnx.split(model)
    mesh = _mesh_of(state)
    if (graphdef, mesh) in _FORWARD_CACHE:
        return _FORWARD_CACHE[graphdef, mesh], state

    @jax.jit
    def fwd(state, batch):
        m = nnx.merge(graphdef, state)
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):  # the cuDNN path pins q/k/v to it
            out = m(batch["tokens"], telemetry=batch["telemetry"], segment_ids=batch["segment_ids"],
                    positions=batch["positions"], head_positions=batch["head_positions"])
        mask = batch["loss_mask"].astype(jnp.float32)
        nll = lm_token_losses(out.logits, batch["targets"]) * mask
        # S == 1: one example per row.
        cols = {h.name: heads_lib.probabilities(h, out.heads[h.name][:, 0]) for h in heads_lib.HEADS}
        return {**cols, "nll_sum": nll.sum(axis=-1), "tokens": mask.sum(axis=-1)}

    _FORWARD_CACHE[graphdef, mesh] = fwd
    return fwd, state


def _mesh_of(state):
    return jax.tree.leaves(state)[0].sharding.mesh


def predict(model, config, data_dir, split: str, batch_size: int) -> dict:
    """Runs the split through the model; returns {id: per-example numpy outputs and labels}."""
    return _predict(model, config, pipeline.eval_batches(config, str(data_dir), split=split,
                                                         batch_size=_rows(model, config, batch_size)),
                    _rows(model, config, batch_size))


def predict_records(model, config, records: list, name: str, batch_size: int) -> dict:
    """`predict` over records held in memory (the eval's perturbed requests)."""
    b = _rows(model, config, batch_size)
    return _predict(model, config, pipeline.record_batches(config, records, name, b), b)


def _rows(model, config, batch_size: int) -> int:
    """The batch size rounded to a multiple of the mesh axes of the `batch` rule."""
    mesh = _mesh_of(nnx.state(model))
    rows_axes = batch_lib.shardings(config, mesh, batch_size=batch_size, segments=1)["tokens"].spec[0]
    n = int(np.prod([mesh.shape[a] for a in ((rows_axes,) if isinstance(rows_axes, str) else rows_axes or ())]))
    return max(n, (batch_size // n) * n)


def _predict(model, config, batches, batch_size: int) -> dict:
    fwd, state = _forward_fn(model)
    sh = batch_lib.shardings(config, _mesh_of(state), batch_size=batch_size, segments=1)
    tokenizer = tok_lib.build_tokenizer(config)
    labels = tuple(h.label_key for h in heads_lib.HEADS) + EXTRA_LABELS
    out: dict[str, dict] = {}
    for batch in batches:
        feed = {}
        for k in MODEL_KEYS:
            v = np.asarray(batch[k])
            if v.shape[0] < batch_size:  # the last batch: pad rows so one compile serves all
                v = np.concatenate([v, np.zeros((batch_size - v.shape[0],) + v.shape[1:], v.dtype)])
            feed[k] = jax.device_put(v, sh[k])
        res = jax.device_get(fwd(state, feed))
        lab = {k: np.asarray(batch[k])[:, 0] for k in labels}
        for i, ex_id in enumerate(batch["ids"]):
            out[str(ex_id)] = {**{k: np.asarray(v[i]) for k, v in res.items()},
                               **{f"{k}_label": v[i] for k, v in lab.items()},
                               "bytes": _response_bytes(batch, i, tokenizer)}
    return out


def _response_bytes(batch, row: int, tokenizer) -> int:
    """UTF-8 bytes of the response tokens scored in `row` (the fitted response, <eos> aside)."""
    n = int(batch["prompt_lengths"][row])
    ids = np.asarray(batch["tokens"][row, n:])[np.asarray(batch["segment_ids"][row, n:]) > 0]
    return len(tokenizer.decode([int(t) for t in ids if t != tokenizer.eos_id]).encode("utf-8"))


def sort_key(ex_id):
    return (0, int(ex_id)) if str(ex_id).isdigit() else (1, str(ex_id))


def _int(x):
    return int(np.asarray(x).item())


def _values(x) -> list:
    return [round(float(v), 6) for v in np.asarray(x).ravel()]


def head_columns(head, p: dict, threshold: float) -> dict:
    """One head's columns of a row (see the module docstring)."""
    name, label = head.name, p[f"{head.label_key}_label"]
    if head.kind == "binary":
        prob = float(p[name])
        return {f"{name}_prob": prob, f"{name}_pred": int(prob >= threshold), f"{name}_label": _int(label)}
    if head.kind == "softmax":
        return {f"{name}_pred": int(np.argmax(p[name])), f"{name}_label": _int(label)}
    return {f"{name}_pred": _values(p[name]), f"{name}_label": _values(label)}


def build_rows(preds: dict, records: dict, threshold: float) -> list[dict]:
    """One JSON-ready row per example: every head's columns, labels, and what the rules need."""
    rows = []
    for ex_id in sorted(preds, key=sort_key):
        p, rec = preds[ex_id], records[ex_id]
        tel = rec.get("telemetry") or {}
        rule = schema.apply_rule(tel, rec["domain"]) if tel else None
        row = {
            "id": ex_id,
            "domain": rec["domain"],
            "category": rec.get("category"),
            "trust": float(tel["trust"]) if "trust" in tel else None,
            "trust_requirement": schema.DOMAIN_TRUST.get(rec["domain"]),
            "conflict_label": _int(p["conflict_label"]),
            "hitl_rule": None if rule is None else int(rule["hitl"]),
        }
        for head in heads_lib.HEADS:
            row.update(head_columns(head, p, threshold))
        row["response_nll_sum"] = float(p["nll_sum"])
        row["response_tokens"] = int(round(float(p["tokens"])))
        row["response_bytes"] = int(p["bytes"])
        rows.append(row)
    return rows


# ------------------------------------------------------------------ generation

def pick_for_generation(ids: list[str], n: int) -> list[str]:
    """n ids spread evenly over the (sorted) split: deterministic, and not only its head."""
    ids = sorted(ids, key=sort_key)
    if n >= len(ids):
        return ids
    idx = np.linspace(0, len(ids) - 1, n).round().astype(int)
    return [ids[i] for i in idx]


def generate_responses(model, config, records: dict, ids: list[str], threshold: float,
                       max_new_tokens: int | None = None, batch_size: int = 64) -> list[dict]:
    """Greedy responses to the held-out prompts `ids`, with every head's verdict."""
    tokenizer = tok_lib.build_tokenizer(config)
    pieces = getattr(tokenizer, "outcome_ids", {})
    outcome_of_id = {pieces[outcome_piece(o)]: o for o in OUTCOMES} if pieces else {}
    out = []
    for start in range(0, len(ids), batch_size):
        chunk = ids[start:start + batch_size]
        prompts, tele = [], []
        for ex_id in chunk:
            rec = records[ex_id]
            prompts.append(tok_lib.encode_example(rec, tokenizer)[0])
            tele.append(schema.telemetry_vector(rec["telemetry"], rec["domain"]))
        results = gen.generate(model, tokenizer, prompts, telemetry=np.stack(tele),
                               max_new_tokens=int(max_new_tokens or config.eval.max_new_tokens), temperature=0.0,
                               hitl_threshold=threshold, eos_id=tokenizer.eos_id)
        for ex_id, r in zip(chunk, results):
            rec = records[ex_id]
            out.append({
                "id": ex_id,
                "domain": rec["domain"],
                "category": rec.get("category"),
                # The prompt as written (raw values such as trust 0.72); the model saw the
                # values only as bucketed control tokens, so these are what a leak would show.
                "prompt": rec["prompt"],
                "telemetry": rec.get("telemetry"),
                "response": r.text,
                # The outcome piece the model began with (config.data.outcome_token), else None.
                "outcome_token": outcome_of_id.get(r.ids[0]) if r.ids else None,
                "finished": r.stop_reason == "eos",
                "hitl_prob": float(r.verdict[f"{heads_lib.ESCALATION}_prob"]),
                "escalated": bool(r.escalate),
                "verdict": r.verdict,
            })
    return out


def generations_from_rows(rows: list[dict]) -> list[dict]:
    return [{"id": r["id"], "split": r.get("split"), "rule_outcome": r.get("rule_outcome"), **r["generation"]}
            for r in rows if r.get("generation")]
