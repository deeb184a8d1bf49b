"""Prometheus metrics of the server (names follow vLLM's set, under `promethios_`)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)
_TOKEN = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)


class ServerMetrics:
    def __init__(self, num_slots: int):
        r = self.registry = CollectorRegistry()
        self.ttft = Histogram("promethios_time_to_first_token_seconds", "Arrival to first output token.",
                              registry=r, buckets=_LATENCY)
        self.itl = Histogram("promethios_inter_token_latency_seconds", "Time between output tokens of a request.",
                             registry=r, buckets=_TOKEN)
        self.e2e = Histogram("promethios_e2e_request_latency_seconds", "Arrival to last token.", registry=r,
                             buckets=_LATENCY)
        self.queue = Histogram("promethios_request_queue_time_seconds", "Arrival to prefill.", registry=r,
                               buckets=_LATENCY)
        self.running = Gauge("promethios_num_requests_running", "Requests holding a decode slot.", registry=r)
        self.waiting = Gauge("promethios_num_requests_waiting", "Requests waiting for a slot.", registry=r)
        self.slot_usage = Gauge("promethios_slot_usage_ratio", "Share of decode slots in use.", registry=r)
        self.slots = Gauge("promethios_num_slots", "Decode slots.", registry=r)
        self.slots.set(num_slots)
        self.finished = Counter("promethios_request_success", "Finished requests by finish reason.",
                                ["finish_reason"], registry=r)
        self.rejected = Counter("promethios_request_rejected", "Requests refused before generation, by reason.",
                                ["reason"], registry=r)
        self.prompt_tokens = Counter("promethios_prompt_tokens", "Prefilled prompt tokens.", registry=r)
        self.generation_tokens = Counter("promethios_generation_tokens", "Generated tokens.", registry=r)
        self.escalations = Counter("promethios_escalations", "Escalated requests by domain and decision.",
                                   ["domain", "decision"], registry=r)
        self.escalations_dropped = Counter("promethios_escalations_not_kept",
                                           "Escalations not stored because the store was full.", registry=r)
        self.num_slots = num_slots

    def observe_engine(self, running: int, waiting: int) -> None:
        self.running.set(running)
        self.waiting.set(waiting)
        self.slot_usage.set(running / self.num_slots)

    def observe_done(self, req) -> None:
        """Latencies of a finished engine request (monotonic timestamps set by the engine)."""
        if req.t_admitted is not None:
            self.queue.observe(req.t_admitted - req.t_arrival)
            self.prompt_tokens.inc(len(req.prompt_ids))
        if req.t_first is not None:
            self.ttft.observe(req.t_first - req.t_arrival)
        self.e2e.observe(req.t_done - req.t_arrival)
        self.generation_tokens.inc(len(req.output_ids))
        self.finished.labels(req.finish_reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
