"""OpenTelemetry sink: baton's start/end event pairs become real spans.

The span tree is run -> agent (-> nested agent) -> model call / tool call / step, with
GenAI semantic-convention attributes (``gen_ai.*``) plus ``baton.*`` ones. Nothing is
exported unless you say where: pass a ``TracerProvider`` you configured, or build one
with ``configure_tracing("otlp" | "console")``. Without one the global provider is used,
which is a no-op until your application installs a real one.

Span times come from event timestamps, so a span's duration is what the runtime saw.
An end event whose start this sink never saw (a resumed run, a sink added late) still
becomes a span, back-dated by its duration; point events (retry, rate-limit wait, ...)
become span events on the nearest open span, and are dropped when there is none.

With the SDK's ``TracerProvider`` (the usual case) spans skip the SDK's span machinery:
each start/end event pair becomes one finished ``ReadableSpan``, its attributes set
once as a plain dict, handed to the provider's span processors exactly as
``Span.end()`` does. Span and trace ids are baton's own (hex, as in the JSONL log), so
a span can be found from a log line. A ``ParentBased`` sampler (the default, or e.g.
``ParentBased(TraceIdRatioBased(0.1))``) is asked once per trace, for its root span.
Anything that needs the live SDK span (another sampler, a processor with an
``on_start``, attribute length limits) keeps the SDK path; the spans come out the same.
So does an SDK whose private parts this path reads have moved (``otel_layout``: checked
before the fast path is taken, with a warning when it is not).
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import orjson

from baton.errors import UsageError
from baton.observe import events as ev
from baton.observe.capture import defer, drain, sanitized, sanitized_text
from baton.observe.events import Event
from baton.observe.otel_layout import batch_problems, exporter_problems, layout_ok, sdk_problems
from baton.observe.otlp import MAX_SPANS_PER_ITEM, encode_span_fields, is_fast_exporter
from baton.observe.redact import Capture, check_capture

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span
    from opentelemetry.trace import TracerProvider as APITracerProvider

_OTEL_MISSING = "OpenTelemetry tracing needs the SDK: pip install 'baton-agents[otel]'"
_OTLP_MISSING = "the OTLP exporter is not installed: pip install 'baton-agents[otlp]'"

_ERROR_STATUSES = frozenset({"error", "failed"})
_TEMPLATES_MAX = 1024  # cached names and attribute templates per sink (agents x models: small in practice)

# Content fields and the attribute each becomes under capture="full", per event kind.
_CONTENT_ATTRS: dict[str, dict[str, str]] = {
    ev.MODEL_REQUEST: {"messages": "gen_ai.input.messages", "system": "gen_ai.system_instructions"},
    ev.MODEL_RESPONSE: {"output": "gen_ai.output.messages"},
    ev.TOOL_CALL: {"input": "gen_ai.tool.call.arguments", "arguments": "gen_ai.tool.call.arguments"},
    ev.TOOL_RESULT: {"output": "gen_ai.tool.call.result"},
    ev.AGENT_START: {"input": "baton.agent.input"},
    ev.AGENT_END: {"output": "baton.agent.output"},
    ev.RUN_START: {"input": "baton.run.input"},
    ev.RUN_END: {"output": "baton.run.output"},
}


def _ns(ts: float) -> int:
    return int(ts * 1e9)


def _attr_value(value: Any) -> Any:
    """An OTel attribute value: primitives as is, string lists as tuples (as the SDK stores them), else JSON."""
    if isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS, default=str).decode()


# The keys of a sanitized event's data -> its size fields (``messages_chars``) and their
# attributes (``baton.messages_chars``).
_size_fields: dict[tuple[Any, ...], tuple[tuple[Any, str], ...]] = {}


def _find_size_fields(keys: tuple[Any, ...]) -> tuple[tuple[Any, str], ...]:
    fields = tuple((key, f"baton.{key}") for key in keys
                   if isinstance(key, str) and key.endswith(("_chars", "_count")))
    if len(_size_fields) >= 4096:
        _size_fields.clear()
    _size_fields[keys] = fields
    return fields


def _add_usage(attrs: dict[str, Any], usage: Any) -> None:
    """Token attributes. Per the GenAI conventions ``gen_ai.usage.input_tokens`` is all
    input, cached included; Anthropic reports the uncached part, so the three are summed."""
    if not isinstance(usage, dict):
        return
    read = usage.get("cache_read_input_tokens") or 0
    write = usage.get("cache_creation_input_tokens") or 0
    attrs["gen_ai.usage.input_tokens"] = int(usage.get("input_tokens") or 0) + int(read) + int(write)
    attrs["gen_ai.usage.output_tokens"] = int(usage.get("output_tokens") or 0)
    attrs["gen_ai.usage.cache_read.input_tokens"] = int(read)
    attrs["gen_ai.usage.cache_creation.input_tokens"] = int(write)


def _per_span(template: dict[str, Any], data: dict[str, Any], count: str, attr: str) -> dict[str, Any]:
    """A copy of a cached attribute template plus what differs per span: the step key and one count."""
    attrs = template.copy()
    key = data.get("key")
    if key is not None:
        attrs["baton.step_key"] = str(key)
    value = data.get(count)
    if isinstance(value, int):
        attrs[attr] = value
    return attrs


def _hex_id(text: str, hex_chars: int) -> int:
    """Baton's hex id as an OTel id, or a random one when it is not a valid id of that size."""
    if len(text) == hex_chars:
        try:
            value = int(text, 16)
        except ValueError:
            pass
        else:
            if value:
                return value
    return random.getrandbits(hex_chars * 4) or 1


def _root_sampler(sampler: Any) -> Any:
    """None for always-on samplers, the sampler for a ``ParentBased`` one whose children follow
    their parent (the default delegates: only roots are asked), False for anything else."""
    from opentelemetry.sdk.trace import sampling

    if sampler is sampling.ALWAYS_ON:
        return None
    if not isinstance(sampler, sampling.ParentBased) or type(sampler).should_sample is not \
            sampling.ParentBased.should_sample:
        return False
    delegates = [getattr(sampler, name, None) for name in ("_remote_parent_sampled", "_local_parent_sampled",
                                                            "_remote_parent_not_sampled", "_local_parent_not_sampled")]
    if delegates != [sampling.ALWAYS_ON, sampling.ALWAYS_ON, sampling.ALWAYS_OFF, sampling.ALWAYS_OFF]:
        return False
    return None if getattr(sampler, "_root", None) is sampling.ALWAYS_ON else sampler


class _FastSpan:
    """The part of the SDK ``Span`` API the sink uses, recorded in plain fields.

    ``end`` turns it into one ``ReadableSpan`` for the span processors (or encodes it
    directly, see ``_DirectQueue``): no per-attribute validation (the sink only sets str,
    bool, int, float and str tuples), no locks. It carries its ids itself, as a
    ``SpanContext`` would (``parent`` is a ``_FastSpan`` or the caller's ``SpanContext``):
    one object per open span, the ``SpanContext`` built only when a ``ReadableSpan`` is.
    """

    __slots__ = ("_tracer", "name", "trace_id", "span_id", "trace_flags", "trace_state", "parent", "kind", "attrs",
                 "events", "start_ns", "status")
    is_remote = False  # as a parent: baton's spans are local

    def __init__(self, tracer: _FastTracer, name: str, trace_id: int, span_id: int, trace_flags: Any,
                 trace_state: Any, parent: Any, kind: Any, attrs: dict[str, Any], start_ns: int) -> None:
        self._tracer = tracer
        self.name = name
        self.trace_id = trace_id
        self.span_id = span_id
        self.trace_flags = trace_flags
        self.trace_state = trace_state
        self.parent = parent
        self.kind = kind
        self.attrs = attrs
        self.events: Any = None
        self.start_ns = start_ns
        self.status: Any = None

    def get_span_context(self) -> Any:
        return self._tracer.span_context(self.trace_id, self.span_id, False, self.trace_flags, self.trace_state)

    def set_attribute(self, key: str, value: Any) -> None:
        self.attrs[key] = value

    def set_attributes(self, attrs: dict[str, Any]) -> None:
        self.attrs.update(attrs)

    def set_status(self, status: Any) -> None:
        self.status = status

    def add_event(self, name: str, attributes: dict[str, Any], timestamp: int) -> None:
        tracer = self._tracer
        if self.events is None:
            self.events = tracer.bounded_list(tracer.max_events)
        self.events.append(tracer.event_cls(name, attributes, timestamp))

    def end(self, end_time: int) -> None:
        self._tracer.finish(self, end_time)


class _FastTracer:
    """Builds finished spans straight from baton's events for an SDK ``TracerProvider``."""

    def __init__(self, provider: Any, tracer: Any) -> None:
        from opentelemetry import trace
        from opentelemetry.context import Context
        from opentelemetry.sdk.trace import Event as SpanEvent
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.sdk.util import BoundedList

        self._processor = provider._active_span_processor
        self._direct = _DirectQueue.of(provider, tracer)
        self._resource = provider.resource
        self._scope = tracer._instrumentation_scope
        self._info = tracer.instrumentation_info
        self._readable = ReadableSpan
        self.span_context = trace.SpanContext
        self._unset = trace.Status(trace.StatusCode.UNSET)
        self._trace = trace
        self.event_cls = SpanEvent
        self.bounded_list = BoundedList
        self.max_events = provider._span_limits.max_events
        root = _root_sampler(provider.sampler)
        self._sampler: Any = None if root is None or root is False else provider.sampler
        random_flag = getattr(trace.TraceFlags, "RANDOM_TRACE_ID", 0)
        self._root_flags = trace.TraceFlags(trace.TraceFlags.SAMPLED | random_flag)
        self._root_unsampled = trace.TraceFlags(random_flag)
        self._no_parent = Context()  # roots are asked with an empty context: no parent to follow

    @staticmethod
    def usable(provider: Any, tracer: Any) -> bool:
        """Whether spans can be built without the SDK's live-span machinery and still come out the same."""
        try:
            from opentelemetry.sdk.trace import SpanProcessor, Tracer, TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        except ImportError:  # an SDK older or newer than this code knows
            return False
        if not isinstance(provider, TracerProvider) or type(tracer) is not Tracer:
            return False
        if not layout_ok(sdk_problems(provider, tracer), "span fast path") or not tracer._is_enabled():
            return False
        from opentelemetry.sdk.trace._tracer_metrics import NoOpTracerMetrics  # checked just above

        if not isinstance(getattr(tracer, "_tracer_metrics", None), NoOpTracerMetrics):
            return False  # the SDK's own span metrics are on: they hook span start and end
        if _root_sampler(provider.sampler) is False:
            return False
        limits = provider._span_limits
        if limits.max_span_attribute_length is not None or limits.max_attribute_length is not None \
                or (limits.max_span_attributes is not None and limits.max_span_attributes < 64):
            return False
        processors = getattr(provider._active_span_processor, "_span_processors", None)
        if processors is None:
            return False
        noop_start = {SpanProcessor.on_start, BatchSpanProcessor.on_start, SimpleSpanProcessor.on_start}
        noop_ending = {getattr(c, "_on_ending", None) for c in (SpanProcessor, BatchSpanProcessor, SimpleSpanProcessor)}
        return all(type(p).on_start in noop_start and getattr(type(p), "_on_ending", None) in noop_ending
                   for p in processors)

    def start(self, name: str, parent: Any, kind: Any, attrs: dict[str, Any], start_ns: int,
              span_id: str, trace_id: str) -> _FastSpan:
        """A span under ``parent`` (a ``_FastSpan``, the caller's valid ``SpanContext``, or None)."""
        if parent is not None:  # the parent's sampling decision holds (ParentBased's default delegates)
            return _FastSpan(self, name, parent.trace_id, _hex_id(span_id, 16), parent.trace_flags,
                             parent.trace_state, parent, kind, attrs, start_ns)
        trace_id_ = _hex_id(trace_id, 32)
        flags, state = self._root_flags, None
        if self._sampler is not None:  # e.g. ParentBased(TraceIdRatioBased(0.1)): asked once per trace
            result = self._sampler.should_sample(self._no_parent, trace_id_, name, kind, attrs)
            flags = self._root_flags if result.decision.is_sampled() else self._root_unsampled
            state = result.trace_state
        return _FastSpan(self, name, trace_id_, _hex_id(span_id, 16), flags, state, None, kind, attrs, start_ns)

    def flush(self) -> None:
        """Hand the spans encoded since the last call to the batch queue."""
        if self._direct is not None:
            self._direct.flush()

    def finish(self, span: _FastSpan, end_ns: int) -> None:
        if not span.trace_flags.sampled:
            return  # under an unsampled caller span: processors would drop it
        direct = self._direct
        events = span.events
        if direct is not None and direct.current():
            direct.add(encode_span_fields(
                span.trace_id, span.span_id, span.trace_state, span.parent, span.name, span.kind,
                span.start_ns, end_ns, span.attrs, events, span.status,
                dropped_events=events.dropped if events else 0))
            return
        parent = span.parent
        self._processor.on_end(self._readable(
            name=span.name, context=span.get_span_context(), resource=self._resource,
            parent=parent.get_span_context() if type(parent) is _FastSpan else parent,
            attributes=span.attrs, events=events or (), kind=span.kind,
            instrumentation_info=self._info, status=span.status or self._unset,
            start_time=span.start_ns, end_time=end_ns, instrumentation_scope=self._scope))


class _DirectQueue:
    """The batch queue of the provider ``configure_tracing("otlp")`` builds, for spans encoded as they end.

    Its exporter encodes a batch anyway; with the spans already encoded, no ``ReadableSpan``
    is built and the queue holds bytes (no work for the garbage collector) instead of span
    objects. The spans ended in one event-loop iteration go into the queue as one item,
    ``(count, bytes)``: the queue's ``emit`` checks the process id, a system call, per item.
    Used only while that batch processor is the provider's one span processor.
    """

    def __init__(self, processors: Any, processor: Any, emit: Callable[[tuple[int, bytes]], None]) -> None:
        self._processors = processors
        self._processor = processor
        self._emit = emit
        self._pending: list[bytes] = []

    @classmethod
    def of(cls, provider: Any, tracer: Any) -> _DirectQueue | None:
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        processors = getattr(provider._active_span_processor, "_span_processors", None)
        if not isinstance(processors, tuple) or len(processors) != 1 or type(processors[0]) is not BatchSpanProcessor:
            return None
        exporter: Any = getattr(processors[0], "span_exporter", None)
        emit = getattr(getattr(processors[0], "_batch_processor", None), "emit", None)
        if not is_fast_exporter(exporter):
            return None
        if not layout_ok(batch_problems(processors[0]) + exporter_problems(exporter), "encoded span queue") \
                or not callable(emit):
            return None
        group = (provider.resource, tracer._instrumentation_scope)
        if exporter.encoded_as is None:
            exporter.encoded_as = group
        elif exporter.encoded_as[0] is not group[0] or exporter.encoded_as[1] != group[1]:
            return None  # another provider's or tracer's spans already go through this exporter
        return cls(processors, provider._active_span_processor, emit)

    def current(self) -> bool:
        """False once another span processor was added: from then on spans go through all of them."""
        return self._processor._span_processors is self._processors

    def add(self, encoded: bytes) -> None:
        self._pending.append(encoded)

    def flush(self) -> None:
        pending = self._pending
        while pending:
            chunk = pending[:MAX_SPANS_PER_ITEM]
            del pending[:MAX_SPANS_PER_ITEM]
            self._emit((len(chunk), b"".join(chunk)))


class OTelSink:
    """Build OpenTelemetry spans from baton events.

    ``capture`` decides which content reaches span attributes (``metadata``: only
    sizes such as ``baton.input_chars``; ``full``: ``gen_ai.input.messages``,
    ``gen_ai.tool.call.arguments``, ...; secrets are masked in every mode).
    ``provider_name`` is the ``gen_ai.provider.name`` for model calls whose event does
    not say (``provider`` in the event data wins).
    """

    def __init__(self, tracer_provider: APITracerProvider | None = None, capture: Capture = "metadata", *,
                 provider_name: str = "anthropic") -> None:
        try:
            from opentelemetry import context as context_api
            from opentelemetry import trace
        except ImportError as exc:
            raise UsageError(_OTEL_MISSING) from exc
        self.capture: Capture = check_capture(capture)
        self.provider_name = provider_name
        self.dropped_events = 0
        self._trace = trace
        self._context_api = context_api
        self._outer: dict[int, Any] = {}  # id(root event) -> the OTel context current when it was emitted
        self._outer_now: Any = None  # that context for the event being processed
        self._provider = tracer_provider
        source = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
        self._tracer = source.get_tracer("baton")
        self._fast = _FastTracer(source, self._tracer) if _FastTracer.usable(source, self._tracer) else None
        self._spans: dict[str, Span | _FastSpan] = {}
        self._run_id = ("", "")  # the last run id seen and its redacted form
        self._names: dict[tuple[str, Any], str] = {}
        # The attributes every span of one agent (or one agent's model) starts with, copied per span.
        self._agent_templates: dict[Any, dict[str, Any]] = {}
        self._model_templates: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._run_spans: dict[str, str] = {}  # run_id -> run span id, for events with no open parent
        self._handlers: dict[str, Callable[[Event, dict[str, Any]], None]] = {
            ev.RUN_START: self._run_start, ev.RUN_END: self._run_end,
            ev.AGENT_START: self._agent_start, ev.AGENT_END: self._agent_end,
            ev.MODEL_REQUEST: self._model_request, ev.MODEL_RESPONSE: self._model_end,
            ev.MODEL_ERROR: self._model_end,
            ev.TOOL_CALL: self._tool_call, ev.TOOL_RESULT: self._tool_result,
            ev.STEP_START: self._step_start, ev.STEP_END: self._step_end,
        }

    # --- dispatch ----------------------------------------------------------------------

    def handle(self, event: Event) -> None:
        if defer(self, event):
            if event.parent_id is None:
                self.note_root(event)
        else:
            self.process(event)
            self.batch_done()

    def note_root(self, event: Event) -> None:
        """A root span nests under the caller's current span: note it at emit, while the emitting
        code's context is current (the span is built later, at the end of the loop iteration)."""
        self._outer[id(event)] = self._context_api.get_current()

    def process(self, event: Event) -> None:
        self._outer_now = self._outer.pop(id(event), None) if self._outer else None
        data = sanitized(event, self.capture)
        handler = self._handlers.get(event.kind)
        if handler is None:
            self._point(event, data)
        else:
            handler(event, data)

    def batch_done(self) -> None:
        """Spans go to the span processors as they end; spans encoded directly, once per batch."""
        if self._fast is not None:
            self._fast.flush()

    def close(self) -> None:
        """End spans still open (a crashed or suspended run) and flush the provider."""
        drain()
        now = _ns(time.time())
        for span in list(self._spans.values()):
            span.set_attribute("baton.incomplete", True)
            span.end(end_time=now)
        self._spans.clear()
        self._run_spans.clear()
        self.batch_done()
        flush = getattr(self._provider, "force_flush", None)
        if callable(flush):
            flush(5000)

    # --- span plumbing -------------------------------------------------------------------

    def _parent(self, event: Event) -> Span | _FastSpan | None:
        if event.parent_id is not None:
            parent = self._spans.get(event.parent_id)
            if parent is not None:
                return parent
        run_span = self._run_spans.get(event.run_id)
        return self._spans.get(run_span) if run_span is not None else None

    def _start(self, event: Event, name: str, attrs: dict[str, Any], *, client: bool = False,
               start_ts: float | None = None) -> Span | _FastSpan:
        trace = self._trace
        parent = self._parent(event)
        kind = trace.SpanKind.CLIENT if client else trace.SpanKind.INTERNAL
        run_id = self._run_id
        if run_id[0] != event.run_id:
            run_id = self._run_id = (event.run_id, sanitized_text(event.run_id))
        attrs["baton.run_id"] = run_id[1]
        start_ns = _ns(event.ts if start_ts is None else start_ts)
        # With no baton parent, the OTel context current when the event was emitted is the
        # parent: a run started inside a traced web request nests under that request's span.
        if self._fast is not None:
            if parent is None:
                outer = trace.get_current_span(self._outer_now).get_span_context()
                parent = outer if outer.is_valid else None
            return self._fast.start(name, parent, kind, attrs, start_ns, event.span_id, event.trace_id)
        context = trace.set_span_in_context(parent) if parent is not None else self._outer_now  # type: ignore[arg-type]
        return self._tracer.start_span(name, context=context, kind=kind, attributes=attrs, start_time=start_ns)

    def _open(self, event: Event, name: str, attrs: dict[str, Any], *, client: bool = False) -> None:
        if event.span_id in self._spans:  # a repeated start: keep the first
            return
        self._spans[event.span_id] = self._start(event, name, attrs, client=client)

    def _close(self, event: Event, restart: Callable[[], tuple[str, dict[str, Any]]], end_attrs: dict[str, Any],
               *, error: str | None, duration_s: Any, client: bool = False) -> None:
        span = self._spans.pop(event.span_id, None)
        if span is None:
            # The start was never seen here: back-date a span from the end event alone.
            back = float(duration_s) if isinstance(duration_s, int | float) else 0.0
            name, start_attrs = restart()
            span = self._start(event, name, start_attrs, client=client, start_ts=event.ts - back)
        span.set_attributes(end_attrs)
        if error is not None:
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, error))
            span.set_attribute("error.type", error)
        span.end(end_time=_ns(event.ts))

    def _name(self, operation: str, target: Any) -> str:
        """``"chat claude-..."``-style span names, cached: a handful of agents and models repeat."""
        cacheable = isinstance(target, str | None)
        name = self._names.get((operation, target)) if cacheable else None
        if name is None:
            name = f"{operation} {target or ''}".rstrip()
            if cacheable and len(self._names) < _TEMPLATES_MAX:
                self._names[(operation, target)] = name
        return name

    def _content(self, kind: str, data: dict[str, Any], attrs: dict[str, Any]) -> dict[str, Any]:
        if self.capture == "full":
            for field, attr in _CONTENT_ATTRS.get(kind, {}).items():
                value = data.get(field)
                if value is not None:
                    attrs[attr] = _attr_value(value)
        elif self.capture == "metadata":
            keys = tuple(data)  # events of one kind share their keys: the size fields are found once per shape
            sizes = _size_fields.get(keys)
            if sizes is None:
                sizes = _find_size_fields(keys)
            for key, attr in sizes:
                value = data[key]
                if type(value) is int:
                    attrs[attr] = value
        return attrs

    # --- run -------------------------------------------------------------------------------

    def _run_attrs(self, data: dict[str, Any]) -> dict[str, Any]:
        attrs: dict[str, Any] = {"gen_ai.operation.name": "invoke_workflow"}
        if data.get("workflow"):
            attrs["gen_ai.workflow.name"] = str(data["workflow"])
        return attrs

    def _run_name(self, data: dict[str, Any]) -> str:
        workflow = data.get("workflow")
        return f"invoke_workflow {workflow}" if workflow else "invoke_workflow"

    def _run_start(self, event: Event, data: dict[str, Any]) -> None:
        attrs = self._run_attrs(data)
        attrs["baton.trace_id"] = event.trace_id
        self._open(event, self._run_name(data), self._content(event.kind, data, attrs))
        self._run_spans.setdefault(event.run_id, event.span_id)

    def _run_end(self, event: Event, data: dict[str, Any]) -> None:
        status = str(data.get("status") or "")
        attrs: dict[str, Any] = {"baton.status": status}
        _add_usage(attrs, data.get("usage"))
        for key in ("cost_usd", "model_calls", "duration_s"):
            if isinstance(data.get(key), int | float):
                attrs[f"baton.{key}"] = data[key]
        error = None
        if status in _ERROR_STATUSES:
            err = data.get("error")
            error = str(err.get("type") if isinstance(err, dict) and err.get("type") else status)
        if self._run_spans.get(event.run_id) == event.span_id:
            del self._run_spans[event.run_id]
        self._close(event, lambda: (self._run_name(data), self._run_attrs(data)),
                    self._content(event.kind, data, attrs), error=error, duration_s=data.get("duration_s"))

    # --- agents ----------------------------------------------------------------------------

    def _agent_attrs(self, data: dict[str, Any]) -> dict[str, Any]:
        agent = data.get("agent")
        try:
            template = self._agent_templates[agent]
        except (KeyError, TypeError):  # TypeError: an unhashable name, never cached
            template = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": str(agent or "")}
            if isinstance(agent, str | None) and len(self._agent_templates) < _TEMPLATES_MAX:
                self._agent_templates[agent] = template
        return _per_span(template, data, "depth", "baton.depth")

    def _agent_start(self, event: Event, data: dict[str, Any]) -> None:
        attrs = self._content(event.kind, data, self._agent_attrs(data))
        self._open(event, self._name("invoke_agent", data.get("agent")), attrs)

    def _agent_end(self, event: Event, data: dict[str, Any]) -> None:
        status = data.get("status")
        attrs: dict[str, Any] = {"baton.status": str(status or "")}
        _add_usage(attrs, data.get("usage"))
        cost = data.get("cost_usd")
        if isinstance(cost, int | float):
            attrs["baton.cost_usd"] = cost
        error = str(data.get("error_type") or "error") if status in _ERROR_STATUSES else None
        self._close(event, lambda: (self._name("invoke_agent", data.get("agent")), self._agent_attrs(data)),
                    self._content(event.kind, data, attrs), error=error, duration_s=data.get("duration_s"))

    # --- model calls -----------------------------------------------------------------------

    def _model_attrs(self, data: dict[str, Any]) -> dict[str, Any]:
        model, provider, agent = data.get("model"), data.get("provider"), data.get("agent")
        version, max_tokens = data.get("prompt_version"), data.get("max_tokens")
        key = (model, provider, agent, version, max_tokens)
        try:
            template = self._model_templates[key]
        except (KeyError, TypeError):  # TypeError: an unhashable value, never cached
            name = str(provider or self.provider_name)
            template = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": name, "gen_ai.system": name,
                        "gen_ai.request.model": str(model or ""), "gen_ai.agent.name": str(agent or "")}
            if version is not None:
                template["baton.prompt_version"] = str(version)
            if isinstance(max_tokens, int):
                template["gen_ai.request.max_tokens"] = max_tokens
            if all(isinstance(v, str | int | None) for v in key) and len(self._model_templates) < _TEMPLATES_MAX:
                self._model_templates[key] = template
        return _per_span(template, data, "attempt", "baton.attempt")

    def _model_request(self, event: Event, data: dict[str, Any]) -> None:
        attrs = self._content(event.kind, data, self._model_attrs(data))
        self._open(event, self._name("chat", data.get("model")), attrs, client=True)

    def _model_end(self, event: Event, data: dict[str, Any]) -> None:
        attrs: dict[str, Any] = {}
        error = None
        if event.kind == ev.MODEL_RESPONSE:
            _add_usage(attrs, data.get("usage"))
            attrs["gen_ai.response.model"] = str(data.get("response_model") or data.get("model") or "")
            stop_reason = data.get("stop_reason")
            if stop_reason:
                attrs["gen_ai.response.finish_reasons"] = (str(stop_reason),)
            request_id = data.get("request_id")
            response_id = data.get("response_id") or request_id
            if response_id:
                attrs["gen_ai.response.id"] = str(response_id)
            if request_id:
                attrs["baton.request_id"] = str(request_id)
            cost = data.get("cost_usd")
            if isinstance(cost, int | float):
                attrs["baton.cost_usd"] = cost
        else:
            error = str(data.get("error_type") or "error")
            if isinstance(data.get("status"), int):
                attrs["http.response.status_code"] = data["status"]
            if isinstance(data.get("retryable"), bool):
                attrs["baton.retryable"] = data["retryable"]
        self._close(event, lambda: (self._name("chat", data.get("model")), self._model_attrs(data)),
                    self._content(event.kind, data, attrs), error=error,
                    duration_s=data.get("latency_s"), client=True)

    # --- tools and steps -------------------------------------------------------------------

    def _tool_attrs(self, data: dict[str, Any]) -> dict[str, Any]:
        attrs: dict[str, Any] = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.type": "function",
                                 "gen_ai.tool.name": str(data.get("tool") or ""),
                                 "gen_ai.agent.name": str(data.get("agent") or "")}
        call_id = data.get("call_id") or data.get("tool_use_id") or data.get("key")
        if call_id is not None:
            attrs["gen_ai.tool.call.id"] = str(call_id)
        if data.get("key") is not None:
            attrs["baton.step_key"] = str(data["key"])
        return attrs

    def _tool_call(self, event: Event, data: dict[str, Any]) -> None:
        attrs = self._content(event.kind, data, self._tool_attrs(data))
        self._open(event, self._name("execute_tool", data.get("tool")), attrs)

    def _tool_result(self, event: Event, data: dict[str, Any]) -> None:
        error = str(data.get("error_type") or "tool_error") if data.get("is_error") else None
        attrs: dict[str, Any] = {"baton.is_error": bool(data.get("is_error"))}
        self._close(event, lambda: (self._name("execute_tool", data.get("tool")), self._tool_attrs(data)),
                    self._content(event.kind, data, attrs), error=error, duration_s=data.get("duration_s"))

    def _step_attrs(self, data: dict[str, Any]) -> dict[str, Any]:
        attrs: dict[str, Any] = {"baton.step.name": str(data.get("name") or "")}
        if data.get("key") is not None:
            attrs["baton.step_key"] = str(data["key"])
        return attrs

    def _step_start(self, event: Event, data: dict[str, Any]) -> None:
        self._open(event, self._name("step", data.get("name")), self._step_attrs(data))

    def _step_end(self, event: Event, data: dict[str, Any]) -> None:
        status = str(data.get("status") or "")
        error = status if status in _ERROR_STATUSES else None
        self._close(event, lambda: (self._name("step", data.get("name")), self._step_attrs(data)),
                    {"baton.status": status}, error=error, duration_s=data.get("duration_s"))

    # --- point events ------------------------------------------------------------------------

    def _point(self, event: Event, data: dict[str, Any]) -> None:
        """retry, rate_limit.wait, breaker.change, tool.denied, ... become span events."""
        span = self._spans.get(event.span_id) or self._parent(event)
        if span is None:
            self.dropped_events += 1
            return
        attrs = {key: _attr_value(value) for key, value in data.items() if value is not None}
        span.add_event(event.kind, attributes=attrs, timestamp=_ns(event.ts))


def configure_tracing(exporter: Literal["otlp", "console"] | None, *, endpoint: str | None = None,
                      service_name: str | None = None,
                      headers: dict[str, str] | None = None) -> TracerProvider | None:
    """A ``TracerProvider`` that exports where you say, or ``None`` for no tracing.

    ``"otlp"``: OTLP over HTTP/protobuf to ``endpoint`` (default: the standard
    ``OTEL_EXPORTER_OTLP_ENDPOINT``/``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` variables, else
    ``http://localhost:4318``), batched, through the stock OTLP exporter with baton's
    faster encoder (``baton.observe.otlp``). Needs ``pip install 'baton-agents[otlp]'``.
    ``"console"``: spans as JSON on stderr (stdout stays free for ``--json``).
    There is no default destination: baton never sends traces anywhere on its own.
    The provider is returned, not installed globally; pass it to ``OTelSink`` and call
    its ``shutdown()`` when the process is done.
    """
    if exporter is None:
        return None
    if exporter not in ("otlp", "console"):
        raise UsageError(f"trace exporter must be 'otlp' or 'console', got {exporter!r}")
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SimpleSpanProcessor,
        )
    except ImportError as exc:
        raise UsageError(_OTEL_MISSING) from exc
    name = service_name or os.environ.get("OTEL_SERVICE_NAME") or "baton"
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    if exporter == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
        return provider
    from baton.observe.otlp import otlp_span_exporter

    url = endpoint
    if url is not None and not url.rstrip("/").endswith("/v1/traces"):
        url = url.rstrip("/") + "/v1/traces"  # a base URL, as in OTEL_EXPORTER_OTLP_ENDPOINT
    try:
        exporter_ = otlp_span_exporter(endpoint=url, headers=headers)
    except ImportError as exc:
        raise UsageError(_OTLP_MISSING) from exc
    provider.add_span_processor(BatchSpanProcessor(exporter_))
    return provider
