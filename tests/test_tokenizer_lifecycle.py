"""A tokenizer trained on the data on first use ("sentencepiece:N", the demo's): trained
once, kept with the data and in every checkpoint, and refused with a clear error when a
checkpoint's copy is missing, corrupt, or does not fit the model's vocabulary."""
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from promethios_jax import config as config_lib
from promethios_jax import workdir as workdir_lib
from promethios_jax.data import tokenizer as tok_lib
from promethios_jax.data.records import load_split
from promethios_jax.workdir import WorkdirError
from tests.util import small_config

pytest.importorskip("sentencepiece")
PIECES = 640


def spm_config():
    c = small_config()
    c.data.tokenizer = f"sentencepiece:{PIECES}"
    c.model.vocab_size = PIECES
    c.train.update(steps=2)
    c.checkpoint.update(every_steps=2)
    return c


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def copy_run(run, tmp_path) -> Path:
    """The run's checkpoints elsewhere, as if its data directory had been moved away."""
    wd = tmp_path / "run"
    shutil.copytree(run / "checkpoints", wd / "checkpoints")
    for step in workdir_lib.checkpoint_steps(wd):
        path = workdir_lib.step_dir(wd, step) / "tokenizer" / "metadata"
        record = json.loads(path.read_text())
        record["path"] = str(tmp_path / "moved-away" / Path(record["path"]).name)
        path.write_text(json.dumps(record))
    return wd


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One 2-step run that generates its data and trains the tokenizer on first use."""
    from promethios_jax import train

    wd = tmp_path_factory.mktemp("spm") / "run"
    train.train(spm_config(), str(wd))
    return wd


def test_trained_on_first_use_and_kept_with_the_data(run, capsys):
    from promethios_jax import train

    model = run / "data" / "tokenizer" / f"sentencepiece-{PIECES}.model"
    assert model.is_file()
    tok = tok_lib.build_tokenizer(spm_config(), run / "data")
    assert tok.name == "sentencepiece" and tok.vocab_size == PIECES
    # Subword pieces: a response takes far fewer ids than its bytes.
    rec = load_split(str(run / "data"), "train")[0]
    assert len(tok.encode(rec["response"])) < 0.6 * len(rec["response"].encode())
    # A second run on the same data reuses it.
    before = (model.stat().st_mtime_ns, sha(model))
    train.prepare_data(spm_config(), run)
    assert (model.stat().st_mtime_ns, sha(model)) == before
    assert "SentencePiece tokenizer" not in capsys.readouterr().out


def test_each_checkpoint_stores_the_tokenizer(run, tmp_path):
    model = run / "data" / "tokenizer" / f"sentencepiece-{PIECES}.model"
    for step in workdir_lib.checkpoint_steps(run):
        record = workdir_lib.saved_tokenizer(run, step)
        assert record["spec"] == f"sentencepiece:{PIECES}" and record["vocab_size"] == PIECES
        assert [f["sha256"] for f in record["files"].values()] == [sha(model)]
    config, _ = workdir_lib.read_config(run)
    assert Path(config.data.tokenizer) == model  # the original, unchanged: used in place

    # Without the data directory, the checkpoint's own copy gives the same ids.
    moved = copy_run(run, tmp_path)
    config, _ = workdir_lib.read_config(moved)
    copy = Path(config.data.tokenizer)
    assert copy.parent.parent == moved / "tokenizer" and sha(copy) == sha(model)
    text = load_split(str(run / "data"), "heldout")[0]["prompt"]
    orig = tok_lib.build_tokenizer(spm_config(), run / "data")
    np.testing.assert_array_equal(tok_lib.build_tokenizer(config).encode_array(text), orig.encode_array(text))


def test_eval_model_loads_from_the_checkpoint_alone(run, tmp_path):
    from promethios_jax import checkpoint as ckpt

    model, config = ckpt.load(copy_run(run, tmp_path))
    assert tok_lib.build_tokenizer(config).vocab_size == PIECES
    assert model.spec.vocab_size == PIECES


def test_missing_tokenizer_is_refused(run, tmp_path):
    wd = copy_run(run, tmp_path)
    step = workdir_lib.checkpoint_steps(wd)[-1]
    shutil.rmtree(workdir_lib.step_dir(wd, step) / "tokenizer")
    with pytest.raises(WorkdirError, match=rf"step {step} holds no tokenizer .*sentencepiece:{PIECES}"):
        workdir_lib.read_config(wd)


def edit_newest(wd, item: str, change) -> None:
    """Applies `change` to the JSON of the newest checkpoint's `item`."""
    path = workdir_lib.step_dir(wd, workdir_lib.checkpoint_steps(wd)[-1]) / item / "metadata"
    saved = json.loads(path.read_text())
    change(saved)
    path.write_text(json.dumps(saved))


def test_tokenizer_larger_than_the_model_vocabulary_is_refused(run, tmp_path):
    wd = copy_run(run, tmp_path)
    edit_newest(wd, "config", lambda saved: saved["model"].update(vocab_size=512))
    with pytest.raises(WorkdirError, match=rf"{PIECES} ids\) does not match config.model.vocab_size=512"):
        workdir_lib.read_config(wd)


def test_corrupt_tokenizer_copy_is_refused(run, tmp_path):
    wd = copy_run(run, tmp_path)

    def garble(record):
        for f in record["files"].values():
            f["data"] = f["data"][:-8] + "AAAAAAA="

    edit_newest(wd, "tokenizer", garble)
    with pytest.raises(WorkdirError, match="corrupt"):
        workdir_lib.read_config(wd)


def test_resume_with_another_tokenizer_is_refused(run, tmp_path):
    from promethios_jax import train

    wd = copy_run(run, tmp_path)
    cfg = spm_config()
    cfg.data.path = str(run / "data")
    cfg.data.tokenizer = "byte"
    cfg.train.steps = 6
    with pytest.raises(WorkdirError, match="trained with the tokenizer .* resuming would change"):
        train.train(cfg, str(wd))


def test_unresolved_and_bad_specs():
    cfg = spm_config()
    with pytest.raises(tok_lib.TokenizerError, match="no data directory was given"):
        tok_lib.build_tokenizer(cfg)
    cfg.data.tokenizer = "sentencepiece:4000"
    with pytest.raises(config_lib.ConfigError, match=r"trains 4000 pieces but config.model.vocab_size=640"):
        config_lib.validate(cfg)
    cfg.data.tokenizer = "sentencepiece:lots"
    with pytest.raises(config_lib.ConfigError, match="give the number of pieces"):
        config_lib.validate(cfg)


def test_not_yet_trained_names_the_command(tmp_path):
    from promethios_jax.data import generate

    generate.generate_dataset(str(tmp_path), 200, 0, 0.05)
    with pytest.raises(tok_lib.TokenizerError, match="training makes it on first use"):
        tok_lib.build_tokenizer(spm_config(), tmp_path)
