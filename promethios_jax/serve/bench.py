"""Load benchmark against a running server: Poisson arrivals of held-out prompts.

    python -m promethios_jax.serve.bench --url=http://127.0.0.1:8000 --workdir=DIR --rate=10 --num_requests=200
    python -m promethios_jax.serve.bench ... --concurrency=32        # closed loop: 32 streams back to back
    python -m promethios_jax.serve.bench ... --rates=5,10,20,40      # the highest rate with P99 e2e < --slo

Every request streams, so time to first token (TTFT) and time per output token (TPOT,
(e2e - TTFT) / (tokens - 1)) are measured at the client. Prints a table and, on its last
line, the result as JSON. Held-out prompts too long to leave room for --max_tokens are
left out (the count is printed).

The client speaks HTTP/1.1 over asyncio streams itself, notes when the first text
arrives and parses the events once the response is complete: it shares the machine with
the server here, and a general-purpose client (httpx, an event parsed per token) spent
more CPU per streamed token than the server did.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sys
import time
import urllib.parse

import httpx
import numpy as np

try:
    import uvloop
    _run = uvloop.run
except ImportError:  # the serve extra brings it; without it the stdlib loop works, slower
    _run = asyncio.run


def _pct(xs, q):
    return None if not xs else round(float(np.percentile(xs, q)), 4)


class _HTTPError(Exception):
    pass


async def _response_head(reader) -> tuple[int, dict]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    parts = head[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise _HTTPError(f"bad status line {head[0]!r}")
    headers = {}
    for line in head[1:]:
        k, _, v = line.partition(":")
        if k:
            headers[k.strip().lower()] = v.strip()
    return int(parts[1]), headers


# A completion chunk whose text is not empty (the verdict's chunk carries "text": "").
_FIRST_TEXT = re.compile(rb'"text": "[^"]')


async def _read_to_close(reader, t0: float, watch: bool) -> tuple[bytes, float | None]:
    """The raw body up to the server's close and, with watch, the seconds to the first text.

    Bytes are only scanned for the first text as they arrive; the events are parsed once, at
    the end, so that reading a stream costs little more than the reads themselves."""
    buf, ttft, start = bytearray(), None, 0
    while data := await reader.read(1 << 16):
        buf += data
        if watch and ttft is None:
            if _FIRST_TEXT.search(buf, start):
                ttft = time.perf_counter() - t0
            start = max(0, len(buf) - 16)
    return bytes(buf), ttft


def _dechunk(raw: bytes, headers: dict) -> bytes:
    if headers.get("transfer-encoding", "").lower() != "chunked":
        return raw
    out, i = [], 0
    while True:
        j = raw.index(b"\r\n", i)  # ValueError on a truncated body
        size = int(raw[i:j].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(raw[j + 2:j + 2 + size])
        i = j + 4 + size


async def _one(a, body, out: list):
    t0 = time.perf_counter()
    ttft, tokens, err, writer = None, 0, None, None
    payload = json.dumps(body).encode()
    try:
        async with asyncio.timeout(a.timeout):
            reader, writer = await asyncio.open_connection(a.host, a.port)
            writer.write(a.request_head + b"Content-Length: %d\r\n\r\n" % len(payload) + payload)
            status, headers = await _response_head(reader)
            raw, ttft = await _read_to_close(reader, t0, watch=status == 200 and body["stream"])
        data = _dechunk(raw, headers)
        if status != 200:
            err = f"HTTP {status}: {data[:200]!r}"
        elif body["stream"]:
            events = [e for e in data.split(b"\n\n") if e]
            if not events or events[-1] != b"data: [DONE]":
                raise _HTTPError("the stream ended without data: [DONE]")
            # A key in quotes cannot occur inside generated text (its quotes are escaped).
            usage = [e for e in events if b'"usage": ' in e]
            tokens = json.loads(usage[-1][6:])["usage"]["completion_tokens"] if usage else 0
        else:  # one response: end-to-end latency only
            tokens = json.loads(data)["usage"]["completion_tokens"]
    except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, KeyError,
            _HTTPError) as e:
        err = f"{type(e).__name__}: {e}"
    finally:
        if writer is not None:
            writer.close()
    e2e = time.perf_counter() - t0
    out.append({"ttft": ttft, "e2e": e2e, "tokens": tokens, "error": err,
                "tpot": (e2e - ttft) / (tokens - 1) if ttft is not None and tokens > 1 else None})


def _body(p, a):
    return {"model": a.model, "prompt": p["text"], "telemetry": p["telemetry"], "domain": p["domain"],
            "max_tokens": a.max_tokens, "temperature": 0.0, "stream": not a.no_stream,
            "ignore_eos": a.ignore_eos, **({} if a.no_stream else {"stream_options": {"include_usage": True}})}


async def run(a, prompts, rate=None, concurrency=None) -> dict:
    out: list = []
    rng = random.Random(a.seed)
    t0 = time.perf_counter()
    if concurrency:
        order = iter(range(a.num_requests))

        async def worker():
            for i in order:
                await _one(a, _body(prompts[i % len(prompts)], a), out)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    else:
        tasks, t = [], t0
        for i in range(a.num_requests):
            t += rng.expovariate(rate)
            await asyncio.sleep(max(0.0, t - time.perf_counter()))
            tasks.append(asyncio.create_task(_one(a, _body(prompts[i % len(prompts)], a), out)))
        await asyncio.gather(*tasks)
    wall = time.perf_counter() - t0
    ok = [r for r in out if r["error"] is None]
    errors = [r["error"] for r in out if r["error"] is not None]
    res = {"mode": f"concurrency={concurrency}" if concurrency else f"poisson rate={rate}/s",
           "requests": len(out), "errors": len(errors), "first_error": errors[0] if errors else None,
           "duration_s": round(wall, 3), "requests_per_s": round(len(ok) / wall, 3),
           "output_tokens_per_s": round(sum(r["tokens"] for r in ok) / wall, 1),
           "mean_output_tokens": round(float(np.mean([r["tokens"] for r in ok])), 1) if ok else None}
    for k in ("ttft", "tpot", "e2e"):
        xs = [r[k] for r in ok if r[k] is not None]
        res[f"{k}_p50_s"], res[f"{k}_p99_s"] = _pct(xs, 50), _pct(xs, 99)
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m promethios_jax.serve.bench", description=__doc__.split("\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--workdir", required=True, help="the run whose held-out prompts are sent")
    p.add_argument("--api_key", default=None)
    p.add_argument("--model", default="promethios")
    p.add_argument("--rate", type=float, default=10.0, help="requests per second (Poisson)")
    p.add_argument("--rates", default=None, help="comma-separated rates to sweep; reports the highest under --slo")
    p.add_argument("--concurrency", type=int, default=None, help="closed loop with this many streams instead")
    p.add_argument("--num_requests", type=int, default=200)
    p.add_argument("--max_tokens", type=int, default=64)
    p.add_argument("--ignore_eos", action="store_true", help="every request generates exactly --max_tokens")
    p.add_argument("--no_stream", action="store_true", help="plain responses (no TTFT or TPOT)")
    p.add_argument("--slo", type=float, default=2.0, help="P99 end-to-end latency target (s) for --rates")
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.num_requests < 1 or a.max_tokens < 1:
        p.error("--num_requests and --max_tokens must be positive")
    url = urllib.parse.urlsplit(a.url)
    if url.scheme != "http" or not url.hostname:
        p.error(f"--url={a.url}: give http://HOST:PORT (this client speaks plain HTTP)")
    a.host, a.port = url.hostname, url.port or 80
    a.request_head = (f"POST {url.path.rstrip('/')}/v1/completions HTTP/1.1\r\nHost: {url.netloc}\r\n"
                      "Content-Type: application/json\r\nConnection: close\r\n"
                      + (f"Authorization: Bearer {a.api_key}\r\n" if a.api_key else "")).encode()
    from promethios_jax.serve.checkpoint_io import heldout_requests

    prompts = heldout_requests(a.workdir, max_tokens=a.max_tokens)
    if not prompts:
        p.error(f"--workdir={a.workdir}: no held-out prompts that leave room for --max_tokens={a.max_tokens}")
    left_out = len(heldout_requests(a.workdir)) - len(prompts)
    if left_out:
        print(f"{left_out} held-out prompts left out: too long for --max_tokens={a.max_tokens} in the context",
              flush=True)
    try:
        httpx.get(a.url + "/ready", timeout=5).raise_for_status()
    except httpx.HTTPError as e:
        p.error(f"--url={a.url} is not ready: {e}")
    results = []
    if a.concurrency:
        results.append(_run(run(a, prompts, concurrency=a.concurrency)))
    else:
        for rate in ([float(x) for x in a.rates.split(",")] if a.rates else [a.rate]):
            results.append(_run(run(a, prompts, rate=rate)))
    keys = ("mode", "requests", "errors", "requests_per_s", "output_tokens_per_s", "ttft_p50_s", "ttft_p99_s",
            "tpot_p50_s", "tpot_p99_s", "e2e_p50_s", "e2e_p99_s")
    for r in results:
        print("  ".join(f"{k}={r[k]}" for k in keys), flush=True)
    final = results[0] if len(results) == 1 else {
        "sweep": results, "slo_p99_e2e_s": a.slo,
        "max_rate_within_slo": max((float(r["mode"].split("=")[1][:-2]) for r in results
                                    if r["errors"] == 0 and r["e2e_p99_s"] is not None and r["e2e_p99_s"] < a.slo),
                                   default=None)}
    print(json.dumps(final))
    return 0


if __name__ == "__main__":
    sys.exit(main())
