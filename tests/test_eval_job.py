"""The eval job end to end: a real 2-step training run, then `python -m eval` on its
checkpoints (in-process through eval.__main__.main, so jit caches are shared), on the
simulated 8-device host."""
import json
import math
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from eval import communication as C
from eval import predict, runner, scoring
from eval.__main__ import EXIT_BAD_INPUT, EXIT_GATES_FAILED, main
from promethios_jax import workdir
from promethios_jax.data import generate
from tests.util import small_config as base_small_config

ISSUE_KEYS = (
    "hitl_accuracy", "hitl_precision", "hitl_recall", "hitl_f1", "hitl_ceiling", "hitl_majority_baseline",
    "ece", "ece_equal_mass", "brier", "aurc", "coverage_at_5pct_risk", "domain_compliance",
    "conflict_resolution_accuracy", "confidence_accuracy", "bias_macro_f1", "decision_accuracy", "tool_accuracy",
    "perplexity", "leak_rate", "gates", "splits", "hitl_flip_rate", "hitl_flip_rate_parts",
    "professional_communication_by_split", "gate_figures", "response_nats_per_byte",
    "evidence_slice_hitl_accuracy",
)
ROW_KEYS = ("id", "domain", "category", "hitl_prob", "hitl_label", "decision_pred", "decision_label",
            "confidence_pred", "confidence_label", "tool_pred", "tool_label", "bias_pred", "bias_label",
            "uncertainty_pred", "uncertainty_label")
NUM_GENERATE = 6


def small_config():
    c = base_small_config()
    c.data.num_examples = 240
    c.data.heldout_fraction = 0.1
    c.train.update(steps=2, warmup_steps=1)
    c.checkpoint.every_steps = 1
    c.eval.batch_size = 16
    c.eval.max_new_tokens = 16
    c.model.max_seq_len = 384  # whole byte-token prompts: with asides the longest is ~360 bytes
    return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from promethios_jax import train

    wd = tmp_path_factory.mktemp("run")
    train.train(small_config(), str(wd))
    assert workdir.checkpoint_steps(wd) == [1, 2] and workdir.training_done(wd) == 2
    return wd


@pytest.fixture(scope="module")
def scored(trained):
    rc = main([f"--workdir={trained}", f"--num_generate={NUM_GENERATE}"])
    assert rc == 0  # the gates fail on a 2-step model, and that alone does not fail the job
    return trained, json.loads((trained / "eval" / "2.json").read_text())


def read_rows(wd, step):
    return [json.loads(line) for line in (wd / "eval" / f"{step}.predictions.jsonl").read_text().splitlines()]


def test_eval_writes_metrics_predictions_pictures_and_scalars(scored):
    wd, res = scored
    for key in ISSUE_KEYS:
        assert key in res, key
    assert res["step"] == 2 and res["split"] == "heldout"
    manifest = json.loads((wd / "data" / "manifest.json").read_text())
    assert res["hitl_ceiling"] == pytest.approx(manifest["hitl_ceiling"])
    assert res["hitl_majority_baseline"] == pytest.approx(manifest["hitl_majority_baseline"])
    assert res["num_examples"] == manifest["counts"]["heldout"]
    assert set(res["gates"]) == {"governance_score", "trust_validation", "professional_communication"}
    for g in res["gates"].values():
        assert {"value", "threshold", "passed"} <= set(g)
    assert res["gates"]["governance_score"]["required_margin"] > 0
    assert 0 <= res["hitl_accuracy"] <= 1 and 0 <= res["ece"] <= 1 and res["perplexity"] > 1
    assert res["num_generated"] == 2 * NUM_GENERATE and res["leak_rate"] is not None
    # Every split, each headline figure with its interval, the references beside it.
    assert set(res["splits"]) == set(generate.EVAL_SPLITS)
    for split, f in res["splits"].items():
        assert f["num_examples"] == manifest["counts"][split]
        for fig in ("hitl_accuracy", "evidence_slice_hitl_accuracy", "ece", "tool_accuracy", "bias_macro_f1",
                    "response_nats_per_byte"):
            ci = f["intervals"][fig]
            assert ci["value"] is None or ci["ci_low"] <= ci["value"] <= ci["ci_high"], (split, fig)
        ref = f["references"]
        assert set(ref["baselines"]) == {"majority", "one_field", "trust_gate", "two_field", "mlp", "oracle"}
        assert ref["response_floor_nats_per_byte"] == manifest["splits"][split]["response_floor_nats_per_byte"]
        assert ref["ngram_nats_per_byte"] > 0 and "tool_accuracy_full_input" in ref
    assert res["hitl_flip_rate_parts"]["pad"]["n"] > 0 and res["hitl_flip_rate_parts"]["swap"]["n"] > 0
    assert set(res["professional_communication_by_split"]) == {"heldout", "heldout_templates"}
    assert res["generation_budget_tokens"] >= 256

    rows = read_rows(wd, 2)
    assert len(rows) == sum(manifest["counts"][s] for s in generate.EVAL_SPLITS)
    for key in ROW_KEYS:
        assert key in rows[0], key
    assert sum("generation" in r for r in rows) == 2 * NUM_GENERATE
    for name in ("2.reliability.png", "2.risk_coverage.png"):
        assert (wd / "eval" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (wd / "eval" / "2.md").read_text()
    assert "Sample generations" in md and "2.reliability.png" in md
    events = list((wd / "tb" / "eval").glob("events.out.tfevents.*"))
    assert events, "no TensorBoard events under tb/eval"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(wd / "tb" / "eval"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "eval/hitl_accuracy" in tags and "eval/gates/governance_score_passed" in tags
    assert acc.Scalars("eval/hitl_accuracy")[-1].value == pytest.approx(res["hitl_accuracy"], abs=1e-6)


def test_figures_recompute_from_the_predictions_file(scored):
    wd, res = scored
    all_rows = read_rows(wd, 2)
    rows = [r for r in all_rows if r["split"] == "heldout"]
    p = np.array([r["hitl_prob"] for r in rows])
    y = np.array([r["hitl_label"] for r in rows])
    thr = res["hitl_escalation_threshold"]
    # By hand from the columns, with no code of the runner:
    assert np.mean((p >= thr) == y) == pytest.approx(res["hitl_accuracy"])
    conf, correct = np.maximum(p, 1 - p), (p >= 0.5) == y
    bins = np.clip(np.ceil(conf * 15).astype(int) - 1, 0, 14)
    ece = sum(abs(correct[bins == b].mean() - conf[bins == b].mean()) * (bins == b).sum()
              for b in range(15) if (bins == b).any()) / len(p)
    assert ece == pytest.approx(res["ece"], abs=1e-9)
    nll = sum(r["response_nll_sum"] for r in rows)
    tok = sum(r["response_tokens"] for r in rows)
    assert math.exp(nll / tok) == pytest.approx(res["perplexity"], rel=1e-9)
    # And every figure through the runner's single code path:
    flips = [r["flip_pad"] for r in rows if r["flip_pad"] is not None]
    flips += [r["flip_swap"] for r in rows if r["flip_swap"] is not None]
    assert np.mean(flips) == pytest.approx(res["hitl_flip_rate"])
    nats = sum(r["response_nll_sum"] for r in rows) / sum(r["response_bytes"] for r in rows)
    assert nats == pytest.approx(res["response_nats_per_byte"])
    manifest = json.loads((wd / "data" / "manifest.json").read_text())
    again = scoring.metrics_from_rows(all_rows, scoring.manifest_figures(manifest),
                                      predict.generations_from_rows(all_rows))
    for key in ISSUE_KEYS:
        assert again[key] == res[key], key


def test_generation_matches_the_forward_pass(scored):
    # The heads' verdict of generate() reads the same <assess> position as the batched forward.
    wd, _ = scored
    for r in read_rows(wd, 2):
        if "generation" in r:
            assert r["generation"]["hitl_prob"] == pytest.approx(r["hitl_prob"], abs=1e-4)
            assert C.leak_rate([r["generation"]["response"]], [r["generation"]["prompt"]])["count"] == 1


def test_data_without_the_new_splits_names_the_split_and_the_fix(trained, tmp_path, capsys):
    wd = tmp_path / "run"
    shutil.copytree(trained, wd)
    manifest = json.loads((wd / "data" / "manifest.json").read_text())
    del manifest["shards"]["shift_evidence"]
    (wd / "data" / "manifest.json").write_text(json.dumps(manifest))
    assert main([f"--workdir={wd}"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "no 'shift_evidence' split" in err and "python -m promethios_jax.data.generate --out=" in err


def test_step_option_and_unknown_step(trained, capsys):
    assert main([f"--workdir={trained}", "--step=1", f"--num_generate={NUM_GENERATE}"]) == 0
    assert json.loads((trained / "eval" / "1.json").read_text())["step"] == 1
    capsys.readouterr()
    assert main([f"--workdir={trained}", "--step=7"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "step 7" in err and "[1, 2]" in err


def test_fail_on_gates_sets_the_exit_code(trained, capsys):
    rc = main([f"--workdir={trained}", "--step=1", f"--num_generate={NUM_GENERATE}", "--fail_on_gates"])
    res = json.loads((trained / "eval" / "1.json").read_text())
    failed = [k for k, g in res["gates"].items() if not g["passed"]]
    assert failed  # a 2-step model does not pass the quality gates
    assert rc == EXIT_GATES_FAILED
    assert "quality gates failed" in capsys.readouterr().out


def test_no_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main([f"--workdir={tmp_path}"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "no checkpoint" in err and str(tmp_path) in err
    assert not (tmp_path / "tb").exists()  # nothing scored, nothing written


def test_cli_without_checkpoint_exits_2_quickly(tmp_path):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "eval", f"--workdir={tmp_path}"], cwd=repo, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == EXIT_BAD_INPUT
    assert "no checkpoint" in r.stderr and "--watch" in r.stderr
    assert time.time() - t0 < 30


def test_shapes_that_do_not_fit_are_named_tensor_by_tensor(trained, tmp_path, capsys):
    wd = tmp_path / "bad"
    (wd / "checkpoints").mkdir(parents=True)
    shutil.copytree(trained / "checkpoints" / "2", wd / "checkpoints" / "2")
    meta = wd / "checkpoints" / "2" / "config" / "metadata"
    cfg = json.loads(meta.read_text())
    cfg["model"]["d_ff"] = 96  # the saved MLP kernels are 128 wide
    meta.write_text(json.dumps(cfg))
    assert main([f"--workdir={wd}"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "does not fit" in err
    # every MLP kernel of the stacked layers is named with both shapes
    for proj in ("gate_proj", "up_proj", "down_proj"):
        assert f"mlp/{proj}/kernel" in err, proj
    assert "(1, 64, 128)" in err and "(1, 64, 96)" in err


def test_watch_waits_for_checkpoints_and_stops_when_training_is_done(trained, tmp_path):
    wd = tmp_path / "live"
    wd.mkdir()
    shutil.copytree(trained / "data", wd / "data")
    logs = []

    def trainer():  # lands checkpoints the way Orbax does: whole directories, renamed into place
        time.sleep(1.0)
        (wd / "checkpoints").mkdir()
        for step in (1, 2):
            tmp = wd / "checkpoints" / f"{step}.orbax-checkpoint-tmp"
            shutil.copytree(trained / "checkpoints" / str(step), tmp)
            tmp.rename(wd / "checkpoints" / str(step))
            time.sleep(0.5)
        (wd / "TRAINING_DONE").write_text(json.dumps({"step": 2}))

    t = threading.Thread(target=trainer)
    t.start()
    try:
        results = runner.watch(wd, poll_seconds=0.2, max_wait_seconds=120, log=logs.append,
                               num_generate=NUM_GENERATE)
    finally:
        t.join()
    assert any("waiting" in line for line in logs)
    assert sorted(r["step"] for r in results) == [1, 2]
    assert (wd / "eval" / "1.json").exists() and (wd / "eval" / "2.json").exists()
    # A second watcher finds everything scored and stops at once.
    assert runner.watch(wd, poll_seconds=0.2, max_wait_seconds=5, log=logs.append) == []


def test_every_registry_head_reaches_the_rows_the_json_and_the_generations(scored):
    from promethios_jax.model import heads

    wd, res = scored
    rows = read_rows(wd, 2)
    gens = [r["generation"] for r in rows if "generation" in r]
    assert gens
    for h in heads.HEADS:
        assert f"{h.name}_label" in rows[0] and f"{h.name}_{'prob' if h.kind == 'binary' else 'pred'}" in rows[0]
        figure = {"binary": f"{h.name}_accuracy", "softmax": f"{h.name}_accuracy",
                  "soft_multilabel": f"{h.name}_macro_f1"}[h.kind]
        assert figure in res, (h.name, figure)
        assert any(k == h.name or k.startswith(f"{h.name}_") for k in gens[0]["verdict"]), h.name
