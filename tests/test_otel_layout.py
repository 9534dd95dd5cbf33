"""The OpenTelemetry fast path reads private SDK and exporter attributes: every one is listed in
``baton.observe.otel_layout`` and checked here against the installed SDK, so a release that moves
one fails loudly; at run time a missing one makes the sink warn and take the stock SDK path."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk.trace")

from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

from baton.observe import otel_layout  # noqa: E402
from baton.observe.otel import OTelSink, configure_tracing  # noqa: E402
from test_observe_sinks import _normalized, emit_all, scripted_run  # noqa: E402

OBSERVE = Path(otel_layout.__file__).parent
# ``x._name`` on anything but self/cls itself (``self._a._name`` counts), and getattr(x, "_name").
_ATTRIBUTE = re.compile(r"(?:\b(?!self\b|cls\b)[a-z_]\w*|\bself\._\w+|\])\.(_[a-z]\w*)")
_GETATTR = re.compile(r"getattr\([^,]+,\s*\"(_[a-z]\w*)\"")
_LISTED_ATTR = re.compile(r"for name in \(((?:\"_\w+\",?\s*)+)\)")


def test_the_installed_sdk_has_every_private_part_the_fast_path_reads() -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    provider = configure_tracing("otlp", endpoint="http://127.0.0.1:9/v1/traces", service_name="layout")
    assert provider is not None
    try:
        (processor,) = provider._active_span_processor._span_processors
        tracer = provider.get_tracer("baton")
        assert otel_layout.sdk_problems(provider, tracer) == []
        assert otel_layout.batch_problems(processor) == []
        assert otel_layout.exporter_problems(processor.span_exporter) == []
        sink = OTelSink(provider)
        assert sink._fast is not None and sink._fast._direct is not None  # the fast path is on
    finally:
        provider.shutdown()


def test_the_code_reads_no_private_attribute_the_layout_does_not_list() -> None:
    read: set[str] = set()
    for module in ("otel.py", "otlp.py"):
        source = (OBSERVE / module).read_text()
        read |= set(_ATTRIBUTE.findall(source)) | set(_GETATTR.findall(source))
        for group in _LISTED_ATTR.findall(source):
            read |= set(re.findall(r"_\w+", group))
    own = {"_fast", "_direct", "_tracer", "_spans"}  # the sink's own fields, read across its classes
    assert read - own, "the scan found nothing: the patterns no longer match the code"
    assert sorted(read - own - otel_layout.ALL_PRIVATE) == []


def test_each_missing_attribute_is_named() -> None:
    class Bare:
        pass

    problems = otel_layout.sdk_problems(Bare(), Bare())
    for name in ("_span_limits", "_active_span_processor", "_is_enabled", "_instrumentation_scope"):
        assert any(p.endswith("." + name) for p in problems), name
    assert "OTLPSpanExporter._client" in otel_layout.exporter_problems(Bare())
    assert "BatchSpanProcessor._batch_processor" in otel_layout.batch_problems(Bare())


def test_a_changed_sdk_layout_falls_back_to_the_stock_path_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    def traced(exporter: InMemorySpanExporter) -> Any:
        provider = TracerProvider(shutdown_on_exit=False)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        return OTelSink(provider)

    reference = InMemorySpanExporter()
    fast = traced(reference)
    assert fast._fast is not None
    emit_all([fast], scripted_run())
    # A release that moved a private module: the sink must notice, say so, and still trace.
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace._tracer_metrics", None)
    otel_layout._sdk_class_problems.cache_clear()
    monkeypatch.setattr(otel_layout, "_warned", set())
    try:
        exporter = InMemorySpanExporter()
        with pytest.warns(RuntimeWarning, match=r"_tracer_metrics.*stock SDK path"):
            stock = traced(exporter)
        assert stock._fast is None
        emit_all([stock], scripted_run())
    finally:
        otel_layout._sdk_class_problems.cache_clear()
    assert len(exporter.get_finished_spans()) == 8
    assert _normalized(exporter.get_finished_spans()) == _normalized(reference.get_finished_spans())
