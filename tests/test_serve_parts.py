"""Serving parts without a model or a server: incremental detokenization, prompt buckets,
the escalation store's bound, and the load client's reading of a chunked SSE body."""
import json

import numpy as np

from promethios_jax.data.tokenizer import ByteTokenizer
from promethios_jax.serve import bench
from promethios_jax.serve.engine import Request, SamplingParams, buckets_for, detokenize
from promethios_jax.serve.records import EscalationStore


def test_incremental_detokenization_equals_the_whole_decode_and_never_splits_a_character():
    tok = ByteTokenizer()
    text = "héllo ☃ wörld, 😀 done"
    ids = list(tok.encode(text))
    assert len(ids) > len(text)  # multi-byte characters span several tokens
    req = Request("r", [], np.zeros(1, np.float32), SamplingParams(max_tokens=len(ids)))
    for i in ids:
        req.output_ids.append(int(i))
        detokenize(tok, req)
        assert "\ufffd" not in req.text and text.startswith(req.text)
    assert req.text == text == tok.decode(ids)


def test_buckets_step_by_half_powers_of_two():
    assert buckets_for(256) == (32, 48, 64, 96, 128, 192, 256)
    assert buckets_for(1024) == (32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
    assert buckets_for(100) == (32, 48, 64, 96, 100)


def test_the_escalation_bound_counts_open_entries_across_restarts_and_resolutions(tmp_path):
    store = EscalationStore(tmp_path, max_open=2)
    assert store.add({"id": "a1"}) and store.add({"id": "a2"})
    assert not store.add({"id": "a3"})
    reopened = EscalationStore(tmp_path, max_open=2)  # counts what is on disk
    assert not reopened.add({"id": "a3"})
    reopened.resolve("a1", {"answer": "x"})
    assert reopened.add({"id": "a3"}) and not reopened.add({"id": "a4"})
    assert sorted(e["id"] for e in reopened.open()) == ["a2", "a3"]


def test_the_load_client_reads_a_chunked_event_stream():
    events = [b'data: {"choices": [{"text": ""}], "governance": {}}\n\n', b'data: {"choices": [{"text": "Hi"}]}\n\n',
              b'data: {"choices": [], "usage": {"completion_tokens": 1}}\n\n', b"data: [DONE]\n\n"]
    raw = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"
    body = bench._dechunk(raw, {"transfer-encoding": "chunked"})
    assert body == b"".join(events)
    assert not bench._FIRST_TEXT.search(events[0]) and bench._FIRST_TEXT.search(events[1])
    usage = [e for e in body.split(b"\n\n") if b'"usage": ' in e]
    assert json.loads(usage[0][6:])["usage"]["completion_tokens"] == 1


def test_the_step_benchmark_times_each_slot_count_and_bucket():
    from flax import nnx

    from promethios_jax.model import GovernanceTransformer
    from promethios_jax.serve import bench_step
    from tests.util import small_config
    c = small_config()
    c.model.max_seq_len = 64
    res = bench_step.run(GovernanceTransformer(c.model, rngs=nnx.Rngs(0)), [1, 4], [32], repeats=1)
    assert set(res) == {"max_seq_len", "step_ms_1_slots", "step_ms_4_slots", "prefill_ms_32"}
    assert all(v > 0 for v in res.values())
