"""The HTTP API: OpenAI-compatible completions and chat with the governance verdict.

Routes: POST /v1/completions, POST /v1/chat/completions, GET /v1/models,
GET /v1/models/{id}, GET /v1/capabilities, GET /v1/escalations,
POST /v1/escalations/{id}/resolve (these need a key when keys are configured);
GET /health, /ready, /metrics (always open). Errors have OpenAI's body
{"error": {"message", "type", "param", "code"}}.

Longer than 400 lines because the routes share one app state, auth and error contract;
split by route they would each re-derive it.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import hashlib
import hmac
import json
import logging
import time
import uuid

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from promethios_jax.model import heads as heads_lib
from promethios_jax.serve import checkpoint_io as io
from promethios_jax.serve import engine as engine_lib
from promethios_jax.serve import schemas
from promethios_jax.serve.metrics import ServerMetrics
from promethios_jax.serve.records import AuditLog, EscalationStore

log = logging.getLogger(__name__)


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param=None, code=None,
                 headers=None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}


def error_response(status: int, message: str, type_: str, param=None, code=None, headers=None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}},
                        status_code=status, headers=headers)


@dataclasses.dataclass
class Settings:
    num_slots: int = 32
    max_queue: int = 256
    buckets: tuple | None = None
    default_max_tokens: int = 64
    model_name: str = "promethios"
    api_keys: dict = dataclasses.field(default_factory=dict)  # key id -> sha256 hex of the key
    audit_path: str | None = None  # default WORKDIR/serve/audit.jsonl
    log_prompts: bool = False
    max_open_escalations: int = 10000
    drain_timeout: float = 30.0
    stream_interval: int = 1  # tokens per streamed text event


@dataclasses.dataclass
class _Pending:
    """What the HTTP side keeps per engine request."""
    events: asyncio.Queue
    key_id: str | None
    endpoint: str
    domain: str
    telemetry: dict
    request_text: str
    created: int


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def read_api_keys(path) -> dict:
    """`KEY_ID KEY` or `KEY_ID sha256:HEX` per line (# comments); only hashes are kept."""
    keys = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2:
                raise ValueError(f"{path}:{n}: expected 'KEY_ID KEY' or 'KEY_ID sha256:HEX'")
            kid, key = parts
            if kid in keys:
                raise ValueError(f"{path}:{n}: key id {kid!r} appears twice")
            keys[kid] = key[7:].lower() if key.startswith("sha256:") else hash_key(key)
    if not keys:
        raise ValueError(f"{path}: no keys")
    return keys


class ServerState:
    def __init__(self, served: io.Served, workdir, settings: Settings):
        from promethios_jax.serve.records import serve_dir

        self.served, self.settings = served, settings
        self.model_id = settings.model_name
        self.metrics = ServerMetrics(settings.num_slots)
        sdir = serve_dir(workdir)
        self.audit = AuditLog(settings.audit_path or sdir / "audit.jsonl", settings.log_prompts)
        self.escalations = EscalationStore(sdir / "escalations", settings.max_open_escalations)
        self.engine = engine_lib.Engine(served, settings.num_slots, settings.max_queue, settings.buckets,
                                        notify=self._notify, on_step=self._on_step,
                                        stream_interval=settings.stream_interval)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.inflight = 0
        self.draining = False
        self.drain_deadline = None

    # ----- engine -> event loop -------------------------------------------------------------
    def _notify(self, batch) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._dispatch, batch)

    def _on_step(self, engine) -> None:
        self.metrics.observe_engine(engine.running, engine.num_waiting)

    def _dispatch(self, batch) -> None:
        for req, event in batch:
            pending: _Pending = req.sink
            pending.events.put_nowait(event)
            if event[0] == "done":
                self._record(req, pending)

    def _record(self, req, pending: _Pending) -> None:
        self.metrics.observe_done(req)
        times = req.token_times
        for a, b in zip(times[:-1], times[1:]):
            self.metrics.itl.observe(b - a)
        v = req.verdict
        prompt_text = io.request_prompt(pending.telemetry, pending.domain, pending.request_text,
                                        self.served.config.data.prompt_layout)
        timing = {"queue_s": None if req.t_admitted is None else round(req.t_admitted - req.t_arrival, 6),
                  "ttft_s": None if req.t_first is None else round(req.t_first - req.t_arrival, 6),
                  "e2e_s": round(req.t_done - req.t_arrival, 6)}
        self.audit.write({
            "id": req.id, "time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "key_id": pending.key_id, "endpoint": pending.endpoint, "model_step": self.served.step,
            "domain": pending.domain,
            "verdict": None if v is None else {k: v[k] for k in ("hitl_probability", "escalate", "threshold",
                                                                   "decision", "confidence", "tool")},
            "finish_reason": req.finish_reason, "prompt_tokens": len(req.prompt_ids),
            "completion_tokens": len(req.output_ids), "timings": timing}, prompt_text)
        if v is not None and v["escalate"]:
            self.metrics.escalations.labels(pending.domain, v["decision"]).inc()
            kept = self.escalations.add({
                "id": req.id, "step": self.served.step, "domain": pending.domain, "telemetry": pending.telemetry,
                "request_text": pending.request_text, "model_response": req.text, "verdict": v,
                "finish_reason": req.finish_reason, "key_id": pending.key_id})
            if not kept:
                self.metrics.escalations_dropped.inc()
                log.warning("escalation store full (%d open); request %s not kept", self.escalations.max_open,
                            req.id)

    # ----- drain ----------------------------------------------------------------------------
    def begin_drain(self) -> None:
        if not self.draining:
            log.info("draining: /ready is 503, %d request(s) in flight", self.inflight)
            self.draining = True
            self.drain_deadline = time.monotonic() + self.settings.drain_timeout
            self.engine.accepting = False

    def drained(self) -> bool:
        return self.draining and (self.inflight == 0 or time.monotonic() > self.drain_deadline)


def _auth(state: ServerState):
    keys = state.settings.api_keys

    async def check(request: Request) -> str | None:  # async: a sync dependency costs a thread hop per request
        if not keys:
            return None
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise APIError(401, "missing API key: send 'Authorization: Bearer KEY'", "authentication_error",
                           code="invalid_api_key")
        digest = hash_key(token.strip())
        found = None
        for kid, h in keys.items():  # every key compared, in constant time each
            if hmac.compare_digest(digest, h):
                found = kid
        if found is None:
            raise APIError(401, "invalid API key", "authentication_error", code="invalid_api_key")
        return found

    return check


def _validation_message(exc: RequestValidationError) -> tuple[int, str, str | None]:
    errs = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errs):
        return 400, "the request body is not valid JSON", None
    parts, first = [], None
    for e in errs:
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        name = ".".join(loc) or "body"
        first = first or name
        msg = "unknown field (not part of this API)" if e.get("type") == "extra_forbidden" else e.get("msg", "")
        parts.append(f"{name}: {msg}")
    return 422, "; ".join(parts), first


def create_app(state: ServerState) -> FastAPI:
    engine = state.engine

    @contextlib.asynccontextmanager
    async def lifespan(_):
        state.loop = asyncio.get_running_loop()
        if engine._thread is None:
            engine.start()  # warm-up runs in the engine thread; /ready is 503 until it is done
        yield
        engine.stop(timeout=10)
        state.audit.close()

    app = FastAPI(title="Promethios-JAX", version=str(state.served.step), lifespan=lifespan)
    auth = _auth(state)
    tok = state.served.tokenizer

    @app.exception_handler(APIError)
    async def _api_error(_, exc: APIError):
        return error_response(exc.status, exc.message, exc.type, exc.param, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_, exc: RequestValidationError):
        status, msg, param = _validation_message(exc)
        return error_response(status, msg, "invalid_request_error", param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail), "invalid_request_error")

    # ----- open routes --------------------------------------------------------------------
    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        if state.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        if not engine.accepting:
            return JSONResponse({"status": "warming_up"}, status_code=503, headers={"Retry-After": "5"})
        return {"status": "ready", "step": state.served.step}

    @app.get("/metrics")
    async def metrics():
        state.metrics.observe_engine(engine.running, engine.num_waiting)
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    # ----- models -------------------------------------------------------------------------
    def model_card():
        m = state.served.config.model
        return {"id": state.model_id, "object": "model", "created": state.started, "owned_by": "promethios-jax",
                "step": state.served.step, "parameters": io.param_count(state.served.model),
                "tokenizer": {"name": tok.name, "fingerprint": tok.fingerprint, "vocab_size": tok.vocab_size},
                "config": {k: (list(m[k]) if isinstance(m[k], (list, tuple)) else m[k]) for k in (
                    "vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_seq_len",
                    "anchor_layers", "compute_dtype")},
                "max_model_len": engine.max_len}

    state.started = int(time.time())

    @app.get("/v1/models", dependencies=[Depends(auth)])
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id}", dependencies=[Depends(auth)])
    async def model(model_id: str):
        if model_id != state.model_id:
            raise APIError(404, f"model {model_id!r} does not exist; this server serves {state.model_id!r}",
                           code="model_not_found", param="model")
        return model_card()

    @app.get("/v1/capabilities", dependencies=[Depends(auth)])
    async def capabilities():
        return {
            "model": state.model_id, "step": state.served.step,
            "heads": {h.name: list(io.LABEL_SPACES.get(h.name, ("probability",))) for h in heads_lib.HEADS},
            "verdict": {"read_at": "<assess>", "judges": "the request (read before any answer token)",
                        "escalation_threshold": state.served.hitl_threshold},
            "telemetry": {**{k: {"type": "number", "min": 0.0, "max": 1.0} for k in io.NUMERIC_KEYS},
                          **{k: {"type": "enum", "values": list(v)} for k, v in io.CATEGORICAL_VALUES.items()}},
            "domains": {d: {"trust_requirement": io.DOMAIN_TRUST[d]} for d in io.DOMAINS},
            "limits": {"max_model_len": engine.max_len, "num_slots": engine.num_slots,
                       "max_queue": engine.max_queue, "prompt_buckets": list(engine.buckets),
                       "default_max_tokens": state.settings.default_max_tokens, "max_stop_sequences": 4,
                       "n": 1},
            "sampling": ["temperature", "top_p", "max_tokens", "stop", "seed", "ignore_eos"],
        }

    # ----- generation -----------------------------------------------------------------------
    async def generate(body, text: str, endpoint: str, request: Request, key_id, max_tokens):
        if body.model not in (None, state.model_id):
            raise APIError(404, f"model {body.model!r} does not exist; this server serves {state.model_id!r}",
                           code="model_not_found", param="model")
        if state.draining or not engine.accepting:
            state.metrics.rejected.labels("not_ready").inc()
            raise APIError(503, "the server is draining" if state.draining else "the server is warming up",
                           "service_unavailable", headers={"Retry-After": "5"})
        try:
            stops = body.stop_list()
        except ValueError as e:
            raise APIError(400, str(e), param="stop") from None
        telemetry = body.telemetry.model_dump()
        try:
            ids = io.prompt_ids(tok, telemetry, body.domain, text, state.served.config.data.prompt_layout)
        except io.PromptError as e:
            raise APIError(400, str(e), param="prompt" if endpoint == "completions" else "messages") from None
        room = engine.max_len - len(ids)
        if max_tokens is None:
            max_tokens = min(state.settings.default_max_tokens, room)
            if max_tokens < 1:
                raise APIError(400, f"the prompt has {len(ids)} tokens, which leaves no room in the context of "
                                    f"{engine.max_len} tokens", param="prompt", code="context_length_exceeded")
        elif len(ids) + max_tokens > engine.max_len:
            raise APIError(400, f"the prompt ({len(ids)} tokens) plus max_tokens ({max_tokens}) is "
                                f"{len(ids) + max_tokens} tokens, over this model's context of {engine.max_len}",
                           param="max_tokens", code="context_length_exceeded")
        rid = ("cmpl-" if endpoint == "completions" else "chatcmpl-") + uuid.uuid4().hex[:24]
        req = engine_lib.Request(rid, ids, io.telemetry_vector(telemetry, body.domain), engine_lib.SamplingParams(
            max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, stop=stops, seed=body.seed,
            ignore_eos=body.ignore_eos))
        req.sink = _Pending(asyncio.Queue(), key_id, endpoint, body.domain, telemetry, text, int(time.time()))
        try:
            engine.submit(req)
        except engine_lib.QueueFull as e:
            state.metrics.rejected.labels("queue_full").inc()
            raise APIError(429, f"the server is at capacity ({e}); retry shortly", "rate_limit_error",
                           code="queue_full", headers={"Retry-After": "1"}) from None
        except engine_lib.NotAccepting as e:
            raise APIError(503, str(e), "service_unavailable", headers={"Retry-After": "5"}) from None
        state.inflight += 1
        shape = _Shapes(endpoint, rid, state.model_id, req.sink.created)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(_stream(state, req, shape, include_usage), media_type="text/event-stream")
        try:
            finished = await _wait(req, request)
        finally:
            state.inflight -= 1
        if not finished:
            return Response(status_code=499)
        return shape.full(req)

    @app.post("/v1/completions")
    async def completions(body: schemas.CompletionRequest, request: Request, key_id=Depends(auth)):
        return await generate(body, body.prompt, "completions", request, key_id, body.max_tokens)

    @app.post("/v1/chat/completions")
    async def chat(body: schemas.ChatRequest, request: Request, key_id=Depends(auth)):
        try:
            text = body.request_text()
        except ValueError as e:
            raise APIError(400, str(e), param="messages") from None
        return await generate(body, text, "chat", request, key_id, body.max_completion_tokens or body.max_tokens)

    # ----- escalations ----------------------------------------------------------------------
    @app.get("/v1/escalations", dependencies=[Depends(auth)])
    async def escalations(status: str = "open"):
        if status not in ("open", "resolved", "all"):
            raise APIError(400, f"status={status!r}: use open, resolved or all", param="status")
        items = state.escalations.all()
        if status != "all":
            items = [e for e in items if e["status"] == status]
        return {"object": "list", "data": items}

    @app.post("/v1/escalations/{esc_id}/resolve", dependencies=[Depends(auth)])
    async def resolve(esc_id: str, body: schemas.Resolution):
        try:
            return state.escalations.resolve(esc_id, body.model_dump())
        except KeyError:
            raise APIError(404, f"no escalation {esc_id!r}", param="id", code="not_found") from None
        except ValueError as e:
            raise APIError(409, str(e), code="conflict") from None

    return app


async def _wait(req, request: Request) -> bool:
    """Waits for the request to finish; False (and the slot freed) if the client went away."""
    async def done():
        while (await req.sink.events.get())[0] != "done":
            pass

    async def gone():
        while (await request.receive())["type"] != "http.disconnect":
            pass

    finished, watcher = asyncio.create_task(done()), asyncio.create_task(gone())
    await asyncio.wait({finished, watcher}, return_when=asyncio.FIRST_COMPLETED)
    watcher.cancel()
    if finished.done():
        return True
    finished.cancel()
    req.cancelled = True
    return False


@dataclasses.dataclass
class _Shapes:
    """OpenAI response and chunk bodies for one request."""
    endpoint: str
    id: str
    model: str
    created: int

    def _base(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    @staticmethod
    def usage(req) -> dict:
        p, c = len(req.prompt_ids), len(req.output_ids)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def full(self, req) -> dict:
        reason = req.finish_reason
        if self.endpoint == "completions":
            choice = {"index": 0, "text": req.text, "finish_reason": reason, "logprobs": None}
            body = self._base("text_completion")
        else:
            choice = {"index": 0, "message": {"role": "assistant", "content": req.text}, "finish_reason": reason,
                      "logprobs": None}
            body = self._base("chat.completion")
        return {**body, "choices": [choice], "usage": self.usage(req), "governance": req.verdict}

    def chunk(self, text: str | None, finish_reason=None, first: bool = False) -> dict:
        if self.endpoint == "completions":
            choice = {"index": 0, "text": text or "", "finish_reason": finish_reason, "logprobs": None}
            return {**self._base("text_completion"), "choices": [choice]}
        delta = {} if text is None else {"content": text}
        if first:
            delta["role"] = "assistant"
        return {**self._base("chat.completion.chunk"),
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}


    def text_template(self) -> tuple[bytes, bytes]:
        """The SSE bytes of a text chunk around its JSON-encoded text, built once per request
        so that each token costs one string encode rather than a whole chunk's."""
        mark = "\u0000text\u0000"  # JSON-escaped, it cannot occur in the id or a model name
        before, after = _sse(self.chunk(mark)).split(json.dumps(mark).encode())
        return before, after


def _sse(obj) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


async def _stream(state: ServerState, req, shape: _Shapes, include_usage: bool):
    """Server-sent events: the verdict first, then text deltas, the finish, [DONE]."""
    events, held = req.sink.events, None
    before, after = shape.text_template()
    try:
        while True:
            kind, value = held or await events.get()
            held = None
            # A reader slower than the engine gets the text that piled up as one event.
            while kind == "text" and not events.empty():
                held = events.get_nowait()
                if held[0] != "text":
                    break
                value, held = value + held[1], None
            if kind == "verdict":
                yield _sse({**shape.chunk("", first=True), "governance": value})
            elif kind == "text":
                yield before + json.dumps(value).encode() + after
            elif kind == "done":
                yield _sse(shape.chunk(None if shape.endpoint == "chat" else "", finish_reason=value))
                if include_usage:
                    yield _sse({**shape._base(shape.chunk("")["object"]), "choices": [], "usage": shape.usage(req)})
                yield b"data: [DONE]\n\n"
                return
    finally:
        if req.finish_reason is None:
            req.cancelled = True  # the client went away: the engine frees the slot at its next step
        state.inflight -= 1
