"""The data position: what a checkpoint stores, and exact resume across batch sizes."""
import pytest

from promethios_jax.config import base_config
from promethios_jax.data import position
from promethios_jax.data.records import DataError


def test_position_state_holds_the_count_its_unit_and_the_stream():
    cfg = base_config()
    cfg.train.global_batch_size = 8
    state = position.position_state(6, cfg, process_count=2)
    assert state == {"batches_consumed": 6, "global_batch_size": 8, "rows_consumed": 48, "process_count": 2,
                     "iterator": {"batches_consumed": 6},
                     "stream": {"model.max_seq_len": 512, "data.max_segments_per_row": 8,
                                "data.shuffle_seed": 0, "data.tokenizer": "byte"}}
    assert set(state["stream"]) == {f"{s}.{k}" for s, k in position.STREAM_KEYS}


def test_resume_converts_batch_sizes_exactly_or_refuses(capsys):
    cfg = base_config()
    cfg.train.global_batch_size = 8
    saved = {"batches_consumed": 6, "global_batch_size": 8}
    assert position.resume_batch(saved, cfg) == 6
    cfg.train.global_batch_size = 4
    assert position.resume_batch(saved, cfg) == 12  # 48 rows
    assert "global_batch_size changed 8 -> 4" in capsys.readouterr().out
    cfg.train.global_batch_size = 16
    assert position.resume_batch(saved, cfg, announce=False) == 3
    assert capsys.readouterr().out == ""
    cfg.train.global_batch_size = 32
    with pytest.raises(DataError, match=r"checkpoint step 6: .*48 rows.*global_batch_size=32 does not divide 48"):
        position.resume_batch(saved, cfg, "checkpoint step 6")
    # An older record without the batch size counts in the configured one.
    assert position.resume_batch({"batches_consumed": 5}, cfg) == 5
    with pytest.raises(DataError, match="no batches_consumed"):
        position.resume_batch({"rows": 5}, cfg)
    # A changed data order is said out loud.
    cfg.train.global_batch_size = 8
    capsys.readouterr()
    moved = dict(saved, stream={"model.max_seq_len": 256, "data.max_segments_per_row": 8,
                                "data.shuffle_seed": 0, "data.tokenizer": "byte"})
    assert position.resume_batch(moved, cfg, "checkpoint step 6") == 6
    assert "the data order changed since it was saved (model.max_seq_len 256 -> 512)" in capsys.readouterr().err
