"""Events and their sinks (JSONL, OpenTelemetry, Prometheus, redaction).

The sinks are imported on first use (``baton.observe.JSONLSink`` works as usual): a run
that records no JSONL or metrics should not pay their import time.
redact() itself stays in baton.observe.redact: exporting it here would shadow that module.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from baton.observe.events import Event, EventStream

if TYPE_CHECKING:
    from baton.observe.jsonl import JSONLSink, read_events
    from baton.observe.metrics import MetricsSink, serve_metrics
    from baton.observe.otel import OTelSink, configure_tracing
    from baton.observe.otlp import otlp_span_exporter
    from baton.observe.progress import ProgressSink
    from baton.observe.redact import register_env_secrets, register_secret

_LAZY = {
    "JSONLSink": "jsonl", "read_events": "jsonl",
    "MetricsSink": "metrics", "serve_metrics": "metrics",
    "OTelSink": "otel", "configure_tracing": "otel",
    "otlp_span_exporter": "otlp",
    "ProgressSink": "progress",
    "register_env_secrets": "redact", "register_secret": "redact",
}

__all__ = ["Event", "EventStream", "JSONLSink", "MetricsSink", "OTelSink", "ProgressSink", "configure_tracing",
           "otlp_span_exporter", "read_events", "register_env_secrets", "register_secret", "serve_metrics"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'baton.observe' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"baton.observe.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value
