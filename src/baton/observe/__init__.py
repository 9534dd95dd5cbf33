"""Events and their sinks (JSONL, OpenTelemetry, Prometheus, redaction)."""

from baton.observe.events import Event, EventStream, Sink

__all__ = ["Event", "EventStream", "Sink"]

# Sinks and redaction (each sink imports its optional dependency only when built).
# redact() itself stays in baton.observe.redact: exporting it here would shadow that module.
from baton.observe.jsonl import JSONLSink, read_events  # noqa: E402
from baton.observe.metrics import MetricsServer, MetricsSink, serve_metrics  # noqa: E402
from baton.observe.otel import OTelSink, configure_tracing  # noqa: E402
from baton.observe.otlp import otlp_span_exporter  # noqa: E402
from baton.observe.progress import ProgressSink  # noqa: E402
from baton.observe.redact import Capture, apply_capture, register_env_secrets, register_secret  # noqa: E402

__all__ += ["Capture", "JSONLSink", "MetricsServer", "MetricsSink", "OTelSink", "ProgressSink",
            "apply_capture", "configure_tracing", "otlp_span_exporter", "read_events", "register_env_secrets",
            "register_secret", "serve_metrics"]
