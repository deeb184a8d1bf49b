"""The Grain pipeline: packing isolation, labels, exact resume on any process count, errors."""
import shutil

import numpy as np
import pytest

from promethios_jax.config import base_config
from promethios_jax.data import generate, packing, pipeline, schema, tokenizer
from promethios_jax.data.batch import NAMES as KEYS
from promethios_jax.data.records import DataError, load_split


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("gov")
    generate.generate_dataset(str(d), 300, seed=0, heldout_fraction=0.05, eval_examples=15)
    return str(d)


def config(max_len=512, batch=8, segments=8):
    c = base_config()
    c.model.max_seq_len = max_len
    c.train.global_batch_size = batch
    c.data.max_segments_per_row = segments
    return c


def take(it, n):
    return [next(it) for _ in range(n)]


def check_row(row: dict, recs: list, tok, max_len: int):
    """Every segment is its example alone: ids, positions, targets, mask, telemetry and labels."""
    seg = row["segment_ids"]
    k = int(row["head_mask"].sum())
    assert len(recs) == k and (row["head_mask"][:k] == 1).all() and (row["head_mask"][k:] == 0).all()
    used = int((seg > 0).sum())
    assert (seg[:used] > 0).all() and (seg[used:] == 0).all()  # padding only at the end
    assert (row["tokens"][used:] == 0).all() and (row["loss_mask"][used:] == 0).all()
    assert (row["telemetry"][used:] == 0).all()
    for s, rec in enumerate(recs):
        idx = np.flatnonzero(seg == s + 1)
        start, end = idx[0], idx[-1] + 1
        assert len(idx) == end - start  # contiguous
        p, r = packing.encode_fitted(rec, tok, max_len)
        n_p = len(p)
        np.testing.assert_array_equal(row["tokens"][start:end], np.concatenate([p, r]))
        np.testing.assert_array_equal(row["positions"][start:end], np.arange(end - start))
        np.testing.assert_array_equal(row["targets"][start:end - 1], row["tokens"][start + 1:end])
        assert row["targets"][end - 1] == 0 and row["loss_mask"][end - 1] == 0  # nothing crosses the boundary
        mask = row["loss_mask"][start:end]
        assert mask[:n_p - 1].sum() == 0 and (mask[n_p - 1:end - start - 1] == 1).all()
        assert mask.sum() == len(r)  # the response tokens, <eos> included, and nothing else
        hp = row["head_positions"][s]
        assert hp == start + n_p - 1 and row["tokens"][hp] == tok.assess_id
        vec = schema.telemetry_vector(rec["telemetry"], rec["domain"])
        assert np.allclose(row["telemetry"][start:end], vec)
        lab = rec["labels"]
        assert row["hitl"][s] == lab["hitl"]
        assert schema.DECISIONS[row["decision"][s]] == lab["decision"]
        assert schema.CONFIDENCE_BANDS[row["confidence"][s]] == lab["confidence"]
        assert schema.TOOLS[row["tool"][s]] == lab["tool"]
        assert schema.CONFLICTS[row["conflict"][s]] == lab["conflict"]
        assert np.allclose(row["uncertainty"][s], [lab["uncertainty"][d] for d in schema.UNCERTAINTY_DIMS])
        assert np.allclose(row["bias"][s], [lab["bias"][d] for d in schema.BIAS_CATEGORIES])
    # The attention mask the model builds from segment ids is block-diagonal over examples.
    allowed = (seg[:, None] == seg[None, :]) & (seg[:, None] > 0) & np.tri(len(seg), dtype=bool)
    for s in range(1, k + 1):
        inside = seg == s
        assert not allowed[np.ix_(inside, ~inside)].any()


@pytest.mark.parametrize("max_len", [512, 1024])
def test_packing_isolates_examples_and_labels_travel(data_dir, max_len):
    c = config(max_len=max_len)
    lengths, _ = pipeline.fitted_lengths(data_dir, c)
    rows = pipeline.PackedRows(data_dir, c, lengths)
    train = load_split(data_dir, "train")
    tok = tokenizer.build_tokenizer(c)
    multi = 0
    for g in range(0, 60):
        members = rows.examples(g)
        check_row(rows(g), [train[i] for i in members], tok, max_len)
        multi += len(members) > 1
    assert multi > 10  # packing happens


def test_iterator_rows_are_the_plan_rows(data_dir):
    c = config()
    lengths, _ = pipeline.fitted_lengths(data_dir, c)
    rows = pipeline.PackedRows(data_dir, c, lengths)
    it = pipeline.make_train_iterator(c, data_dir)
    for b in range(3):
        batch = next(it)
        for r in range(8):
            want = rows(b * 8 + r)
            for k in KEYS:
                np.testing.assert_array_equal(batch[k][r], want[k], err_msg=k)


def test_every_example_once_per_epoch(data_dir):
    c = config(max_len=1024)
    lengths, stats = pipeline.fitted_lengths(data_dir, c)
    assert stats["skipped"] == 0 and stats["truncated"] == 0
    m0, s0 = packing.pack_plan(lengths, 0, 0, 1024, 8)
    m1, _ = packing.pack_plan(lengths, 0, 1, 1024, 8)
    assert sorted(m0.tolist()) == list(range(len(lengths))) == sorted(m1.tolist())
    assert m0.tolist() != m1.tolist()  # reshuffled per epoch
    fill = np.add.reduceat(lengths[m0], s0[:-1])
    assert fill.max() <= 1024 and np.diff(s0).max() <= 8
    assert fill.sum() / (1024 * (len(s0) - 1)) > 0.85  # packing efficiency


def test_resume_on_any_process_count(data_dir):
    c = config()
    rows = pipeline.PackedRows(data_dir, c, pipeline.fitted_lengths(data_dir, c)[0])
    epoch_batches = 0
    while rows.locate(epoch_batches * 8)[0] == 0:
        epoch_batches += 1
    k = epoch_batches - 1  # the batches below cross into the second epoch
    one = take(pipeline.make_train_iterator(c, data_dir, 0, 1, start_batch=k), 3)
    from_zero = take(pipeline.make_train_iterator(c, data_dir, 0, 1), k + 3)[k:]
    for procs in (2, 4):
        parts = [take(pipeline.make_train_iterator(c, data_dir, p, procs, start_batch=k), 3) for p in range(procs)]
        for i in range(3):
            for key in KEYS:
                glued = np.concatenate([parts[p][i][key] for p in range(procs)])
                np.testing.assert_array_equal(glued, one[i][key], err_msg=f"{procs} processes, {key}")
                np.testing.assert_array_equal(from_zero[i][key], one[i][key])


def test_state_round_trip(data_dir):
    c = config()
    it = pipeline.make_train_iterator(c, data_dir)
    take(it, 2)
    state = it.get_state()
    assert state["batches_consumed"] == 2 and state["global_batch_size"] == 8 and it.batches_consumed == 2
    expect = take(it, 2)
    other = pipeline.make_train_iterator(c, data_dir)
    other.set_state(state)
    got = take(other, 2)
    assert other.batches_consumed == 4
    for a, b in zip(expect, got):
        np.testing.assert_array_equal(a["tokens"], b["tokens"])
    # Half the global batch: 16 rows consumed = batch 4 of 4 rows, the same next rows.
    half = pipeline.make_train_iterator(config(batch=4), data_dir)
    half.set_state(state, where="checkpoint step 2")
    assert half.batches_consumed == 4
    got = take(half, 2)
    np.testing.assert_array_equal(np.concatenate([g["tokens"] for g in got]), expect[0]["tokens"])
    with pytest.raises(DataError, match="checkpoint step 2: .*global_batch_size=3 does not divide 16"):
        pipeline.make_train_iterator(config(batch=3), data_dir).set_state(state, where="checkpoint step 2")


def test_worker_processes_give_the_same_batches(data_dir):
    c = config()
    c.data.worker_count = 1
    it = pipeline.make_train_iterator(c, data_dir, start_batch=1)
    got = take(it, 2)
    it.close()
    c.data.worker_count = 0
    want = take(pipeline.make_train_iterator(c, data_dir, start_batch=1), 2)
    for a, b in zip(want, got):
        for k in KEYS:
            np.testing.assert_array_equal(a[k], b[k])


def test_long_examples_lose_only_their_response_tail(data_dir, caplog):
    c = config(max_len=192, batch=4, segments=2)
    it = pipeline.make_train_iterator(c, data_dir)
    tok = tokenizer.build_tokenizer(c)
    train = load_split(data_dir, "train")
    full = [tokenizer.encode_example_arrays(r, tok) for r in train]
    too_long = sum(len(p) >= 192 for p, _ in full)
    cut = sum(len(p) < 192 < len(p) + len(r) for p, r in full)
    assert cut > 0 and "lose the tail of their response" in caplog.text
    assert it.stats["truncated"] == cut and it.stats["skipped"] == too_long
    for b in take(it, 3):
        for row in range(4):
            for s in range(int(b["head_mask"][row].sum())):
                hp = b["head_positions"][row, s]
                start = hp - b["positions"][row, hp]
                end = start + int((b["segment_ids"][row] == b["segment_ids"][row, hp]).sum())
                tokens = b["tokens"][row, start:end]
                match = [i for i, (p, r) in enumerate(full) if len(p) == hp - start + 1
                         and np.array_equal(p, tokens[:len(p)]) and np.array_equal(r[:end - start - len(p)],
                                                                                    tokens[len(p):])]
                assert match, "a packed example is not a whole prompt followed by its response's head"
                assert b["loss_mask"][row, hp] == 1  # a response token follows
    with pytest.raises(DataError, match="max_seq_len=8"):
        pipeline.make_train_iterator(config(max_len=8), data_dir)


@pytest.mark.parametrize("max_len", [384, 768])  # 384: every byte-token prompt fits, some responses do not
def test_fitted_prompt_is_the_generation_prompt(data_dir, max_len):
    """No leak from the response into the question: for held-out records the prompt the
    heads are trained and scored on is, token for token, the prompt generation builds."""
    c = config(max_len=max_len)
    tok = tokenizer.build_tokenizer(c)
    for split in generate.EVAL_SPLITS:
        held = {r["id"]: r for r in load_split(data_dir, split)}
        fitted = []
        for b in pipeline.eval_batches(c, data_dir, split, batch_size=8):
            for row in range(b["num_valid"]):
                want, response = tokenizer.encode_example(held[b["ids"][row]], tok)
                n = b["prompt_lengths"][row]
                assert b["tokens"][row, :n].tolist() == want, (split, b["ids"][row])
                got = b["tokens"][row, n:][b["segment_ids"][row, n:] > 0].tolist()
                assert got == response[:len(got)] and len(got) == min(len(response), max_len - n)
                fitted.append(len(got) < len(response))
        if max_len == 384:
            assert any(fitted), "no response was cut: the test does not exercise truncation"
        rows = packing.encode_fitted(next(iter(held.values())), tok, max_len)  # the training path
        assert rows[0].tolist() == tokenizer.encode_example(next(iter(held.values())), tok)[0]


def test_eval_refuses_a_prompt_that_does_not_fit(data_dir):
    with pytest.raises(DataError, match="prompt and one response token do not fit"):
        next(pipeline.eval_batches(config(max_len=64), data_dir, "heldout", batch_size=4))


def test_eval_batches(data_dir):
    c = config()
    held = load_split(data_dir, "heldout")
    batches = list(pipeline.eval_batches(c, data_dir, "heldout", batch_size=4))
    assert sum(b["num_valid"] for b in batches) == len(held) == 15
    assert [i for b in batches for i in b["ids"]] == [r["id"] for r in held]
    tok = tokenizer.build_tokenizer(c)
    last = batches[-1]
    assert last["num_valid"] == 3 and last["head_mask"][3, 0] == 0 and (last["tokens"][3] == 0).all()
    for b in batches:
        assert b["tokens"].shape == (4, 512) and b["hitl"].shape == (4, 1) and b["bias"].shape == (4, 1, 6)
        for r in range(b["num_valid"]):
            rec = held[[x["id"] for x in held].index(b["ids"][r])]
            check_row({k: b[k][r] for k in KEYS}, [rec], tok, 512)
            assert b["prompt_lengths"][r] == b["head_positions"][r, 0] + 1


def test_bad_process_arguments(data_dir):
    with pytest.raises(DataError, match="global_batch_size"):
        pipeline.make_train_iterator(config(batch=6), data_dir, 0, 4)
    with pytest.raises(DataError, match="process_index"):
        pipeline.make_train_iterator(config(), data_dir, 2, 2)


def test_missing_and_corrupt_shards_are_named(data_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(data_dir, bad)
    pipeline.make_train_iterator(config(), str(bad))  # caches token lengths: later reads are lazy
    shard = bad / "train-00000-of-00001.array_record"
    raw = bytearray(shard.read_bytes())
    mid = len(raw) // 3
    raw[mid:mid + 64] = b"\xff" * 64
    shard.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=rf"{shard}: record \d+"):
        load_split(str(bad), "train")
    it = pipeline.make_train_iterator(config(), str(bad))
    with pytest.raises(DataError, match=rf"{shard}: record \d+"):
        take(it, 100)  # the epoch reaches the corrupt record; Grain passes the error on
    for cache in bad.glob("lengths-*.npy"):
        cache.unlink()
    with pytest.raises(DataError, match=rf"{shard}: record \d+"):
        pipeline.make_train_iterator(config(), str(bad))
    shard.write_bytes(bytes(raw[:1000]))  # truncated file
    with pytest.raises(DataError, match=str(shard)):
        load_split(str(bad), "train")
    shard.unlink()
    with pytest.raises(DataError, match=f"{shard}.*missing"):
        pipeline.make_train_iterator(config(), str(bad))
    (bad / "manifest.json").unlink()
    with pytest.raises(DataError, match="manifest"):
        load_split(str(bad), "heldout")


def test_token_lengths_are_cached_and_invalidated(tmp_path):
    d = tmp_path / "d"
    generate.generate_dataset(str(d), 60, seed=0)
    c = config()
    first, _ = pipeline.fitted_lengths(str(d), c)
    caches = list(d.glob("lengths-train-*.npy"))
    assert len(caches) == 1
    again, _ = pipeline.fitted_lengths(str(d), c)
    np.testing.assert_array_equal(first, again)
    generate.generate_dataset(str(d), 60, seed=1)  # new data: a new cache, and the old one goes
    assert not np.array_equal(pipeline.fitted_lengths(str(d), c)[0], first)
    assert not any(p.exists() for p in caches) and len(list(d.glob("lengths-train-*.npy"))) == 1
