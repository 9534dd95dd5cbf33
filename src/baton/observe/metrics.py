"""Prometheus metrics from the event stream, and the ``/metrics`` endpoint.

Tokens, cost and model calls are counted from ``model.response`` events (one per
billed call), never from ``agent.end`` totals, so nested agents are not counted twice.
``baton_tokens_total{type="input"}`` is uncached input as Anthropic reports it:
input + cache_read + cache_write is the whole prompt.

Labels are agent, tool, model and target names and error types: bounded sets chosen
by the workflow, never content. They are redacted like everything else.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from baton.errors import UsageError
from baton.observe import events as ev
from baton.observe.capture import defer, drain
from baton.observe.events import Event
from baton.observe.redact import generation, redact_text

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import CollectorRegistry

_PROM_MISSING = "Prometheus metrics need prometheus-client: pip install 'baton-agents[prometheus]'"

BREAKER_STATES = {"closed": 0, "half_open": 1, "half-open": 1, "open": 2}

# Agent calls run from well under a second to many minutes.
EXECUTION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)

_TOKEN_TYPES = (("input", "input_tokens"), ("output", "output_tokens"),
                ("cache_read", "cache_read_input_tokens"), ("cache_write", "cache_creation_input_tokens"))


def _label(value: Any) -> str:
    """A label value: redacted like any text that leaves the process (cached, so cheap)."""
    return redact_text(str(value)) if value is not None and value != "" else "unknown"


class MetricsSink:
    """Count baton events into Prometheus metrics on ``registry`` (its own by default).

    Metrics (all prefixed ``baton_``): ``agent_execution_seconds{agent}`` histogram,
    ``errors_total{agent,type}``, ``tool_calls_total{agent,tool}``,
    ``tokens_total{agent,type}`` (input, output, cache_read, cache_write),
    ``cost_usd_total{agent,model}``, ``model_calls_total{agent,model}``,
    ``retries_total{target}``, ``rate_limit_wait_seconds_total{model}``,
    ``cache_hits_total{agent}``, ``breaker_state{target}`` (0 closed, 1 half-open,
    2 open) and ``runs_total{status}``.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        try:
            from prometheus_client import CollectorRegistry
        except ImportError as exc:
            raise UsageError(_PROM_MISSING) from exc
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        # One set of metrics per registry: several sinks (one per run in a long-lived
        # process) may count into the same registry without clashing.
        with _registry_lock:
            metrics = _by_registry.get(self.registry)
            if metrics is None:
                metrics = _by_registry[self.registry] = _create_metrics(self.registry)
        self.agent_execution_seconds = metrics["agent_execution_seconds"]
        self.errors = metrics["errors"]
        self.tool_calls = metrics["tool_calls"]
        self.tokens = metrics["tokens"]
        self.cost = metrics["cost"]
        self.model_calls = metrics["model_calls"]
        self.retries = metrics["retries"]
        self.rate_limit_wait = metrics["rate_limit_wait"]
        self.cache_hits = metrics["cache_hits"]
        self.breaker_state = metrics["breaker_state"]
        self.runs = metrics["runs"]
        # labels() takes a lock and builds a key each time; children are cached here.
        self._children: dict[tuple[object, ...], Any] = {}
        # The two events of every agent call, by their raw (unredacted) names: their
        # children, found with one lookup. Cleared when the registered secrets change.
        self._response_children: dict[tuple[object, object], tuple[Any, tuple[Any, ...], Any]] = {}
        self._duration_children: dict[object, Any] = {}
        self._generation = generation()

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _fresh(self) -> None:
        """Forget cached label verdicts when the registered secrets changed."""
        if self._generation != generation():
            self._generation = generation()
            self._children.clear()
            self._response_children.clear()
            self._duration_children.clear()

    def _response(self, agent_name: Any, model_name: Any) -> tuple[Any, tuple[Any, ...], Any]:
        try:
            return self._response_children[(agent_name, model_name)]
        except (KeyError, TypeError):  # TypeError: an unhashable name, never cached
            pass
        agent, model = _label(agent_name), _label(model_name)
        children = (self._child(self.model_calls, agent, model),
                    tuple(self._child(self.tokens, agent, label) for label, _ in _TOKEN_TYPES),
                    self._child(self.cost, agent, model))
        if isinstance(agent_name, str | None) and isinstance(model_name, str | None):
            self._response_children[(agent_name, model_name)] = children
        return children

    def handle(self, event: Event) -> None:
        if event.kind in _KINDS and not defer(self, event):
            self.process(event)

    def batch_done(self) -> None:
        """Counters are updated per event; nothing is held per batch."""

    def process(self, event: Event) -> None:
        kind = event.kind
        if kind not in _KINDS:
            return
        self._fresh()
        d = event.data  # only names, numbers and error types are read; each label is redacted
        if kind == ev.MODEL_RESPONSE:
            calls, tokens, cost_child = self._response(d.get("agent"), d.get("model"))
            calls.inc()
            usage = d.get("usage")
            if isinstance(usage, dict):
                for child, (_, field) in zip(tokens, _TOKEN_TYPES, strict=True):
                    n = usage.get(field)
                    if isinstance(n, int | float) and n > 0:
                        child.inc(n)
            cost = d.get("cost_usd")
            if isinstance(cost, int | float) and cost > 0:
                cost_child.inc(cost)
            return
        agent = _label(d.get("agent"))
        if kind == ev.AGENT_END:
            duration = d.get("duration_s")
            if isinstance(duration, int | float):
                name = d.get("agent")
                child = self._duration_children.get(name) if isinstance(name, str) else None
                if child is None:
                    child = self._child(self.agent_execution_seconds, agent)
                    if isinstance(name, str):
                        self._duration_children[name] = child
                child.observe(duration)
            if d.get("status") == "error":
                self._child(self.errors, agent, _label(d.get("error_type") or "error")).inc()
        elif kind == ev.TOOL_CALL:
            self._child(self.tool_calls, agent, _label(d.get("tool"))).inc()
        elif kind == ev.TOOL_RESULT:
            if d.get("is_error"):
                self._child(self.errors, agent, _label(d.get("error_type") or "tool_error")).inc()
        elif kind == ev.MODEL_ERROR:
            self._child(self.errors, agent, _label(d.get("error_type"))).inc()
        elif kind == ev.TOOL_DENIED:
            self._child(self.errors, agent, "tool_denied").inc()
        elif kind == ev.RETRY:
            self._child(self.retries, _label(d.get("target"))).inc()
        elif kind == ev.RATE_LIMIT_WAIT:
            wait = d.get("wait_s")
            if isinstance(wait, int | float) and wait > 0:
                self._child(self.rate_limit_wait, _label(d.get("model"))).inc(wait)
        elif kind == ev.CACHE_HIT:
            self._child(self.cache_hits, agent).inc()
        elif kind == ev.BREAKER_CHANGE:
            state = BREAKER_STATES.get(str(d.get("new")))
            if state is not None:
                self._child(self.breaker_state, _label(d.get("target"))).set(state)
        elif kind == ev.RUN_END and event.parent_id is None:
            self._child(self.runs, _label(d.get("status"))).inc()

    def close(self) -> None:
        """Count what is still queued. Metrics outlive the run (the endpoint may still be scraped)."""
        drain()


_registry_lock = threading.Lock()
_by_registry: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def _create_metrics(r: CollectorRegistry) -> dict[str, Any]:
    from prometheus_client import Counter, Gauge, Histogram

    return {
        "agent_execution_seconds": Histogram("baton_agent_execution_seconds", "Wall time of agent calls, seconds.",
                                             ["agent"], registry=r, buckets=EXECUTION_BUCKETS),
        "errors": Counter("baton_errors_total", "Errors by agent and error type.", ["agent", "type"], registry=r),
        "tool_calls": Counter("baton_tool_calls_total", "Tool calls started.", ["agent", "tool"], registry=r),
        "tokens": Counter("baton_tokens_total", "Tokens by agent and type "
                          "(input is uncached input; cache_read and cache_write are separate).",
                          ["agent", "type"], registry=r),
        "cost": Counter("baton_cost_usd_total", "Cost of model calls, USD (priced models only).",
                        ["agent", "model"], registry=r),
        "model_calls": Counter("baton_model_calls_total", "Model calls that returned a response.",
                               ["agent", "model"], registry=r),
        "retries": Counter("baton_retries_total", "Retries by target (model id or tool name).", ["target"],
                           registry=r),
        "rate_limit_wait": Counter("baton_rate_limit_wait_seconds_total",
                                   "Time spent waiting for rate-limit capacity, seconds.", ["model"], registry=r),
        "cache_hits": Counter("baton_cache_hits_total", "Model calls answered from the cache.", ["agent"],
                              registry=r),
        "breaker_state": Gauge("baton_breaker_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
                               ["target"], registry=r),
        "runs": Counter("baton_runs_total", "Runs finished, by final status.", ["status"], registry=r),
    }


_KINDS = frozenset({ev.MODEL_RESPONSE, ev.AGENT_END, ev.TOOL_CALL, ev.TOOL_RESULT, ev.MODEL_ERROR,
                    ev.TOOL_DENIED, ev.RETRY, ev.RATE_LIMIT_WAIT, ev.CACHE_HIT, ev.BREAKER_CHANGE, ev.RUN_END})


@dataclass
class MetricsServer:
    """A running ``/metrics`` endpoint. ``close()`` stops it and frees the port."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    @property
    def url(self) -> str:
        host = str(self.server.server_address[0])
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_metrics(port: int, registry: CollectorRegistry, *, addr: str = "127.0.0.1") -> MetricsServer:
    """Serve ``registry`` at ``http://addr:port/metrics`` from a daemon thread (port 0: any free port).

    Binds to loopback by default; pass ``addr="0.0.0.0"`` for a scraper on another host.
    """
    try:
        from prometheus_client import start_http_server
    except ImportError as exc:
        raise UsageError(_PROM_MISSING) from exc
    try:
        server, thread = start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        raise UsageError(f"cannot serve metrics on {addr}:{port}: {exc.strerror or exc}") from exc
    return MetricsServer(server, thread)
