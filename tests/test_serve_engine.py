"""The slot engine without HTTP: equal to the reference KV-cache generation, one slot
independent of the others, stop conditions, cancellation, and no compile after warm-up."""
import time

import numpy as np
import pytest
from flax import nnx

from promethios_jax import generate as gen
from promethios_jax.data.tokenizer import ByteTokenizer
from promethios_jax.model import GovernanceTransformer
from promethios_jax.serve import checkpoint_io as io
from promethios_jax.serve.engine import Engine, QueueFull, Request, SamplingParams, _generate_step, _prefill_insert
from tests.util import small_config

CALM = {"trust": 0.9, "emotion": "CALM", "intensity": 0.2, "verify": 0.9, "attest": 0.9, "bound": 0.9,
        "decision": "APPROVED", "model": "CONSENSUS"}
TEXTS = ["Hi", "Summarize the open risks for wire approvals this week.", "Plan the rollout " * 4]


@pytest.fixture(scope="module")
def engine():
    c = small_config()
    c.model.max_seq_len = 96
    model = GovernanceTransformer(c.model, rngs=nnx.Rngs(0))
    served = io.Served(model, c, ByteTokenizer(), step=0)
    eng = Engine(served, num_slots=4, max_queue=2, buckets=(32, 64))
    eng.warm_up()
    eng.compiled = (_generate_step._cache_size(), _prefill_insert._cache_size())
    eng.start()
    yield eng
    eng.stop(timeout=10)


def request(eng, i, text, domain="finance", **params):
    tel = dict(CALM, trust=0.5 + 0.1 * (i % 5))
    ids = io.prompt_ids(eng.tokenizer, tel, domain, text, eng.served.config.data.prompt_layout)
    return Request(f"r{i}", ids, io.telemetry_vector(tel, domain), SamplingParams(**{"max_tokens": 12, **params}))


def test_greedy_equals_the_reference_generation_and_the_verdict_its_heads(engine):
    reqs = engine.generate([request(engine, i, t, ignore_eos=True) for i, t in enumerate(TEXTS)])
    ref = gen.generate(engine.served.model, None, [r.prompt_ids for r in reqs],
                       telemetry=np.stack([r.telemetry for r in reqs]), max_new_tokens=12, eos_id=None)
    for r, g in zip(reqs, ref):
        assert r.output_ids == g.ids and r.finish_reason == "length"
        assert r.verdict["hitl_probability"] == pytest.approx(g.hitl_prob, abs=1e-5)
        assert r.verdict["decision"] == io.DECISIONS[g.decision]
        np.testing.assert_allclose(list(r.verdict["uncertainty"].values()), g.uncertainty, atol=1e-5)
    assert {len(r.prompt_ids) > 32 for r in reqs} == {True, False}  # both buckets used
    # Nothing compiled after the warm-up.
    assert (_generate_step._cache_size(), _prefill_insert._cache_size()) == engine.compiled


def test_a_slot_does_not_depend_on_its_neighbours(engine):
    solo = engine.generate([request(engine, 0, TEXTS[1], temperature=0.9, seed=5)])[0]
    crowd = engine.generate([request(engine, i, TEXTS[i % 3], temperature=0.9, seed=i) for i in range(5)]
                            + [request(engine, 0, TEXTS[1], temperature=0.9, seed=5)])
    assert crowd[-1].output_ids == solo.output_ids and crowd[-1].verdict == solo.verdict
    assert len({tuple(r.output_ids) for r in crowd}) > 2


def test_stop_sequences_eos_and_max_tokens(engine):
    free = engine.generate([request(engine, 1, TEXTS[0], max_tokens=20, ignore_eos=True)])[0]
    text = free.text
    stop = text[5:7]
    cut = engine.generate([request(engine, 1, TEXTS[0], max_tokens=20, stop=(stop,))])[0]
    assert cut.finish_reason == "stop" and cut.text == text[:text.find(stop)]
    eos = free.output_ids[3]
    engine.tokenizer.eos_id, old = eos, engine.tokenizer.eos_id
    try:
        at_eos = engine.generate([request(engine, 1, TEXTS[0], max_tokens=20)])[0]
    finally:
        engine.tokenizer.eos_id = old
    assert at_eos.finish_reason == "stop" and at_eos.output_ids == free.output_ids[:free.output_ids.index(eos)]
    with pytest.raises(ValueError, match="over the context of 96"):
        engine.submit(request(engine, 1, TEXTS[0], max_tokens=90))


def test_cancel_frees_the_slot_and_the_queue_is_bounded(engine):
    seen = []
    engine.notify = lambda batch: seen.extend(batch)
    try:
        long = [request(engine, i, TEXTS[0], max_tokens=60, ignore_eos=True) for i in range(6)]
        for r in long:
            engine.submit(r)  # 4 slots and 2 waiting
        with pytest.raises(QueueFull):
            engine.submit(request(engine, 9, TEXTS[0]))
        for r in long:
            r.cancelled = True
        t0 = time.time()
        while not engine.idle() and time.time() - t0 < 30:
            time.sleep(0.01)
        assert engine.idle()
        assert all(r.finish_reason == "abort" and len(r.output_ids) < 60 for r in long)
    finally:
        engine.notify = lambda batch: None


def test_stream_interval_hands_out_the_same_text_in_fewer_events(engine):
    texts = {}
    for interval in (1, 5):
        seen = []
        engine.notify, engine.stream_interval = (lambda batch: seen.extend(batch)), interval
        try:
            r = engine.generate([request(engine, 2, TEXTS[1], max_tokens=23, ignore_eos=True)])[0]
        finally:
            engine.notify, engine.stream_interval = (lambda batch: None), 1
        parts = [e[1] for q, e in seen if q is r and e[0] == "text"]
        assert "".join(parts) == r.text and r.finish_reason == "length"
        texts[interval] = (r.text, len(parts))
    assert texts[1][0] == texts[5][0] and texts[5][1] <= 23 // 5 + 1 < texts[1][1]
