"""The eval job: restores a checkpoint, scores the held-out split, writes the results.

It imports the model, the data pipeline and generation, never the training loop. For one
step it writes into DIR/eval/:
    <step>.json               every metric and the quality gates
    <step>.predictions.jsonl  one row per example, from which every figure is recomputed
                              (`metrics_from_rows` is the single code path for both)
    <step>.reliability.png, <step>.risk_coverage.png, <step>.md
and TensorBoard scalars under eval/ in DIR/tb/eval.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np

from eval import metrics as M

EVAL_SUBDIR = "eval"
DONE_MARKER = "TRAINING_DONE"


class EvalError(RuntimeError):
    """A problem with the input that the user must fix; the CLI exits with code 2."""


# ----------------------------------------------------------------------- workdir

def checkpoint_steps(workdir) -> list[int]:
    """Finished checkpoint steps. Orbax writes into a temporary directory and renames it
    to the bare step number when the save is complete, so digit names are whole."""
    cdir = Path(workdir) / "checkpoints"
    if not cdir.is_dir():
        return []
    return sorted(int(p.name) for p in cdir.iterdir() if p.name.isdigit() and p.is_dir())


def training_done(workdir) -> int | None:
    """The final step named by DIR/TRAINING_DONE (JSON {"step": N} or a bare N), or None."""
    path = Path(workdir) / DONE_MARKER
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, dict):
        value = value.get("step")
    return int(value) if isinstance(value, (int, float)) else None


def eval_dir(workdir) -> Path:
    return Path(workdir) / EVAL_SUBDIR


def result_path(workdir, step: int) -> Path:
    return eval_dir(workdir) / f"{step}.json"


def data_dir_for(config, workdir) -> Path:
    return Path(config.data.path) if config.data.path else Path(workdir) / "data"


def read_manifest(data_dir: Path) -> dict:
    path = Path(data_dir) / "manifest.json"
    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise EvalError(f"no data manifest at {path} ({e.strerror}); the eval job scores the split the "
                        "run was trained with (config.data.path, or WORKDIR/data)") from e


def shape_mismatches(workdir, step: int) -> list[str]:
    """Tensor by tensor, how the saved parameters differ from the model the checkpoint's
    own config builds (read from Orbax metadata, nothing restored); [] when they fit or
    the metadata cannot be read."""
    import orbax.checkpoint as ocp
    from flax import nnx

    from promethios_jax.checkpoint import read_config
    from promethios_jax.model import GovernanceTransformer

    try:
        config, _ = read_config(workdir, step)
        md = ocp.StandardCheckpointer().metadata(Path(workdir).absolute() / "checkpoints" / str(step) / "state")
        tree = getattr(md, "item_metadata", md)
        saved = dict(_flat_shapes(getattr(tree, "tree", tree)["params"]))
    except Exception:  # noqa: BLE001 -- only a diagnosis; the original error is raised anyway
        return []
    abstract = nnx.eval_shape(lambda: GovernanceTransformer(config.model, rngs=nnx.Rngs(0)))
    want = dict(_flat_shapes(nnx.to_pure_dict(nnx.split(abstract, nnx.Param)[1])))
    out = []
    for path in sorted(set(saved) | set(want)):
        if path not in saved:
            out.append(f"{path}: missing from the checkpoint (the config expects {want[path]})")
        elif path not in want:
            out.append(f"{path}: in the checkpoint {saved[path]}, but not in the model the config builds")
        elif saved[path] != want[path]:
            out.append(f"{path}: checkpoint has shape {saved[path]}, the config expects {want[path]}")
    return out


def _flat_shapes(tree):
    import jax

    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        yield name, tuple(getattr(leaf, "shape", ()))


# -------------------------------------------------------------------- the forward

_FORWARD_CACHE: dict = {}


def _forward_fn(model):
    """A jitted forward over (params state, batch) that returns per-example columns.
    Cached by the model's graph, so --watch compiles it once for all checkpoints."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from promethios_jax.model.loss import lm_token_losses

    graphdef, state = nnx.split(model)
    if graphdef in _FORWARD_CACHE:
        return _FORWARD_CACHE[graphdef], state

    @jax.jit
    def fwd(state, batch):
        m = nnx.merge(graphdef, state)
        out = m(batch["tokens"], telemetry=batch["telemetry"], segment_ids=batch["segment_ids"],
                positions=batch["positions"], head_positions=batch["head_positions"])
        mask = batch["loss_mask"].astype(jnp.float32)
        nll = lm_token_losses(out.logits, batch["targets"]) * mask
        f32 = lambda x: x[:, 0].astype(jnp.float32)  # S == 1: one example per row
        return {
            "hitl_prob": jax.nn.sigmoid(f32(out.hitl_logits)),
            "decision_prob": jax.nn.softmax(f32(out.decision_logits), axis=-1),
            "confidence_prob": jax.nn.softmax(f32(out.confidence_logits), axis=-1),
            "tool_prob": jax.nn.softmax(f32(out.tool_logits), axis=-1),
            "uncertainty": jax.nn.sigmoid(f32(out.uncertainty_logits)),
            "bias_prob": jax.nn.sigmoid(f32(out.bias_logits)),
            "nll_sum": nll.sum(axis=-1),
            "tokens": mask.sum(axis=-1),
        }

    _FORWARD_CACHE[graphdef] = fwd
    return fwd, state


def _batch_sharding(state, ndim):
    """Rows split over the mesh the parameters live on (all of its axes), if any."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    leaf = jax.tree.leaves(state)[0]
    sh = getattr(leaf, "sharding", None)
    if not isinstance(sh, NamedSharding):
        return None, 1
    mesh = sh.mesh
    return NamedSharding(mesh, P(tuple(mesh.axis_names), *([None] * (ndim - 1)))), mesh.size


MODEL_KEYS = ("tokens", "targets", "loss_mask", "segment_ids", "positions", "telemetry", "head_positions")


def predict(model, config, data_dir, split: str, batch_size: int) -> dict:
    """Runs the split through the model; returns {id: per-example numpy outputs}."""
    import jax

    from promethios_jax.data import pipeline

    fwd, state = _forward_fn(model)
    out: dict[str, dict] = {}
    n_dev = _batch_sharding(state, 2)[1]
    batch_size = max(n_dev, (batch_size // n_dev) * n_dev)  # rows divide the mesh
    for batch in pipeline.eval_batches(config, str(data_dir), split=split, batch_size=batch_size):
        ids = list(batch["ids"])
        feed = {}
        for k in MODEL_KEYS:
            v = np.asarray(batch[k])
            if v.shape[0] < batch_size:  # the last batch: pad rows so one compile serves all
                v = np.concatenate([v, np.zeros((batch_size - v.shape[0],) + v.shape[1:], v.dtype)])
            sh, _ = _batch_sharding(state, v.ndim)
            feed[k] = jax.device_put(v, sh) if sh is not None else v
        res = jax.device_get(fwd(state, feed))
        labels = {k: np.asarray(batch[k])[:, 0] for k in ("hitl", "decision", "confidence", "tool", "conflict",
                                                          "uncertainty", "bias")}
        for i, ex_id in enumerate(ids):
            out[str(ex_id)] = {**{k: np.asarray(v[i]) for k, v in res.items()},
                               **{f"{k}_label": v[i] for k, v in labels.items()}}
    return out


# ------------------------------------------------------------------- the rows

def _record_fields(record: dict) -> dict:
    """The per-example facts the metrics need from a dataset record."""
    return {"domain": record["domain"], "category": record.get("category"), "telemetry": record.get("telemetry")}


def _int(x):
    return int(np.asarray(x).item())


def build_rows(preds: dict, records: dict, threshold: float) -> list[dict]:
    """One JSON-ready row per example: predictions, labels, and what the rules need."""
    from promethios_jax.data import schema

    rows = []
    for ex_id in sorted(preds, key=_sort_key):
        p = preds[ex_id]
        rec = _record_fields(records[ex_id])
        tel = rec["telemetry"] or {}
        rule = schema.apply_rule(tel, rec["domain"]) if tel else None
        hitl_prob = float(p["hitl_prob"])
        rows.append({
            "id": ex_id,
            "domain": rec["domain"],
            "category": rec["category"],
            "trust": float(tel["trust"]) if "trust" in tel else None,
            "trust_requirement": schema.DOMAIN_TRUST.get(rec["domain"]),
            "conflict_label": _int(p["conflict_label"]),
            "hitl_prob": hitl_prob,
            "hitl_pred": int(hitl_prob >= threshold),
            "hitl_label": _int(p["hitl_label"]),
            "hitl_rule": None if rule is None else int(rule["hitl"]),
            "decision_pred": int(np.argmax(p["decision_prob"])),
            "decision_label": _int(p["decision_label"]),
            "confidence_pred": int(np.argmax(p["confidence_prob"])),
            "confidence_label": _int(p["confidence_label"]),
            "tool_pred": int(np.argmax(p["tool_prob"])),
            "tool_label": _int(p["tool_label"]),
            "uncertainty_pred": [round(float(x), 6) for x in p["uncertainty"]],
            "uncertainty_label": [round(float(x), 6) for x in p["uncertainty_label"]],
            "bias_prob": [round(float(x), 6) for x in p["bias_prob"]],
            "bias_label": [round(float(x), 6) for x in p["bias_label"]],
            "response_nll_sum": float(p["nll_sum"]),
            "response_tokens": int(round(float(p["tokens"]))),
        })
    return rows


def _sort_key(ex_id):
    return (0, int(ex_id)) if str(ex_id).isdigit() else (1, str(ex_id))


def _col(rows, key, dtype=np.float64):
    return np.asarray([r[key] for r in rows], dtype=dtype)


def metrics_from_rows(rows: list[dict], hitl_ceiling=None, hitl_majority_baseline=None,
                      generations: list[dict] | None = None) -> dict:
    """Every figure of <step>.json from the prediction rows (and the generation rows).

    Class labels below 0 mean "unknown" (as in training) and are left out of that head.
    """
    from promethios_jax.data import schema

    res: dict = {"num_examples": len(rows)}
    p, y = _col(rows, "hitl_prob"), _col(rows, "hitl_label", np.int64)
    pred = _col(rows, "hitl_pred", np.int64)
    known = y >= 0
    b = M.binary_metrics(pred[known], y[known])
    res.update({"hitl_accuracy": b["accuracy"], "hitl_precision": b["precision"], "hitl_recall": b["recall"],
                "hitl_f1": b["f1"], "hitl_confusion": {k: b[k] for k in ("tp", "fp", "fn", "tn")},
                "hitl_escalation_rate": float(pred.mean()) if len(pred) else None,
                "hitl_ceiling": hitl_ceiling, "hitl_majority_baseline": hitl_majority_baseline})
    res["ece"] = M.ece(p[known], y[known])
    res["ece_equal_mass"] = M.ece_equal_mass(p[known], y[known])
    res["brier"] = M.brier(p[known], y[known])
    rc = M.risk_coverage(p[known], y[known])
    res["aurc"] = rc["aurc"]
    res["coverage_at_5pct_risk"] = rc["coverage_at_risk"]

    domains = [r["domain"] for r in rows]
    trust = np.asarray([np.nan if r["trust"] is None else r["trust"] for r in rows])
    dc = M.domain_compliance(pred, trust, domains, schema.DOMAIN_TRUST)
    res["domain_compliance"], res["domain_compliance_count"] = dc["value"], dc["count"]
    rule = np.asarray([-1 if r.get("hitl_rule") is None else r["hitl_rule"] for r in rows])
    tv = M.trust_validation(pred, trust, domains, schema.DOMAIN_TRUST, rule_hitl=rule)
    res["trust_validation"] = tv["value"]
    res["trust_validation_parts"] = {k: v for k, v in tv.items() if k != "value"}

    conflict = _col(rows, "conflict_label", np.int64) > 0
    res["conflict_resolution_accuracy"] = M.conflict_resolution_accuracy(pred[known], y[known], conflict[known])
    res["conflict_count"] = int(conflict[known].sum())

    for head in ("confidence", "decision", "tool"):
        hp, hl = _col(rows, f"{head}_pred", np.int64), _col(rows, f"{head}_label", np.int64)
        res[f"{head}_accuracy"] = M.accuracy(hp, hl, mask=hl >= 0)
    bias = M.multilabel_macro_f1(np.asarray([r["bias_prob"] for r in rows]).reshape(len(rows), -1),
                                 np.asarray([r["bias_label"] for r in rows]).reshape(len(rows), -1),
                                 names=schema.BIAS_CATEGORIES)
    res["bias_macro_f1"], res["bias_f1"] = bias["macro_f1"], bias["per_label"]
    res["uncertainty_mae"] = M.mean_abs_error([r["uncertainty_pred"] for r in rows],
                                              [r["uncertainty_label"] for r in rows])
    nll = sum(r["response_nll_sum"] for r in rows)
    ntok = sum(r["response_tokens"] for r in rows)
    res["response_tokens"] = ntok
    res["perplexity"] = M.perplexity(nll, ntok)

    by_domain = {}
    for d in sorted(set(domains)):
        idx = [i for i, dd in enumerate(domains) if dd == d and known[i]]
        by_domain[d] = M.accuracy(pred[idx], y[idx]) if idx else None
    res["hitl_accuracy_by_domain"] = by_domain

    gens = generations or []
    lr = M.leak_rate([g["response"] for g in gens], [g["prompt"] for g in gens])
    res["leak_rate"] = lr["value"]
    res["num_generated"] = len(gens)
    pc = M.professional_communication([g["response"] for g in gens], [g["escalated"] for g in gens],
                                      [g["prompt"] for g in gens], finished=[g["finished"] for g in gens])
    res["professional_communication_parts"] = {k: v for k, v in pc.items() if k not in ("value", "ok")}

    gov = M.governance_score(res["hitl_accuracy"], hitl_ceiling, res["decision_accuracy"],
                             res["domain_compliance"], res["conflict_resolution_accuracy"])
    res["gates"] = M.gates({"governance_score": gov, "trust_validation": res["trust_validation"],
                            "professional_communication": pc["value"]})
    return res


# ------------------------------------------------------------------ generation

def pick_for_generation(ids: list[str], n: int) -> list[str]:
    """n ids spread evenly over the (sorted) split: deterministic, and not only its head."""
    ids = sorted(ids, key=_sort_key)
    if n >= len(ids):
        return ids
    idx = np.linspace(0, len(ids) - 1, n).round().astype(int)
    return [ids[i] for i in idx]


def generate_responses(model, config, records: dict, ids: list[str], threshold: float,
                       batch_size: int = 64) -> list[dict]:
    """Greedy responses to the held-out prompts `ids`, with the heads' verdict."""
    from promethios_jax import generate as gen
    from promethios_jax.data import schema, tokenizer as tok_lib

    tokenizer = tok_lib.build_tokenizer(config)
    out = []
    for start in range(0, len(ids), batch_size):
        chunk = ids[start:start + batch_size]
        prompts, tele = [], []
        for ex_id in chunk:
            rec = records[ex_id]
            prompt_ids, _ = tok_lib.encode_example(rec, tokenizer)
            prompts.append(prompt_ids)
            tele.append(schema.telemetry_vector(rec["telemetry"], rec["domain"]))
        results = gen.generate(model, tokenizer, prompts, telemetry=np.stack(tele),
                               max_new_tokens=int(config.eval.max_new_tokens), temperature=0.0,
                               hitl_threshold=threshold, eos_id=tokenizer.eos_id)
        for ex_id, p_ids, r in zip(chunk, prompts, results):
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
                "finished": r.stop_reason == "eos",
                "hitl_prob": float(r.hitl_prob),
                "escalated": bool(r.escalate),
            })
    return out


# ------------------------------------------------------------------ one step

def manifest_figures(manifest: dict, split: str) -> tuple:
    """(hitl_ceiling, hitl_majority_baseline) of `split` from the data manifest.

    The generator states both for its `ceiling_split` (heldout) and the ceiling of the
    train split as `hitl_ceiling_train`; the majority baseline of any split follows from
    its HITL label rate. None where the manifest does not say.
    """
    own = split == manifest.get("ceiling_split", "heldout")
    ceiling = manifest.get("hitl_ceiling") if own else manifest.get(f"hitl_ceiling_{split}")
    rate = manifest.get("label_rates", {}).get(split, {}).get("hitl")
    if rate is not None:
        majority = max(float(rate), 1.0 - float(rate))
    else:
        majority = manifest.get("hitl_majority_baseline") if own else None
    return (None if ceiling is None else float(ceiling)), (None if majority is None else float(majority))


def _scalars(result: dict) -> dict:
    """The numeric top-level figures and the gates, as TensorBoard tags under eval/."""
    out = {}
    for k, v in result.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or k == "step":
            continue
        if math.isfinite(float(v)):
            out[f"eval/{k}"] = float(v)
    for name, g in result["gates"].items():
        if g["value"] is not None:
            out[f"eval/gates/{name}"] = g["value"]
        out[f"eval/gates/{name}_passed"] = float(g["passed"])
    return out


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)  # readers (and --watch) never see a half-written result


def pick_samples(gens: list[dict], n: int) -> list[dict]:
    """Up to n generations for the report, half escalated and half answered when possible."""
    esc = [g for g in gens if g["escalated"]]
    ans = [g for g in gens if not g["escalated"]]
    k = min(len(esc), max(n // 2, n - len(ans)))
    return esc[:k] + ans[:n - k]


def generations_from_rows(rows: list[dict]) -> list[dict]:
    return [{"id": r["id"], **r["generation"]} for r in rows if r.get("generation")]


def evaluate(workdir, step: int | None = None, split: str = "heldout", num_generate: int | None = None,
             batch_size: int | None = None, writer=None, log=print) -> dict:
    """Scores one checkpoint (the newest when step is None) and writes its results."""
    workdir = Path(workdir)
    steps = checkpoint_steps(workdir)
    if not steps:
        raise EvalError(f"no checkpoint in {workdir / 'checkpoints'}: train first "
                        f"(python -m promethios_jax.train --workdir={workdir}), or pass --watch to wait for one")
    if step is None:
        step = steps[-1]  # named explicitly, so a checkpoint landing meanwhile cannot swap in
    elif step not in steps:
        raise EvalError(f"no checkpoint for step {step} in {workdir / 'checkpoints'}; available steps: {steps}")
    import promethios_jax  # jax and orbax only once there is something to load
    from promethios_jax.checkpoint import CheckpointError
    from promethios_jax.data import pipeline

    from eval import report

    t0 = time.time()
    try:
        model, config = promethios_jax.load(str(workdir), step=step)
    except CheckpointError as e:
        raise EvalError(str(e)) from e
    except Exception as e:  # noqa: BLE001 -- a failed restore: say which tensors do not fit, if any
        problems = shape_mismatches(workdir, step)
        if problems:
            raise EvalError(f"checkpoint step {step} does not fit its config ({len(problems)} tensors):\n  "
                            + "\n  ".join(problems)) from e
        raise
    t_load = time.time() - t0
    threshold = float(config.eval.hitl_escalation_threshold)
    data_dir = data_dir_for(config, workdir)
    manifest = read_manifest(data_dir)
    try:
        records = {str(r["id"]): r for r in pipeline.load_split(str(data_dir), split)}
    except (pipeline.DataError, OSError, KeyError, ValueError) as e:
        raise EvalError(f"cannot read split {split!r} from {data_dir}: {e}") from e
    if not records:
        raise EvalError(f"split {split!r} in {data_dir} has no examples")

    t0 = time.time()
    try:
        preds = predict(model, config, data_dir, split, int(batch_size or config.eval.batch_size))
    except pipeline.DataError as e:
        raise EvalError(f"split {split!r} in {data_dir}: {e}") from e
    missing = set(records) - set(preds)
    if missing:
        raise EvalError(f"the pipeline gave no batch row for {len(missing)} of the {len(records)} {split} examples")
    rows = build_rows(preds, records, threshold)
    t_forward = time.time() - t0

    t0 = time.time()
    n_gen = int(config.eval.num_generate if num_generate is None else num_generate)
    gen_ids = pick_for_generation(list(records), n_gen)
    gens = {g["id"]: g for g in generate_responses(model, config, records, gen_ids, threshold)} if gen_ids else {}
    for r in rows:
        g = gens.get(r["id"])
        if g is not None:
            r["generation"] = {k: g[k] for k in ("prompt", "response", "finished", "hitl_prob", "escalated")}
    t_generate = time.time() - t0

    ceiling, majority = manifest_figures(manifest, split)
    from promethios_jax.data import schema

    result = {"step": step, "split": split, "workdir": str(workdir.absolute()), "data_dir": str(data_dir),
              "hitl_escalation_threshold": threshold,
              # Class indices in the predictions file name these labels, in this order.
              "label_spaces": {"decision": list(schema.DECISIONS), "confidence": list(schema.CONFIDENCE_BANDS),
                               "tool": list(schema.TOOLS), "conflict": list(schema.CONFLICTS),
                               "uncertainty": list(schema.UNCERTAINTY_DIMS), "bias": list(schema.BIAS_CATEGORIES)}}
    result.update(metrics_from_rows(rows, ceiling, majority, generations_from_rows(rows)))
    result["timing_s"] = {"load": round(t_load, 2), "forward": round(t_forward, 2),
                          "generate": round(t_generate, 2)}

    out_dir = eval_dir(workdir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out_dir / f"{step}.predictions.jsonl", rows)
    samples = []
    by_id = {r["id"]: r for r in rows}
    for g in pick_samples(generations_from_rows(rows), 8):
        r = by_id[g["id"]]
        samples.append({**g, "domain": r["domain"], "category": r["category"], "hitl_label": r["hitl_label"],
                        "leaks": M.find_leaks(g["response"], M.telemetry_literals(g["prompt"]))})
    known = [r for r in rows if r["hitl_label"] >= 0]
    files = report.write_report(str(out_dir), result, [r["hitl_prob"] for r in known],
                                [r["hitl_label"] for r in known], samples)
    result["files"] = {"predictions": f"{step}.predictions.jsonl",
                       **{k: os.path.basename(v) for k, v in files.items()}}
    _write_json(result_path(workdir, step), result)  # last: its presence means "scored"
    if writer is not None:
        writer.write_scalars(step, _scalars(result))
        writer.flush()
    log(summary_line(result))
    return result


def _short(v) -> str:
    return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def summary_line(result: dict) -> str:
    keys = ("hitl_accuracy", "hitl_ceiling", "ece", "domain_compliance", "leak_rate", "perplexity")
    gates = ", ".join(f"{k} {_short(g['value'])} {'pass' if g['passed'] else 'FAIL'}"
                      for k, g in result["gates"].items())
    return (f"eval step {result['step']} ({result['num_examples']} {result['split']} examples): "
            + ", ".join(f"{k} {_short(result.get(k))}" for k in keys) + f"; gates: {gates}"
            + f" -> {eval_dir(result['workdir']) / (str(result['step']) + '.json')}")


# ------------------------------------------------------------------- watching

def watch(workdir, poll_seconds: float = 10.0, max_wait_seconds: float | None = None, log=print, **kw) -> list[dict]:
    """Scores each new checkpoint once while training runs; returns the results.

    A step whose DIR/eval/<step>.json exists counts as scored (a restarted watcher does not
    redo it). Stops once DIR/TRAINING_DONE names a step at or past the newest checkpoint
    and every checkpoint present then has been scored; waits (does not fail) while there
    is no checkpoint yet. A checkpoint
    that the trainer deletes (max_to_keep) before it is scored is skipped with a note.
    `max_wait_seconds` bounds the time spent waiting without anything to score.
    """
    workdir = Path(workdir)
    results, attempted = [], set()
    idle_since, said_waiting = time.time(), False
    while True:
        final = training_done(workdir)  # read before listing: its checkpoints are all on disk by then
        todo = [s for s in checkpoint_steps(workdir) if s not in attempted and not result_path(workdir, s).exists()]
        for s in todo:
            attempted.add(s)
            try:
                results.append(evaluate(workdir, step=s, log=log, **kw))
            except Exception:  # noqa: BLE001 -- a vanished checkpoint fails in many ways
                if s in checkpoint_steps(workdir):
                    raise
                log(f"checkpoint {s} was removed before it could be scored; skipping it")
            idle_since = time.time()
        # A marker older than the newest checkpoint is left from an earlier, since extended run.
        if final is not None and final >= max(checkpoint_steps(workdir), default=0):
            log(f"training finished at step {final}; scored {len(results)} checkpoint(s)")
            return results
        if not todo:
            if not said_waiting and not checkpoint_steps(workdir):
                log(f"no checkpoint in {workdir / 'checkpoints'} yet; waiting for training (poll {poll_seconds:g}s)")
                said_waiting = True
            if max_wait_seconds is not None and time.time() - idle_since > max_wait_seconds:
                raise EvalError(f"--watch: nothing new to score in {max_wait_seconds:g}s and no "
                                f"{DONE_MARKER} marker in {workdir}; giving up")
            time.sleep(poll_seconds)
