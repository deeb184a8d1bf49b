"""Load benchmark against a running server: Poisson arrivals of held-out prompts.

    python -m promethios_jax.serve.bench --url=http://127.0.0.1:8000 --workdir=DIR --rate=10 --num_requests=200
    python -m promethios_jax.serve.bench ... --concurrency=32        # closed loop: 32 streams back to back
    python -m promethios_jax.serve.bench ... --rates=5,10,20,40      # the highest rate with P99 e2e < --slo

Every request streams, so time to first token (TTFT) and time per output token (TPOT,
(e2e - TTFT) / (tokens - 1)) are measured at the client. Prints a table and, on its last
line, the result as JSON.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time

import httpx
import numpy as np


def _pct(xs, q):
    return None if not xs else round(float(np.percentile(xs, q)), 4)


async def _one(client, url, headers, body, out: list):
    t0 = time.perf_counter()
    ttft, tokens, err = None, 0, None
    try:
        if body["stream"]:
            async with client.stream("POST", url + "/v1/completions", json=body, headers=headers) as r:
                if r.status_code != 200:
                    err = f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
                else:
                    async for line in r.aiter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        ev = json.loads(line[6:])
                        if "usage" in ev and not ev.get("choices"):
                            tokens = ev["usage"]["completion_tokens"]
                        elif ev["choices"] and ev["choices"][0]["text"] and ttft is None:
                            ttft = time.perf_counter() - t0
        else:  # one response: end-to-end latency only
            r = await client.post(url + "/v1/completions", json=body, headers=headers)
            if r.status_code != 200:
                err = f"HTTP {r.status_code}: {r.text[:200]!r}"
            else:
                tokens = r.json()["usage"]["completion_tokens"]
    except httpx.HTTPError as e:
        err = f"{type(e).__name__}: {e}"
    e2e = time.perf_counter() - t0
    out.append({"ttft": ttft, "e2e": e2e, "tokens": tokens, "error": err,
                "tpot": (e2e - ttft) / (tokens - 1) if ttft is not None and tokens > 1 else None})


def _body(p, a):
    return {"model": a.model, "prompt": p["text"], "telemetry": p["telemetry"], "domain": p["domain"],
            "max_tokens": a.max_tokens, "temperature": 0.0, "stream": not a.no_stream,
            "ignore_eos": a.ignore_eos, **({} if a.no_stream else {"stream_options": {"include_usage": True}})}


async def run(a, prompts, rate=None, concurrency=None) -> dict:
    headers = {"Authorization": f"Bearer {a.api_key}"} if a.api_key else {}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    out: list = []
    rng = random.Random(a.seed)
    async with httpx.AsyncClient(timeout=a.timeout, limits=limits) as client:
        t0 = time.perf_counter()
        if concurrency:
            order = iter(range(a.num_requests))

            async def worker():
                for i in order:
                    await _one(client, a.url, headers, _body(prompts[i % len(prompts)], a), out)
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        else:
            tasks, t = [], t0
            for i in range(a.num_requests):
                t += rng.expovariate(rate)
                await asyncio.sleep(max(0.0, t - time.perf_counter()))
                tasks.append(asyncio.create_task(_one(client, a.url, headers, _body(prompts[i % len(prompts)], a),
                                                     out)))
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
    from promethios_jax.serve.checkpoint_io import heldout_requests

    prompts = heldout_requests(a.workdir)
    if not prompts:
        p.error(f"--workdir={a.workdir}: no held-out prompts")
    try:
        httpx.get(a.url + "/ready", timeout=5).raise_for_status()
    except httpx.HTTPError as e:
        p.error(f"--url={a.url} is not ready: {e}")
    results = []
    if a.concurrency:
        results.append(asyncio.run(run(a, prompts, concurrency=a.concurrency)))
    else:
        for rate in ([float(x) for x in a.rates.split(",")] if a.rates else [a.rate]):
            results.append(asyncio.run(run(a, prompts, rate=rate)))
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
