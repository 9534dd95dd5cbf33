"""``/metrics``: the event-stream metrics of every run plus the service's own."""

from __future__ import annotations

from typing import Any


class ServerMetrics:
    """HTTP, queue and waiting-line metrics on the same registry as the runs' ``MetricsSink``."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        from baton.observe.metrics import MetricsSink

        self.registry = CollectorRegistry(auto_describe=True)
        self.sink = MetricsSink(self.registry)
        r = self.registry
        self.requests = Counter("baton_http_requests_total", "HTTP requests by method, route and status.",
                                ["method", "route", "status"], registry=r)
        self.latency = Histogram("baton_http_request_seconds", "HTTP request duration, seconds.",
                                 ["method", "route"], registry=r,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.queue = Counter("baton_queue_messages_total", "Queue messages by outcome (stored, duplicate, "
                             "dead_lettered, claimed).", ["outcome"], registry=r)
        self.intake = Counter("baton_runs_accepted_total", "Runs stored at intake, by source.", ["source"],
                              registry=r)
        self.waiting = Gauge("baton_runs_waiting", "Runs waiting for a slot (--max-runs).", registry=r)
        self.active = Gauge("baton_runs_active", "Runs this service is executing.", registry=r)

    def http(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def render(self, waiting: int, active: int) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        from baton.observe.capture import drain

        drain()
        self.waiting.set(waiting)
        self.active.set(active)
        out: Any = generate_latest(self.registry)
        return bytes(out), CONTENT_TYPE_LATEST
