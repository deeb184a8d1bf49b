"""The eval job: restores a checkpoint, scores a split, writes the results; and its watch loop.

It imports the model, the state loader, the data pipeline and generation, never the
training loop. It scores every evaluation split of the data (generate.EVAL_SPLITS) with
the references beside the model (eval/reference.py) and the verdict's invariance to the
request's wording (eval/invariance.py). For one step it writes into WORKDIR/eval/:
    <step>.json               every metric and the quality gates
    <step>.predictions.jsonl  one row per example, from which every figure is recomputed
                              (eval.scoring.metrics_from_rows is the single code path for both)
    <step>.reliability.png, <step>.risk_coverage.png, <step>.md
and TensorBoard scalars under eval/ in WORKDIR/tb/eval.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from eval import communication as C
from eval import invariance, predict, report, scoring
from eval import reference as R
from promethios_jax.checkpoint import load
from promethios_jax.data.generate import EVAL_SPLITS
from promethios_jax.data.records import DataError, load_split, read_manifest
from promethios_jax.data.tokenizer import build_tokenizer, encode_example_arrays
from promethios_jax.model.heads import ESCALATION
from promethios_jax.workdir import (DONE, WorkdirError, checkpoint_dir, checkpoint_steps, data_dir,
                                    eval_dir, training_done)


# Splits whose generations the professional-communication figures read (a sample each).
GENERATED_SPLITS = ("heldout", "heldout_templates")


class EvalError(RuntimeError):
    """A problem with the input that the user must fix; the CLI exits with code 2."""


def result_path(workdir, step: int) -> Path:
    return eval_dir(workdir) / f"{step}.json"


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


def _load(workdir: Path, step: int):
    try:
        return load(str(workdir), step=step)
    except WorkdirError as e:  # CheckpointError included: no checkpoint, one that does not fit
        raise EvalError(str(e)) from e


def _read_splits(config, workdir: Path):
    """(data dir, manifest, {split: {id: record}}) of train and every evaluation split."""
    ddir = data_dir(config, workdir)
    try:
        manifest = read_manifest(ddir)
    except DataError as e:
        raise EvalError(f"{e}; the eval job scores the split the run was trained with "
                        "(config.data.path, or WORKDIR/data)") from e
    have = sorted(manifest.get("shards", {}))
    for split in ("train",) + EVAL_SPLITS:
        if split not in have:
            raise EvalError(
                f"{ddir}: the data has no {split!r} split (it has {have}); the eval scores "
                f"{', '.join(EVAL_SPLITS)} and fits its baselines on train. Regenerate the data with "
                f"python -m promethios_jax.data.generate --out={ddir} "
                f"--num_examples={manifest.get('num_examples', 10000)} (and retrain on it)")
    splits = {}
    for split in ("train",) + EVAL_SPLITS:
        try:
            splits[split] = {str(r["id"]): r for r in load_split(str(ddir), split)}
        except (DataError, OSError, KeyError, ValueError) as e:
            raise EvalError(f"cannot read split {split!r} from {ddir}: {e}") from e
        if not splits[split]:
            raise EvalError(f"split {split!r} in {ddir} has no examples")
    return ddir, manifest, splits


def _score_split(model, config, ddir, split: str, records: dict, refs, threshold: float, batch_size: int):
    try:
        preds = predict.predict(model, config, ddir, split, batch_size)
    except DataError as e:
        raise EvalError(f"split {split!r} in {ddir}: {e}") from e
    missing = set(records) - set(preds)
    if missing:
        raise EvalError(f"the pipeline gave no batch row for {len(missing)} of the {len(records)} {split} examples")
    rows = predict.build_rows(preds, records, threshold)
    for r, extra in zip(rows, refs.columns([records[r["id"]] for r in rows])):
        r.update(split=split, **extra)
    return rows


def _flips(model, config, rows: list[dict], records: dict, threshold: float, batch_size: int) -> None:
    """Scores the padded and swapped variants of the held-out requests (eval/invariance.py)."""
    tok = build_tokenizer(config)
    max_len = int(config.model.max_seq_len)
    variants = invariance.perturbations([records[r["id"]] for r in rows],
                                        lambda rec: len(encode_example_arrays(rec, tok)[0]) < max_len)
    preds = {}
    for v, recs in variants.items():
        out = predict.predict_records(model, config, recs, f"heldout ({v})", batch_size) if recs else {}
        preds[v] = {k: int(float(p[ESCALATION]) >= threshold) for k, p in out.items()}
    invariance.attach_flips(rows, preds)


def generation_budget(config, splits: dict) -> int:
    """New tokens allowed: at least MIN_BUDGET_TOKENS, and room for every reference response
    of the evaluation splits with its <eos>."""
    tok = build_tokenizer(config)
    longest = max(len(encode_example_arrays(r, tok)[1]) for s in EVAL_SPLITS for r in splits[s].values())
    return max(C.MIN_BUDGET_TOKENS, longest)


def evaluate(workdir, step: int | None = None, split: str = "heldout", num_generate: int | None = None,
             batch_size: int | None = None, writer=None, log=print) -> dict:
    """Scores one checkpoint (the newest when step is None) on every evaluation split and
    writes its results; `split` is the headline split repeated at the JSON's top level."""
    workdir = Path(workdir)
    steps = checkpoint_steps(workdir)
    if not steps:
        raise EvalError(f"no checkpoint in {checkpoint_dir(workdir)}: train first "
                        f"(python -m promethios_jax.train --workdir={workdir}), or pass --watch to wait for one")
    if step is None:
        step = steps[-1]  # named explicitly, so a checkpoint landing meanwhile cannot swap in
    elif step not in steps:
        raise EvalError(f"no checkpoint for step {step} in {checkpoint_dir(workdir)}; available steps: {steps}")
    if split not in EVAL_SPLITS:
        raise EvalError(f"--split={split!r} is not an evaluation split; choose one of {list(EVAL_SPLITS)}")

    t0 = time.time()
    model, config = _load(workdir, step)
    t_load = time.time() - t0
    threshold = float(config.eval.hitl_escalation_threshold)
    bs = int(batch_size or config.eval.batch_size)
    ddir, manifest, splits = _read_splits(config, workdir)

    t0 = time.time()
    refs = R.References(list(splits["train"].values()))
    t_refs = time.time() - t0
    t0 = time.time()
    rows = []
    for s in EVAL_SPLITS:
        rows += _score_split(model, config, ddir, s, splits[s], refs, threshold, bs)
    t_forward = time.time() - t0
    t0 = time.time()
    _flips(model, config, [r for r in rows if r["split"] == "heldout"], splits["heldout"], threshold, bs)
    t_flips = time.time() - t0

    t0 = time.time()
    n_gen = int(config.eval.num_generate if num_generate is None else num_generate)
    budget = generation_budget(config, splits)
    by_key = {(r["split"], r["id"]): r for r in rows}
    for s in GENERATED_SPLITS:
        ids = predict.pick_for_generation(list(splits[s]), n_gen)
        for g in (predict.generate_responses(model, config, splits[s], ids, threshold, budget) if ids else []):
            by_key[(s, g["id"])]["generation"] = {k: g[k] for k in ("prompt", "response", "outcome_token", "finished",
                                                                    "hitl_prob", "escalated", "verdict")}
    t_generate = time.time() - t0

    result = {"step": step, "split": split, "workdir": str(workdir.absolute()), "data_dir": str(ddir),
              "hitl_escalation_threshold": threshold, "label_spaces": scoring.label_spaces(),
              "generation_budget_tokens": budget, "num_generate_per_split": n_gen}
    gens = predict.generations_from_rows(rows)
    result.update(scoring.metrics_from_rows(rows, scoring.manifest_figures(manifest), gens, headline=split))
    result["timing_s"] = {"load": round(t_load, 2), "references": round(t_refs, 2),
                          "forward": round(t_forward, 2), "invariance": round(t_flips, 2),
                          "generate": round(t_generate, 2)}

    out_dir = eval_dir(workdir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out_dir / f"{step}.predictions.jsonl", rows)
    samples = []
    for g in report.pick_samples(gens, 8):
        r = by_key[(g["split"], g["id"])]
        samples.append({**g, "domain": r["domain"], "category": r["category"], "hitl_label": r["hitl_label"],
                        "outcome_read": C.read_outcome(g["response"]),
                        "leaks": C.find_leaks(g["response"], C.telemetry_literals(g["prompt"]))})
    known = [r for r in rows if r["hitl_label"] >= 0 and r["split"] == split]
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


def summary_line(result: dict) -> str:
    return report.summary(result) + f" -> {result_path(result['workdir'], result['step'])}"


def watch(workdir, poll_seconds: float = 10.0, max_wait_seconds: float | None = None, log=print, **kw) -> list[dict]:
    """Scores each new checkpoint once while training runs; returns the results.

    A step whose WORKDIR/eval/<step>.json exists counts as scored (a restarted watcher does
    not redo it). Stops once WORKDIR/TRAINING_DONE names a step at or past the newest
    checkpoint and every checkpoint present then has been scored; waits (does not fail)
    while there is no checkpoint yet. A checkpoint that the trainer deletes (max_to_keep)
    before it is scored is skipped with a note. `max_wait_seconds` bounds the time spent
    waiting without anything to score.
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
                log(f"no checkpoint in {checkpoint_dir(workdir)} yet; waiting for training (poll {poll_seconds:g}s)")
                said_waiting = True
            if max_wait_seconds is not None and time.time() - idle_since > max_wait_seconds:
                raise EvalError(f"--watch: nothing new to score in {max_wait_seconds:g}s and no "
                                f"{DONE} marker in {workdir}; giving up")
            time.sleep(poll_seconds)
