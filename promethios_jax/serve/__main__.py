"""`python -m promethios_jax.serve --workdir=DIR [--step N] [--host H --port P] [--api_keys_file F]`.

Loads the checkpoint, starts listening at once (/health is live, /ready is 503 until
every prompt bucket and the decode step are compiled), serves, and on SIGTERM or
SIGINT drains: /ready turns 503, new requests get 503, requests in flight finish (up to
--drain_timeout seconds), then the process exits 0. A second signal exits at once.
"""
from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
import time

import uvicorn

from promethios_jax.serve.api import Settings, ServerState, create_app, read_api_keys

log = logging.getLogger("promethios_jax.serve")


class _DrainingServer(uvicorn.Server):
    """uvicorn, but a signal starts a drain instead of closing the listener at once."""

    def __init__(self, config, state: ServerState):
        super().__init__(config)
        self.state = state

    def handle_exit(self, sig, frame) -> None:
        if self.state.draining:
            self.should_exit = True  # a second signal: stop waiting
            return
        self.state.begin_drain()

    async def on_tick(self, counter: int) -> bool:
        if self.state.drained():
            self.should_exit = True
        return await super().on_tick(counter)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m promethios_jax.serve", description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="training run directory (its checkpoints/)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api_keys_file", default=None,
                   help="lines 'KEY_ID KEY' or 'KEY_ID sha256:HEX'; without it only a loopback host is allowed")
    p.add_argument("--allow_unauthenticated", action="store_true",
                   help="bind a non-loopback host without API keys")
    p.add_argument("--num_slots", type=int, default=32, help="decode slots (concurrent generations)")
    p.add_argument("--max_queue", type=int, default=256, help="requests waiting for a slot before 429")
    p.add_argument("--buckets", default=None,
                   help="comma-separated prompt-length buckets (default: powers of two from 32 with 1.5x "
                        "steps between, and the context)")
    p.add_argument("--default_max_tokens", type=int, default=64)
    p.add_argument("--model_name", default="promethios")
    p.add_argument("--audit_log", default=None, help="default WORKDIR/serve/audit.jsonl")
    p.add_argument("--audit_prompts", action="store_true", help="write prompt texts into the audit log")
    p.add_argument("--max_open_escalations", type=int, default=10000)
    p.add_argument("--drain_timeout", type=float, default=30.0)
    p.add_argument("--stream_interval", type=int, default=1,
                   help="tokens per streamed text event (fewer events per token under load)")
    p.add_argument("--compilation_cache", default=None, help="JAX persistent compilation cache directory")
    a = p.parse_args(argv)
    if not 1 <= a.port <= 65535:
        p.error(f"--port={a.port} is not a TCP port")
    if a.num_slots < 1:
        p.error(f"--num_slots={a.num_slots} must be at least 1")
    if a.max_queue < 0:
        p.error(f"--max_queue={a.max_queue} must be at least 0")
    if a.stream_interval < 1:
        p.error(f"--stream_interval={a.stream_interval} must be at least 1")
    if a.default_max_tokens < 1:
        p.error(f"--default_max_tokens={a.default_max_tokens} must be at least 1")
    if a.buckets:
        try:
            a.buckets = tuple(sorted({int(b) for b in a.buckets.split(",")}))
        except ValueError:
            p.error(f"--buckets={a.buckets!r}: give comma-separated integers")
        if a.buckets[0] < 1:
            p.error("--buckets: lengths must be positive")
    a.keys = {}
    if a.api_keys_file:
        try:
            a.keys = read_api_keys(a.api_keys_file)
        except (OSError, ValueError) as e:
            p.error(f"--api_keys_file: {e}")
    elif not _loopback(a.host) and not a.allow_unauthenticated:
        p.error(f"--host={a.host} is reachable from other machines but no --api_keys_file is given; "
                "give keys, or pass --allow_unauthenticated")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True)
    import jax

    if a.compilation_cache:
        jax.config.update("jax_compilation_cache_dir", a.compilation_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    from promethios_jax.checkpoint import CheckpointError
    from promethios_jax.serve import checkpoint_io

    t0 = time.monotonic()
    try:
        served = checkpoint_io.load(a.workdir, a.step)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.buckets and a.buckets[-1] > served.max_len:
        print(f"error: --buckets: {a.buckets[-1]} is over the model's context of {served.max_len}", file=sys.stderr)
        return 2
    log.info("loaded step %d from %s in %.1fs", served.step, a.workdir, time.monotonic() - t0)
    settings = Settings(num_slots=a.num_slots, max_queue=a.max_queue, buckets=a.buckets,
                        default_max_tokens=a.default_max_tokens, model_name=a.model_name, api_keys=a.keys,
                        audit_path=a.audit_log, log_prompts=a.audit_prompts,
                        max_open_escalations=a.max_open_escalations, drain_timeout=a.drain_timeout,
                        stream_interval=a.stream_interval)
    state = ServerState(served, a.workdir, settings)
    app = create_app(state)
    config = uvicorn.Config(app, host=a.host, port=a.port, log_level="info", timeout_graceful_shutdown=10,
                            access_log=False, log_config=None)
    _DrainingServer(config, state).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
