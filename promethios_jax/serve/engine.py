"""Continuous batching over fixed decode slots (the JetStream engine shape).

Each of `num_slots` slots owns one row of a KV cache (per layer [slots, KV, max_len, hd]) and
its own decode state: last token, cache position, telemetry, sampling parameters and
PRNG key. A request is prefilled alone (its prompt right-padded to a length bucket;
causal attention keeps the padding invisible), its cache rows are inserted into a free
slot, and one jitted step then decodes one token for every slot. The step runs the
model's KV-cache decode once for all slots with a cache position per slot, so each slot
writes and reads at its own position. A row's arithmetic never depends on the other
rows, so a greedy answer is the same alone or among 31 others.

The loop runs in one thread and keeps one step in flight: while the device computes
step t+1 the host reads step t's tokens, checks stop conditions and hands the text out.
Prefills are dispatched the same way: their first token and verdict are read together
with the next step's tokens, so admitting requests never waits on the device. The first
token comes from the prefill; the governance verdict is the heads read at the prompt's
last token (<assess>), before any answer token exists.

Longer than 400 lines because the slot state, its jitted steps and the thread that
drives them change together.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import gc
import itertools
import logging
import os
import threading
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from promethios_jax.model import heads as heads_lib
from promethios_jax.model import model as model_lib
from promethios_jax.serve import checkpoint_io as io

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """The waiting queue is at its bound; the caller should retry later."""


class NotAccepting(RuntimeError):
    """The engine is warming up or draining."""


@dataclasses.dataclass
class SamplingParams:
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple = ()
    seed: int | None = None
    ignore_eos: bool = False


@dataclasses.dataclass
class Request:
    """One generation. The engine fills the fields below the line; events go to `notify`."""
    id: str
    prompt_ids: list
    telemetry: np.ndarray  # float32 [telemetry_dim]
    params: SamplingParams
    # ---
    verdict: dict | None = None
    output_ids: list = dataclasses.field(default_factory=list)
    text: str = ""
    emitted: int = 0  # characters of `text` already handed out
    decoded: int = 0  # output tokens whose text is in `text`
    decode_from: int = 0  # where the next decode window starts (context for the tokenizer)
    finish_reason: str | None = None
    cancelled: bool = False
    t_arrival: float = dataclasses.field(default_factory=time.monotonic)
    t_admitted: float | None = None
    t_first: float | None = None
    t_last: float | None = None
    t_done: float | None = None
    slot: int | None = None
    token_times: list = dataclasses.field(default_factory=list)
    sink: object = None  # the caller's per-request state (the HTTP layer's event queue)


def buckets_for(max_len: int, smallest: int = 32) -> tuple:
    """Prompt-length buckets: powers of two from `smallest` with a 1.5x step between each
    two, and max_len.

    The half steps cap a prompt's padding at a third of its bucket: a prefill's cost
    follows the bucket (at demo size 1.5 ms at 64 tokens, 3.5 ms at 128), and 30% of the
    demo's held-out prompts (SentencePiece, 35-114 tokens) fall between 64 and 96."""
    out, b = set(), smallest
    while b < max_len:
        out.add(b)
        if b * 3 // 2 < max_len:
            out.add(b * 3 // 2)
        b *= 2
    return tuple(sorted(out)) + (max_len,)


def detokenize(tokenizer, req: Request) -> None:
    """Extends req.text by the tokens since the last call, decoding a short window (the
    tokens from the last complete character on) instead of the whole output; an
    incomplete UTF-8 character at the end waits for its next byte."""
    ids = req.output_ids
    before = tokenizer.decode(ids[req.decode_from:req.decoded])
    now = tokenizer.decode(ids[req.decode_from:])
    if len(now) > len(before) and not now.endswith("\ufffd"):
        req.text += now[len(before):]
        req.decode_from, req.decoded = req.decoded, len(ids)


class _Static:
    """The model's structure as one jit static argument, hashed by identity: hashing a
    GraphDef walks the whole graph (hundreds of microseconds a call at demo size), and the
    parameters travel as a flat list of arrays rather than an nnx.State, whose flatten
    runs in Python."""
    __slots__ = ("graphdef", "treedef")

    def __init__(self, graphdef, treedef):
        self.graphdef, self.treedef = graphdef, treedef

    def merge(self, leaves):
        return nnx.merge(self.graphdef, jax.tree.unflatten(self.treedef, leaves))


def _heads(out):
    """Governance head probabilities at the prompt's last token (already gathered by head_positions)."""
    return {h.name: heads_lib.probabilities(h, out.heads[h.name][0, 0]) for h in heads_lib.HEADS}


def _next_tokens(logits, keys, offsets, temperature, top_p):
    """The next token of each row of logits [S, V]: sampled with its key folded with its
    offset (its cache position), greedy where its temperature is 0. All greedy (the common
    case) skips nucleus sampling's sort over the vocabulary (a tenth of a demo prefill)."""
    def sample(logits):
        row_keys = jax.vmap(jax.random.fold_in)(keys, offsets)
        return jax.vmap(lambda lg, k, t, p: io.sample_token(lg[None], k, t, p)[0])(logits, row_keys, temperature,
                                                                                  top_p)

    return jax.lax.cond(jnp.any(temperature > 0), sample,
                        lambda logits: jnp.argmax(logits, axis=-1).astype(jnp.int32), logits)


def init_slots(spec, num_slots: int) -> dict:
    """The decode state of `num_slots` empty slots (host arrays): each slot's last token,
    cache position, telemetry signals (model.telemetry_signals, computed once at prefill:
    per step they were a tenth of the 32-slot step), PRNG key and sampling parameters."""
    s = num_slots
    return {"token": np.zeros(s, np.int32), "position": np.zeros(s, np.int32),
            "signals": np.zeros((len(spec.anchors), s, 1, spec.d_model), spec.dtype),
            "key": np.zeros((s, 2), np.uint32), "temperature": np.zeros(s, np.float32),
            "top_p": np.ones(s, np.float32)}


@functools.partial(jax.jit, static_argnums=(0,), donate_argnums=(2, 3))
def _prefill_insert(static, params, cache, slots, tokens, length, telemetry, slot, seed, temperature, top_p):
    """Prefills tokens [1, bucket] (real length `length`), puts the result in `slot`.

    Returns (cache, slots, first token, heads)."""
    model = static.merge(params)
    prefix = model.init_cache(1, tokens.shape[1])
    last = jnp.reshape(length - 1, (1, 1))
    signals = model.telemetry_signals(telemetry[None])
    out, prefix = model.decode(tokens, prefix, 0, signals=signals, head_positions=last, logits_positions=last)
    key = jax.random.PRNGKey(seed)
    first = _next_tokens(out.logits[:, 0], key[None], jnp.reshape(length - 1, (1,)), temperature[None],
                         top_p[None])[0]
    cache = [{name: jax.lax.dynamic_update_slice(c[name], p[name], (slot, 0, 0, 0)) for name in c}
             for c, p in zip(cache, prefix)]
    slots = {"token": slots["token"].at[slot].set(first), "position": slots["position"].at[slot].set(length),
             "signals": jax.lax.dynamic_update_slice_in_dim(slots["signals"], signals, slot, axis=1),
             "key": slots["key"].at[slot].set(key),
             "temperature": slots["temperature"].at[slot].set(temperature),
             "top_p": slots["top_p"].at[slot].set(top_p)}
    return cache, slots, first, _heads(out)


@functools.partial(jax.jit, static_argnums=(0,), donate_argnums=(2, 3))
def _generate_step(static, params, cache, slots):
    """One token for every slot at its own cache position. Returns (cache, slots, tokens [S])."""
    model = static.merge(params)
    max_len = model_lib.cache_length(cache)
    # Each slot reads and writes the cache at its own position (decode's [S] cache_index).
    out, cache = model.decode(slots["token"][:, None], cache, slots["position"], signals=slots["signals"])
    nxt = _next_tokens(out.logits[:, -1], slots["key"], slots["position"], slots["temperature"], slots["top_p"])
    # An idle slot keeps stepping; its position stays inside the cache.
    slots = dict(slots, token=nxt, position=jnp.minimum(slots["position"] + 1, max_len - 1))
    return cache, slots, nxt


class Engine:
    """Fixed decode slots over one model. `submit` from any thread; `start` runs the loop.

    notify(batch) receives lists of (request, event) from the engine thread, once per
    step; an event is ("verdict", dict), ("text", str) or ("done", finish_reason).
    """

    def __init__(self, served: io.Served, num_slots: int = 32, max_queue: int = 256, buckets=None,
                 notify: Callable | None = None, on_step: Callable | None = None, stream_interval: int = 1):
        if num_slots < 1:
            raise ValueError(f"num_slots={num_slots} must be at least 1")
        if max_queue < 0:
            raise ValueError(f"max_queue={max_queue} must be at least 0")
        self.served = served
        self.tokenizer = served.tokenizer
        self.max_len = served.max_len
        if stream_interval < 1:
            raise ValueError(f"stream_interval={stream_interval} must be at least 1")
        self.num_slots = num_slots
        self.max_queue = max_queue
        self.stream_interval = stream_interval
        self.buckets = tuple(sorted(buckets or buckets_for(self.max_len)))
        if self.buckets[-1] < self.max_len:
            self.buckets += (self.max_len,)
        self.notify = notify or (lambda batch: None)
        self.on_step = on_step or (lambda engine: None)
        graphdef, state = nnx.split(served.model)
        self.params, treedef = jax.tree.flatten(state)
        self.static = _Static(graphdef, treedef)
        self.spec = served.model.spec
        # Committed to the parameters' device from the start: an uncommitted first input
        # would compile a second program at the first request.
        device = jax.tree.leaves(self.params)[0].sharding
        self.cache = jax.device_put(served.model.init_cache(num_slots, self.max_len), device)
        self.slots = jax.device_put(init_slots(self.spec, num_slots), device)
        self.active: list[Request | None] = [None] * num_slots
        self.waiting: collections.deque[Request] = collections.deque()
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False
        self.accepting = False
        self.warm = False
        self.steps = 0
        self._seeds = itertools.count(int.from_bytes(os.urandom(3), "little"))

    # ----- limits and state, for the API --------------------------------------------------
    def bucket_for(self, n: int) -> int:
        for b in self.buckets:
            if n <= b:
                return b
        raise ValueError(f"prompt of {n} tokens is longer than the context of {self.max_len}")

    @property
    def running(self) -> int:
        return sum(r is not None for r in self.active)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def idle(self) -> bool:
        with self._cv:
            return not self.waiting and self.running == 0

    # ----- lifecycle ----------------------------------------------------------------------
    def warm_up(self) -> float:
        """Compiles the step and the prefill of every bucket; returns the seconds it took."""
        t0 = time.monotonic()
        zero_tel = np.zeros(self.spec.telemetry_dim, np.float32)
        for b in self.buckets:
            self._prefill(np.zeros(b, np.int32), 1, zero_tel, 0, 0, 0.0, 1.0)
        self.cache, self.slots, tok = _generate_step(self.static, self.params, self.cache, self.slots)
        jax.block_until_ready(tok)
        # What exists now lives as long as the server (the model's graph, compiled
        # programs, the web app): out of the collector's reach, full collections stop
        # walking it (they took 28% of the event loop's time at 32 slots).
        gc.collect()
        gc.freeze()
        self.warm = True
        return time.monotonic() - t0

    def start(self, warm_up: bool = True) -> None:
        def run():
            if warm_up and not self.warm:
                took = self.warm_up()
                log.info("warm-up compiled %d prompt buckets %s and the step in %.1fs", len(self.buckets),
                         self.buckets, took)
            self.accepting = True
            self._loop()

        self._thread = threading.Thread(target=run, name="engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        with self._cv:
            self._stop = True
            self.accepting = False
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, req: Request) -> None:
        if len(req.prompt_ids) + req.params.max_tokens > self.max_len:
            raise ValueError(f"prompt ({len(req.prompt_ids)} tokens) plus max_tokens ({req.params.max_tokens}) "
                             f"is over the context of {self.max_len} tokens")
        with self._cv:
            if not self.accepting:
                raise NotAccepting("the engine is warming up" if not self.warm else "the server is draining")
            free = self.num_slots - self.running
            if len(self.waiting) >= self.max_queue + free:
                raise QueueFull(f"{len(self.waiting)} requests are waiting (bound {self.max_queue})")
            self.waiting.append(req)
            self._cv.notify_all()

    # ----- the loop ---------------------------------------------------------------------
    def _prefill(self, tokens_1d, length, telemetry, slot, seed, temperature, top_p):
        b = self.bucket_for(len(tokens_1d))
        tokens = np.zeros((1, b), np.int32)
        tokens[0, :len(tokens_1d)] = tokens_1d
        self.cache, self.slots, first, heads = _prefill_insert(
            self.static, self.params, self.cache, self.slots, tokens, np.int32(length), telemetry,
            np.int32(slot), np.uint32(seed), np.float32(temperature), np.float32(top_p))
        return first, heads

    def _verdict(self, h) -> dict:
        """The verdict from the heads' probabilities (host arrays)."""
        hitl = float(h[heads_lib.ESCALATION])
        threshold = self.served.hitl_threshold
        verdict = {"hitl_probability": hitl, "escalate": hitl >= threshold, "threshold": threshold}
        for head in heads_lib.HEADS:
            names, probs = io.LABEL_SPACES.get(head.name), np.asarray(h[head.name], np.float64)
            if head.kind == "softmax":
                verdict[head.name] = names[int(np.argmax(probs))]
                verdict[f"{head.name}_probabilities"] = dict(zip(names, probs.tolist()))
            elif head.kind == "soft_multilabel":
                verdict[head.name] = dict(zip(names, probs.tolist()))
        return {
            **verdict,
            "step": self.served.step,
            "read_at": "<assess>",
        }

    def _admit(self, events: list) -> list:
        """Dispatches the prefill of waiting requests into free slots.

        Returns [(request, first token, heads)] on the device, read with the next step's tokens."""
        admitted = []
        while True:
            with self._cv:
                free = [i for i, r in enumerate(self.active) if r is None]
                while self.waiting and self.waiting[0].cancelled:
                    req = self.waiting.popleft()
                    self._finish(req, "abort", events)
                if not free or not self.waiting:
                    return admitted
                req = self.waiting.popleft()
                slot = free[0]
                self.active[slot] = req
            req.slot, req.t_admitted = slot, time.monotonic()
            p = req.params
            seed = p.seed if p.seed is not None else next(self._seeds)
            first, heads = self._prefill(np.asarray(req.prompt_ids, np.int32), len(req.prompt_ids), req.telemetry,
                                         slot, seed & 0xFFFFFFFF, p.temperature, p.top_p)
            admitted.append((req, first, heads))

    def _on_token(self, req: Request, token: int, events: list) -> None:
        now = time.monotonic()
        if req.finish_reason is not None:
            return
        if req.cancelled:
            return self._finish(req, "abort", events)
        if token == self.tokenizer.eos_id and not req.params.ignore_eos:
            return self._finish(req, "stop", events)
        req.output_ids.append(token)
        if req.t_first is None:
            req.t_first = now
        req.t_last = now
        req.token_times.append(now)
        done = len(req.output_ids) >= req.params.max_tokens
        # Text is decoded (and handed out) every stream_interval tokens, at the end, or at
        # every token when stop strings must be watched.
        stops = req.params.stop
        if not (done or stops or len(req.output_ids) % self.stream_interval == 0):
            return
        detokenize(self.tokenizer, req)
        stop_at = min((i for i in (req.text.find(s) for s in stops) if i >= 0), default=-1)
        if stop_at >= 0:
            return self._finish(req, "stop", events, req.text[:stop_at])
        if done:
            return self._finish(req, "length", events)
        # Hold back what may be the start of a stop sequence.
        ready = len(req.text) - max((len(s) - 1 for s in stops), default=0)
        if ready > req.emitted:
            events.append((req, ("text", req.text[req.emitted:ready])))
            req.emitted = ready

    def _finish(self, req: Request, reason: str, events: list, text: str | None = None) -> None:
        """Ends a request; `text` is its final text when a stop sequence cut it, else the whole decode."""
        if reason != "abort":
            req.text = text if text is not None else self.tokenizer.decode(req.output_ids)
        req.finish_reason = reason
        req.t_done = time.monotonic()
        if reason != "abort" and len(req.text) > req.emitted:
            events.append((req, ("text", req.text[req.emitted:])))
            req.emitted = len(req.text)
        events.append((req, ("done", reason)))
        with self._cv:
            if req.slot is not None and self.active[req.slot] is req:
                self.active[req.slot] = None

    def _process(self, tokens, owners, admitted, events: list) -> None:
        """Hands out what a step and the prefills dispatched before it produced (one device read)."""
        host, firsts = jax.device_get((tokens, [(first, heads) for _, first, heads in admitted]))
        for (req, _, _), (first, heads) in zip(admitted, firsts):
            req.verdict = self._verdict(heads)
            events.append((req, ("verdict", req.verdict)))
            self._on_token(req, int(first), events)
        if host is None:
            return
        for slot, req in enumerate(owners):
            if req is not None and self.active[slot] is req:
                self._on_token(req, int(host[slot]), events)

    def _loop(self) -> None:
        pending = None  # (tokens of the step in flight, its slot owners, the prefills dispatched before it)
        while True:
            events: list = []
            with self._cv:
                while not self._stop and not self.waiting and self.running == 0 and pending is None:
                    self._cv.wait(0.5)
                if self._stop:
                    return
            admitted = self._admit(events)
            if self.running:
                owners = list(self.active)
                self.cache, self.slots, tokens = _generate_step(self.static, self.params, self.cache, self.slots)
                self.steps += 1
            else:
                tokens = owners = None
            if pending is not None:
                self._process(*pending, events)  # overlaps the step just dispatched
            pending = None if tokens is None and not admitted else (tokens, owners, admitted)
            if events:
                self.notify(events)
            self.on_step(self)

    # ----- synchronous use (tests, benchmarks) -------------------------------------------
    def generate(self, requests: list[Request], timeout: float = 600.0) -> list[Request]:
        """Submits the requests and waits until every one is done (the loop must be running)."""
        done = threading.Event()
        left = {r.id for r in requests}
        outer = self.notify

        def notify(batch):
            outer(batch)
            for req, (kind, _) in batch:
                if kind == "done":
                    left.discard(req.id)
            if not left:
                done.set()

        self.notify = notify
        try:
            for r in requests:
                self.submit(r)
            if not done.wait(timeout):
                raise TimeoutError(f"{len(left)} of {len(requests)} requests unfinished after {timeout}s")
        finally:
            self.notify = outer
        return requests
