"""The private parts of the OpenTelemetry SDK and OTLP exporter that the fast span path uses.

``OTelSink`` builds finished spans without the SDK's live-span machinery, and
``configure_tracing("otlp")`` queues spans already encoded (``otel.py``, ``otlp.py``).
Both read attributes the SDK does not promise to keep. Every one of them is listed
here and checked against the live objects before the fast path is taken; when one is
missing (an SDK release moved it), the sink warns once and takes the stock SDK path,
which gives the same spans more slowly. ``tests/test_otel_layout.py`` runs the same
checks against the installed SDK, so a release that breaks them fails loudly there.
pyproject pins ``opentelemetry-sdk`` and the OTLP exporter below the next minor version
that has not been checked.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import warnings
from typing import Any

log = logging.getLogger("baton.observe")

PROVIDER_ATTRS = ("_span_limits", "_active_span_processor", "resource", "sampler")
"""``TracerProvider``: limits, the multi-processor, and what each span carries."""
SPAN_LIMITS_ATTRS = ("max_events", "max_span_attributes", "max_span_attribute_length", "max_attribute_length")
TRACER_ATTRS = ("_is_enabled", "_instrumentation_scope", "instrumentation_info", "_tracer_metrics")
"""SDK ``Tracer``: whether it records, its scope, and the SDK's own span metrics (must be off)."""
MULTI_PROCESSOR_ATTRS = ("_span_processors",)
PARENT_BASED_ATTRS = ("_root", "_remote_parent_sampled", "_local_parent_sampled", "_remote_parent_not_sampled",
                      "_local_parent_not_sampled")
"""``ParentBased``: its delegates, to know that children follow their parent."""
READABLE_SPAN_PARAMS = ("name", "context", "parent", "resource", "attributes", "events", "kind", "status",
                        "start_time", "end_time", "instrumentation_info", "instrumentation_scope")
SPAN_EVENT_PARAMS = ("name", "attributes", "timestamp")
BATCH_PROCESSOR_ATTRS = ("span_exporter", "_batch_processor")
"""``BatchSpanProcessor``: its exporter, and the queue that encoded spans are emitted into."""
QUEUE_ATTRS = ("emit",)
EXPORTER_ATTRS = ("_client", "_metrics", "_shutdown", "_max_request_size")
"""``OTLPSpanExporter``: the HTTP client (retries, TLS, compression), its metrics, its state."""
MODULES = ("opentelemetry.sdk.trace._tracer_metrics",)
"""Private modules imported by name (``NoOpTracerMetrics``: the SDK's span metrics are off)."""
OPTIONAL_ATTRS = ("_on_ending",)
"""Read with a default: where the SDK has no such hook, there is nothing to keep up with."""

ALL_PRIVATE = frozenset(name for group in (PROVIDER_ATTRS, TRACER_ATTRS, MULTI_PROCESSOR_ATTRS, PARENT_BASED_ATTRS,
                                            BATCH_PROCESSOR_ATTRS, EXPORTER_ATTRS, OPTIONAL_ATTRS)
                        for name in group if name.startswith("_"))
"""Every private attribute name the fast path reads (a test checks the code reads no other)."""

_warned: set[str] = set()


def _missing(obj: Any, attrs: tuple[str, ...], what: str) -> list[str]:
    return [f"{what}.{name}" for name in attrs if not hasattr(obj, name)]


def _missing_params(fn: Any, params: tuple[str, ...], what: str) -> list[str]:
    try:
        known = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return [f"{what}(...): signature unreadable"]
    return [f"{what}({name}=)" for name in params if name not in known]


def sdk_problems(provider: Any, tracer: Any) -> list[str]:
    """What the span fast path needs from this provider and tracer and does not find (empty: all there)."""
    problems = list(_sdk_class_problems())
    problems += _missing(provider, PROVIDER_ATTRS, "TracerProvider")
    problems += _missing(getattr(provider, "_span_limits", None), SPAN_LIMITS_ATTRS, "TracerProvider._span_limits")
    problems += _missing(getattr(provider, "_active_span_processor", None), MULTI_PROCESSOR_ATTRS,
                         "TracerProvider._active_span_processor")
    return problems + _missing(tracer, TRACER_ATTRS, "Tracer")


@functools.cache
def _sdk_class_problems() -> tuple[str, ...]:
    """The checks that depend only on the installed SDK, once per process."""
    problems: list[str] = []
    for module in MODULES:
        try:
            importlib.import_module(module)
        except ImportError:
            problems.append(f"module {module}")
    try:
        from opentelemetry.sdk.trace import Event, ReadableSpan
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
        from opentelemetry.sdk.util import BoundedList
    except ImportError as exc:
        return (*problems, f"import: {exc}")
    problems += _missing(ParentBased(ALWAYS_ON), PARENT_BASED_ATTRS, "ParentBased")
    problems += _missing_params(ReadableSpan, READABLE_SPAN_PARAMS, "ReadableSpan")
    problems += _missing_params(Event, SPAN_EVENT_PARAMS, "Event")
    problems += _missing(BoundedList(1), ("dropped",), "BoundedList")
    return tuple(problems)


def batch_problems(processor: Any) -> list[str]:
    """What queueing encoded spans needs from a ``BatchSpanProcessor`` and does not find."""
    problems = _missing(processor, BATCH_PROCESSOR_ATTRS, "BatchSpanProcessor")
    return problems + _missing(getattr(processor, "_batch_processor", None), QUEUE_ATTRS,
                               "BatchSpanProcessor._batch_processor")


def exporter_problems(exporter: Any) -> list[str]:
    """What baton's encoder needs from an ``OTLPSpanExporter`` and does not find."""
    problems = _missing(exporter, EXPORTER_ATTRS, "OTLPSpanExporter")
    problems += _missing(getattr(exporter, "_client", None), ("export",), "OTLPSpanExporter._client")
    return problems + _missing(getattr(exporter, "_metrics", None), ("export_operation",),
                               "OTLPSpanExporter._metrics")


def layout_ok(problems: list[str], path: str) -> bool:
    """True when nothing is missing; otherwise warn (once per distinct layout) that ``path`` is
    off and the stock SDK path is used."""
    if not problems:
        return True
    message = (f"baton: the installed OpenTelemetry SDK/exporter lacks what the {path} uses "
               f"({', '.join(problems)}); using the stock SDK path (same spans, more CPU)")
    if message not in _warned:
        _warned.add(message)
        log.warning("%s", message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    return False
