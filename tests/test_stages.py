"""Stage lists, epochs -> steps, step -> stage, schedules and data mixes."""
import numpy as np
import optax
import pytest

from promethios_jax import stages
from promethios_jax.config import base_config
from promethios_jax.data import generate, pipeline, schema
from promethios_jax.data.mix import mix_epoch
from promethios_jax.data.records import DataError
from promethios_jax.stages import StageError
from tests.util import small_config

SIX = [
    {"name": "foundation", "epochs": 1, "trains": "all"},
    {"name": "governance injection", "steps": 20, "trains": "governance", "learning_rate": 1e-4,
     "loss": {"lm": 0.2, "hitl": 2.0}},
    {"name": "trust calibration", "steps": 10, "data_mix": {"trust_management": 2, "constitutional": 1},
     "schedule": "constant"},
    {"name": "evaluation", "evaluate": True},
]


def test_parse_a_stage_list_with_defaults_from_config_train():
    c = base_config()
    s = stages.parse_stages(_with_stages(c, SIX))
    assert [x.name for x in s] == ["foundation", "governance injection", "trust calibration", "evaluation"]
    assert s[0].epochs == 1.0 and s[0].steps is None and s[0].learning_rate == c.train.learning_rate
    assert s[0].schedule == "cosine" and s[0].trains == "all" and s[0].data_mix == ()
    assert s[1].learning_rate == 1e-4 and dict(s[1].loss) == {"lm": 0.2, "hitl": 2.0}
    assert dict(s[2].data_mix)["trust_management"] == 2.0 and dict(s[2].data_mix)["operational"] == 0.0
    assert s[3].evaluate and s[3].steps is None
    sc = stages.stage_config(c, s[1], 1)
    assert sc.loss.lm == 0.2 and sc.loss.hitl == 2.0 and sc.loss.decision == c.loss.decision
    assert sc.train.learning_rate == 1e-4 and sc.train.trainable == "governance"
    assert sc.data.shuffle_seed == c.data.shuffle_seed + 1 and c.loss.lm == 1.0  # the run's config is untouched


def _with_stages(c, stage_list):
    c = c.copy_and_resolve_references()
    c.stages = tuple(stage_list)
    return c


def test_without_stages_the_run_is_one_stage_from_config_train():
    c = base_config()
    (s,) = stages.parse_stages(c)
    assert (s.name, s.steps, s.epochs) == ("train", c.train.steps, None)
    c.train.epochs = 2.5
    (s,) = stages.parse_stages(c)
    assert (s.steps, s.epochs) == (None, 2.5)


@pytest.mark.parametrize("stage, match", [
    ({"name": "a", "steps": 3, "lerning_rate": 1e-3}, r"config.stages\[0\] \('a'\): unknown key 'lerning_rate'"),
    ({"name": "a", "steps": 3, "epochs": 1}, "not both"),
    ({"name": "a"}, "needs 'steps' or 'epochs'"),
    ({"steps": 3}, "non-empty 'name'"),
    ({"name": "a", "steps": 0}, "positive integer"),
    ({"name": "a", "epochs": -1}, "positive number"),
    ({"name": "a", "steps": 3, "schedule": "step"}, "schedule='step'"),
    ({"name": "a", "steps": 3, "loss": {"hitl_loss": 1.0}}, "unknown part 'hitl_loss'"),
    ({"name": "a", "steps": 3, "data_mix": {"saas": 1.0}}, "unknown category 'saas'"),
    ({"name": "a", "steps": 3, "data_mix": {"operational": 0.0}}, "positive sum"),
    ({"name": "a", "steps": 3, "trains": "heads+backbon"}, "unknown part 'backbon'"),
    ({"name": "a", "evaluate": True, "steps": 4}, "does not train"),
])
def test_bad_stage_lists_are_refused_by_name(stage, match):
    with pytest.raises(StageError, match=match):
        stages.parse_stages(_with_stages(base_config(), [stage]))


def test_duplicate_names_and_no_training_stage():
    with pytest.raises(StageError, match="'a' is used twice"):
        stages.parse_stages(_with_stages(base_config(), [{"name": "a", "steps": 1}, {"name": "a", "steps": 2}]))
    with pytest.raises(StageError, match="no stage trains"):
        stages.parse_stages(_with_stages(base_config(), [{"name": "e", "evaluate": True}]))


def test_steps_for_epochs_counts_packed_rows_exactly():
    rows = [100, 102, 99]
    assert stages.steps_for_epochs(1, rows, 8) == 13  # ceil(100 / 8)
    assert stages.steps_for_epochs(2, rows, 8) == 26  # ceil(202 / 8)
    assert stages.steps_for_epochs(1.5, rows, 8) == 19  # ceil(151 / 8)
    assert stages.steps_for_epochs(0.08, rows, 8) == 1  # 8 rows exactly, no float overshoot
    assert stages.steps_for_epochs(0.16, rows, 8) == 2
    with pytest.raises(StageError, match="need the row counts of 4 epochs"):
        stages.steps_for_epochs(3.5, rows, 8)
    with pytest.raises(StageError, match="must be positive"):
        stages.steps_for_epochs(0, rows, 8)


def test_one_epoch_of_steps_covers_the_pipeline_epoch(tmp_path):
    c = small_config()
    c.data.num_examples = 120
    generate.generate_dataset(str(tmp_path), 120, 0, 0.05)
    lengths, _ = pipeline.fitted_lengths(str(tmp_path), c)
    packed = pipeline.PackedRows(str(tmp_path), c, lengths)
    rows = stages.epoch_rows(packed, 2)
    g = c.train.global_batch_size
    steps = stages.steps_for_epochs(1, rows, g)
    # The last row of the derived steps is past (or at the end of) epoch 0; one step fewer is not.
    assert packed.locate(steps * g - 1) >= (0, rows[0] - 1)
    assert packed.locate((steps - 1) * g - 1)[0] == 0 and packed.locate((steps - 1) * g - 1)[1] < rows[0] - 1
    two = stages.steps_for_epochs(2, rows, g)
    assert packed.locate(two * g - 1)[0] >= 1 and packed.locate((two - 1) * g)[0] == 1


def test_locate_maps_a_step_to_its_stage():
    steps = [3, 0, 5, 2]
    assert stages.boundaries(steps) == [3, 3, 8, 10]
    assert [stages.locate(s, steps) for s in range(11)] == [
        (0, 0), (0, 1), (0, 2), (2, 0), (2, 1), (2, 2), (2, 3), (2, 4), (3, 0), (3, 1), (4, 0)]
    assert [stages.stage_of_state(s, steps) for s in (0, 1, 3, 4, 8, 9, 10)] == [0, 0, 0, 2, 2, 3, 3]
    assert stages.stage_of_state(0, [0, 4]) == 1
    assert stages.resolve_steps(stages.parse_stages(_with_stages(base_config(), SIX)), 8,
                                lambda i, s, n: [40] * n) == [5, 20, 10, 0]


def test_schedules():
    cos = stages.make_schedule("cosine", 1e-3, 10, 100, 0.1)
    ref = optax.warmup_cosine_decay_schedule(0.0, 1e-3, 10, 100, 1e-4)
    for s in (0, 5, 10, 50, 99, 100):
        assert float(cos(s)) == pytest.approx(float(ref(s)))
    lin = stages.make_schedule("linear", 1e-3, 10, 100, 0.1)
    assert float(lin(0)) == 0.0 and float(lin(10)) == pytest.approx(1e-3) and float(lin(100)) == pytest.approx(1e-4)
    const = stages.make_schedule("constant", 1e-3, 10, 100, 0.1)
    assert float(const(5)) == pytest.approx(5e-4) and float(const(99)) == pytest.approx(1e-3)


def test_mix_epoch_draws_the_asked_shares():
    rng = np.random.default_rng(0)
    cats = np.array(schema.CATEGORIES)[rng.integers(0, len(schema.CATEGORIES), 700)]
    mix = tuple((c, {"trust_management": 3.0, "constitutional": 1.0}.get(c, 0.0)) for c in schema.CATEGORIES)
    idx = mix_epoch(cats, mix, seed=0, epoch=0)
    assert len(idx) == 700
    picked = cats[idx]
    assert set(picked) == {"trust_management", "constitutional"}
    assert (picked == "trust_management").sum() == 525 and (picked == "constitutional").sum() == 175
    tm = np.flatnonzero(cats == "trust_management")  # 525 > its ~100 examples: each appears ~5 times
    counts = np.bincount(idx, minlength=700)[tm]
    assert counts.min() >= 525 // len(tm) and counts.max() <= -(-525 // len(tm))
    np.testing.assert_array_equal(idx, mix_epoch(cats, mix, seed=0, epoch=0))
    assert not np.array_equal(idx, mix_epoch(cats, mix, seed=0, epoch=1))
    with pytest.raises(DataError, match="does not hold"):
        mix_epoch(cats[cats != "constitutional"], mix, 0, 0)


def test_a_stage_mix_reaches_the_packed_rows(tmp_path):
    generate.generate_dataset(str(tmp_path), 140, 0, 0.05)
    c = small_config()
    stage = stages.parse_stages(_with_stages(c, [{"name": "trust", "steps": 2, "data_mix": {
        "trust_management": 3.0, "collaboration": 1.0}}]))[0]
    sc = stages.stage_config(c, stage, 0)
    lengths, _ = pipeline.fitted_lengths(str(tmp_path), sc)
    packed = pipeline.PackedRows(str(tmp_path), sc, lengths)
    cats = pipeline.example_categories(str(tmp_path))
    seen = np.concatenate([packed.examples(r) for r in range(packed.rows_in_epoch(0))])
    assert set(cats[seen]) == {"trust_management", "collaboration"}
    assert 2.5 < (cats[seen] == "trust_management").sum() / (cats[seen] == "collaboration").sum() < 3.5
    plain = pipeline.PackedRows(str(tmp_path), c, lengths)
    assert len(set(cats[np.concatenate([plain.examples(r) for r in range(plain.rows_in_epoch(0))])])) == 7


def test_plan_gives_each_stage_its_config_and_steps(tmp_path):
    generate.generate_dataset(str(tmp_path), 120, 0, 0.05)
    c = _with_stages(small_config(), [{"name": "a", "steps": 3}, {"name": "b", "epochs": 1, "trains": "heads"},
                                      {"name": "e", "evaluate": True}])
    with pytest.raises(StageError, match="'b' counts epochs"):
        stages.make_plan(c)
    lengths, _ = pipeline.fitted_lengths(str(tmp_path), c)
    plan = stages.make_plan(c, lengths, str(tmp_path))
    rows = pipeline.PackedRows(str(tmp_path), plan.configs[1], lengths).rows_in_epoch(0)
    assert plan.steps == (3, -(-rows // 8), 0) and plan.total_steps == 3 + plan.steps[1]
    assert [x.train.steps for x in plan.configs] == list(plan.steps)
    assert [x.train.stage_start for x in plan.configs] == [0, 3, plan.total_steps]
    assert plan.configs[1].train.trainable == "heads" and plan.locate(3) == (1, 0)
    single = stages.make_plan(small_config())
    assert single.steps == (6,) and single.configs[0].train.steps == 6
