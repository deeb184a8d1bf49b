"""Frozen parts, epochs and stages through the train loop: frozen parameters keep their
bits and hold no optimizer state; a staged run resumed mid-stage (and at a boundary)
equals an uninterrupted one; boundaries are checkpointed and marked in the logs."""
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

import promethios_jax
from promethios_jax import aot, sharding, stages, train
from promethios_jax import state as state_lib
from promethios_jax.data import generate, pipeline
from tests.util import small_config

STAGES = (
    {"name": "warm", "steps": 3, "learning_rate": 3e-3},
    {"name": "heads", "steps": 3, "trains": "heads+telemetry", "learning_rate": 1e-2, "schedule": "constant",
     "loss": {"lm": 0.0, "hitl": 2.0}, "data_mix": {"trust_management": 2.0, "constitutional": 1.0}},
    {"name": "eval", "evaluate": True},
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    generate.generate_dataset(str(d), 200, 0, 0.05)
    return str(d)


def _params(wd, step=None):
    model, _ = promethios_jax.load(wd, step=step)
    return nnx.to_pure_dict(nnx.split(model, nnx.Param)[1])


def _rows(wd):
    return [json.loads(line) for line in (Path(wd) / "metrics.jsonl").read_text().splitlines()]


def _staged(data_dir):
    c = small_config()
    c.data.path = data_dir
    c.checkpoint.every_steps = 100  # only the boundaries and the end
    c.stages = STAGES
    return c


def test_frozen_parameters_keep_their_bits_and_hold_no_optimizer_state(tmp_path, data_dir):
    c = small_config()
    c.data.path = data_dir
    c.train.steps = 3
    c.train.trainable = "heads"
    train.train(c, str(tmp_path))
    mesh = sharding.make_mesh(c)
    setup = state_lib.abstract_train_state(c, mesh)
    before, after = jax.device_get(jax.jit(setup.init)()["params"]), _params(tmp_path)
    changed = []
    for (path, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(before), jax.tree_util.tree_leaves_with_path(after)):
        key = jax.tree_util.keystr(path)
        if key.startswith("['heads']"):
            changed.append(not np.array_equal(a, b))
        else:
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), key
    assert any(changed)
    # The optimizer state holds moments for the heads only (the dry run reports its bytes).
    n_heads = sum(x.size for x in jax.tree.leaves(before["heads"]))
    moments = sum(x.size for x in jax.tree.leaves(setup.abstract["opt_state"]) if x.ndim > 0)
    assert moments == 2 * n_heads
    full = state_lib.abstract_train_state(small_config(), mesh)
    assert aot.optimizer_state_bytes_per_device(setup) < aot.optimizer_state_bytes_per_device(full) / 4


def test_epochs_set_the_step_count(tmp_path, data_dir):
    c = small_config()
    c.data.path = data_dir
    c.train.epochs = 0.5
    lengths, _ = pipeline.fitted_lengths(data_dir, c)
    rows = pipeline.PackedRows(data_dir, c, lengths).rows_in_epoch(0)
    steps = -(-rows // (2 * c.train.global_batch_size))
    plan = stages.make_plan(c, lengths, data_dir)
    assert plan.total_steps == steps and plan.configs[0].train.steps == steps


@pytest.mark.slow  # five runs through two stages
def test_a_staged_run_resumed_mid_stage_equals_an_uninterrupted_one(tmp_path, data_dir):
    c = _staged(data_dir)
    ref = tmp_path / "ref"
    train.train(c, str(ref))
    assert json.loads((ref / "TRAINING_DONE").read_text())["step"] == 6
    assert sorted(int(p.name) for p in (ref / "checkpoints").iterdir() if p.name.isdigit()) == [3, 6]
    events = [r for r in _rows(ref) if r.get("event") == "stage"]
    assert [(e["step"], e["name"]) for e in events] == [(0, "warm"), (3, "heads")]
    assert {r["step"]: r["train/stage"] for r in _rows(ref) if "train/stage" in r} == {
        1: 0, 2: 0, 3: 0, 4: 1, 5: 1, 6: 1}
    # Stage 2 trains heads and telemetry only: the backbone is as stage 1 left it.
    at3, end = _params(ref, 3), _params(ref)
    for k in ("embed_tokens", "layers_0", "norm"):
        for a, b in zip(jax.tree.leaves(at3[k]), jax.tree.leaves(end[k])):
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    assert not np.array_equal(at3["heads"]["hitl"]["fc2"]["kernel"], end["heads"]["hitl"]["fc2"]["kernel"])

    for stop in (4, 3):  # mid-stage, and exactly at the boundary
        wd = tmp_path / f"stopped_{stop}"
        train.train(c, str(wd), stop_after=stop)
        assert not (wd / "TRAINING_DONE").exists()
        train.train(c, str(wd))
        for a, b in zip(jax.tree.leaves(_params(wd)), jax.tree.leaves(end)):
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), stop
        losses = {r["step"]: r["loss"] for r in _rows(wd) if "loss" in r}
        assert losses == {r["step"]: r["loss"] for r in _rows(ref) if "loss" in r}


def test_stage_learning_rates_follow_their_schedules(tmp_path, data_dir):
    c = _staged(data_dir)
    plan = stages.make_plan(c)
    assert plan.steps == (3, 3, 0)
    mesh = sharding.make_mesh(c)
    second = state_lib.abstract_train_state(plan.configs[1], mesh)
    assert float(second.schedule(3)) == pytest.approx(0.0)  # warm-up from the stage's first step
    assert float(second.schedule(5)) == pytest.approx(1e-2)
    assert stages.parse_stages(c)[1].trains == "heads+telemetry"
