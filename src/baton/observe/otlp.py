"""OTLP/HTTP span export that writes the protobuf bytes directly.

The stock OTLP exporter builds two protobuf objects per attribute (a ``KeyValue`` and
an ``AnyValue``) and then serializes them: about 5 µs per attribute, which made
encoding the largest single cost of tracing an agent call. ``encode_spans`` writes the
same ``ExportTraceServiceRequest`` wire format by hand, caching the bytes of attributes
that repeat (operation names, agent and model names). The result parses to the same
message as the stock encoder's (the tests check it field for field).

``otlp_span_exporter()`` builds the stock ``OTLPSpanExporter`` (same endpoint,
headers, TLS, compression, retries and ``OTEL_EXPORTER_OTLP_*`` variables) with only
the encoding replaced; on an exporter version whose internals it does not know, it
falls back to the stock ``export``.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping, Sequence
from typing import Any

log = logging.getLogger("baton.observe")

_SMALL = [bytes((n,)) for n in range(128)]
_pack_double = struct.Struct("<d").pack
_pack_fixed64 = struct.Struct("<Q").pack
_pack_fixed32 = struct.Struct("<I").pack

# OTLP SpanFlags: the parent's "is remote" is known (0x100) and whether it is (0x200).
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200
_SPAN_KINDS = {"INTERNAL": 1, "SERVER": 2, "CLIENT": 3, "PRODUCER": 4, "CONSUMER": 5}

_CACHE_MAX = 8192
# Encoded attribute fields (tag, length and KeyValue) per field tag, then per value type: str,
# int and tuples of str (kept apart so that True, 1 and 1.0 never share an entry). Names,
# small counts and finish reasons repeat.
_field_caches: dict[bytes, dict[type, dict[tuple[str, Any], bytes]]] = {}
_key_prefixes: dict[str, bytes] = {}


def _int64(n: int) -> bytes:
    if not -(1 << 63) <= n < 1 << 63:
        raise OverflowError(f"{n} does not fit in an int64")
    return b"\x18" + _varint(n)


def _varint(n: int) -> bytes:
    if 0 <= n < 128:
        return _SMALL[n]
    if n < 0:
        n += 1 << 64  # int64: two's complement, ten bytes
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    n = len(payload)
    return tag + (_SMALL[n] if n < 128 else _varint(n)) + payload


def _string(tag: bytes, text: str) -> bytes:
    return _field(tag, text.encode())  # invalid text (lone surrogates) raises, as in the stock encoder


def _any_value(value: Any) -> bytes:
    """An ``AnyValue`` message, as the stock encoder builds it."""
    if value is None:
        return b""
    if value is True:
        return b"\x10\x01"
    if value is False:
        return b"\x10\x00"
    t = type(value)
    if t is str:
        return _string(b"\x0a", value)
    if t is int:
        return _int64(value)
    if t is float:
        return b"\x21" + _pack_double(value)
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _string(b"\x0a", str(value))
    if isinstance(value, int):
        return _int64(int(value))
    if isinstance(value, float):
        return b"\x21" + _pack_double(float(value))
    if isinstance(value, bytes):
        return _field(b"\x3a", value)
    if isinstance(value, Sequence):
        return _field(b"\x2a", b"".join(_field(b"\x0a", _any_value(v)) for v in value))
    if isinstance(value, Mapping):
        return _field(b"\x32", b"".join(_field(b"\x0a", _key_value(str(k), v)) for k, v in value.items()))
    raise TypeError(f"invalid attribute value type {type(value).__name__}")


def _key_value(key: str, value: Any) -> bytes:
    return _key_prefix(key) + _field(b"\x12", _any_value(value))


def _key_prefix(key: str) -> bytes:
    """The KeyValue's encoded key field; keys repeat, so they are encoded once."""
    return _cached_string(_key_prefixes, b"\x0a", key)


def _cached_string(cache: dict[str, bytes], tag: bytes, text: str) -> bytes:
    """``_string(tag, text)``, kept in ``cache`` (bounded) for text that repeats."""
    encoded = cache.get(text)
    if encoded is None:
        encoded = _string(tag, text)
        if len(cache) < _CACHE_MAX:
            cache[text] = encoded
    return encoded


def _encode_attribute(tag: bytes, key: str, value: Any) -> bytes:
    """One attribute as a complete field (tag, length, KeyValue)."""
    prefix = _key_prefixes.get(key) or _key_prefix(key)
    t = type(value)
    if t is str:
        raw = value.encode()
        n = len(raw)
        kv_len = len(prefix) + n + 4  # prefix, 0x12, AnyValue length, 0x0a, string length, string
        if kv_len < 128:  # every length fits in one byte: the usual short name or id
            return b"".join((tag, _SMALL[kv_len], prefix, b"\x12", _SMALL[n + 2], b"\x0a", _SMALL[n], raw))
    elif t is int:
        number = _int64(value)
        kv_len = len(prefix) + len(number) + 2
        if kv_len < 128:
            return b"".join((tag, _SMALL[kv_len], prefix, b"\x12", _SMALL[len(number)], number))
    elif t is float:
        kv_len = len(prefix) + 11  # prefix, 0x12, 9, 0x21, 8 bytes
        if kv_len < 128:
            return b"".join((tag, _SMALL[kv_len], prefix, b"\x12\x09\x21", _pack_double(value)))
    elif t is tuple and all(type(v) is str for v in value):  # e.g. finish reasons
        items = b"".join(_field(b"\x0a", _string(b"\x0a", v)) for v in value)
        return _field(tag, prefix + _field(b"\x12", _field(b"\x2a", items)))
    return _field(tag, prefix + _field(b"\x12", _any_value(value)))


# Keys seen with this many different values stop being cached (ids, step keys, token counts).
_DISTINCT_MAX = 512
_distinct: dict[str, int] = {}


def _attributes(tag: bytes, attributes: Mapping[str, Any] | None, out: list[bytes]) -> None:
    if not attributes:
        return
    caches = _field_caches.get(tag)
    if caches is None:
        caches = _field_caches[tag] = {str: {}, int: {}, tuple: {}}
    for key, value in attributes.items():
        cache = caches.get(type(value))
        if cache is not None:
            encoded = cache.get((key, value))
            if encoded is not None:
                out.append(encoded)
                continue
        try:
            encoded = _encode_attribute(tag, key, value)
        except (TypeError, ValueError, OverflowError) as exc:  # the stock encoder logs and skips too
            log.warning("OTLP: cannot encode attribute %s: %s", key, exc)
            continue
        out.append(encoded)
        if cache is not None and len(encoded) < 128:
            seen = _distinct.get(key, 0)
            if seen < _DISTINCT_MAX and (type(value) is not tuple or all(type(v) is str for v in value)):
                _distinct[key] = seen + 1
                if len(cache) >= _CACHE_MAX:
                    cache.clear()
                    _distinct.clear()
                cache[(key, value)] = encoded


def is_fast_exporter(exporter: Any) -> bool:
    """Whether ``exporter`` is one ``otlp_span_exporter()`` built (it takes spans already encoded)."""
    return bool(_exporter_class) and type(exporter) is _exporter_class[0]


def _flags(parent: Any) -> bytes:
    flags = _HAS_IS_REMOTE | (_IS_REMOTE if parent is not None and parent.is_remote else 0)
    return _pack_fixed32(flags)


_LOCAL_FLAGS = b"\x85\x01" + _pack_fixed32(_HAS_IS_REMOTE)  # span field 16 (fixed32)
_REMOTE_PARENT_FLAGS = b"\x85\x01" + _pack_fixed32(_HAS_IS_REMOTE | _IS_REMOTE)


def _trace_state(state: Any) -> str:
    return ",".join(f"{key}={value}" for key, value in state.items()) if state else ""


_kind_fields: dict[int, bytes] = {}  # id(SpanKind member) -> the encoded kind field
# Consecutive spans share a trace: (trace id, its encoded field), replaced whole (exporter threads).
_last_trace: list[tuple[int, bytes]] = [(0, b"")]


def _kind_field(kind: Any) -> bytes:
    encoded = _kind_fields.get(id(kind))
    if encoded is None:  # enum members are singletons; their id is a stable key
        encoded = _kind_fields[id(kind)] = b"\x30" + _SMALL[_SPAN_KINDS.get(kind.name, 0)]
    return encoded


def _encode_span(span: Any) -> bytes:
    context = span.get_span_context()
    return encode_span_fields(
        context.trace_id, context.span_id, context.trace_state, span.parent, span.name, span.kind,
        span.start_time, span.end_time, span.attributes, span.events, span.status,
        dropped_attributes=span.dropped_attributes, dropped_events=span.dropped_events, links=span.links,
        dropped_links=span.dropped_links)


def encode_span_fields(trace_id: int, span_id: int, trace_state: Any, parent: Any, name: str, kind: Any,
                       start_ns: int | None, end_ns: int | None, attributes: Mapping[str, Any] | None,
                       events: Sequence[Any] | None, status: Any, *, dropped_attributes: int = 0,
                       dropped_events: int = 0, links: Sequence[Any] | None = None, dropped_links: int = 0) -> bytes:
    """One ``Span`` message from its fields (``parent`` a ``SpanContext`` or None, ``status``
    a ``Status`` or None for unset). Baton's span sink encodes its spans with this as they
    end, without building a ``ReadableSpan``; ``encode_spans`` uses it for SDK spans."""
    last = _last_trace[0]
    if last[0] != trace_id:
        last = _last_trace[0] = (trace_id, b"\x0a\x10" + trace_id.to_bytes(16, "big"))
    out = [last[1], b"\x12\x08" + span_id.to_bytes(8, "big")]
    if trace_state:
        out.append(_string(b"\x1a", _trace_state(trace_state)))
    if parent:
        out.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
    if name:
        out.append(_name_field(name))
    out.append(_kind_field(kind))
    if start_ns:
        out.append(b"\x39" + _pack_fixed64(start_ns))
    if end_ns:
        out.append(b"\x41" + _pack_fixed64(end_ns))
    _attributes(b"\x4a", attributes, out)
    if dropped_attributes:
        out.append(b"\x50" + _varint(dropped_attributes))
    if events:
        for event in events:
            out.append(_field(b"\x5a", _encode_event(event)))
    if dropped_events:
        out.append(b"\x60" + _varint(dropped_events))
    if links:
        for link in links:
            out.append(_field(b"\x6a", _encode_link(link)))
    if dropped_links:
        out.append(b"\x70" + _varint(dropped_links))
    out.append(_UNSET_STATUS if status is None else _field(b"\x7a", _encode_status(status)))
    out.append(_REMOTE_PARENT_FLAGS if parent is not None and parent.is_remote else _LOCAL_FLAGS)
    return _field(b"\x12", b"".join(out))  # as a ScopeSpans.spans entry


_UNSET_STATUS = b"\x7a\x00"
_names: dict[str, bytes] = {}  # span names repeat ("chat claude-...", "invoke_agent researcher")


def _name_field(name: str) -> bytes:
    return _cached_string(_names, b"\x2a", name)


def _encode_event(event: Any) -> bytes:
    out = [b"\x09" + _pack_fixed64(event.timestamp)] if event.timestamp else []
    if event.name:
        out.append(_string(b"\x12", event.name))
    _attributes(b"\x1a", event.attributes, out)
    if event.dropped_attributes:
        out.append(b"\x20" + _varint(event.dropped_attributes))
    return b"".join(out)


def _encode_link(link: Any) -> bytes:
    context = link.context
    out = [b"\x0a\x10", context.trace_id.to_bytes(16, "big"), b"\x12\x08", context.span_id.to_bytes(8, "big")]
    _attributes(b"\x22", link.attributes, out)
    if link.dropped_attributes:
        out.append(b"\x28" + _varint(link.dropped_attributes))
    out.append(b"\x35" + _flags(context))
    return b"".join(out)


def _encode_status(status: Any) -> bytes:
    out = []
    if status.description:
        out.append(_string(b"\x12", status.description))
    if status.status_code.value:
        out.append(b"\x18" + _varint(status.status_code.value))
    return b"".join(out)


def _encode_resource(resource: Any) -> bytes:
    out: list[bytes] = []
    _attributes(b"\x0a", resource.attributes, out)
    return b"".join(out)


def _encode_scope(scope: Any) -> bytes:
    if scope is None:
        return b""
    out = []
    if scope.name:
        out.append(_string(b"\x0a", scope.name))
    if scope.version:
        out.append(_string(b"\x12", scope.version))
    _attributes(b"\x1a", scope.attributes, out)
    return b"".join(out)


def encode_spans(spans: Sequence[Any], encoded_as: tuple[Any, Any] | None = None) -> bytes:
    """The serialized ``ExportTraceServiceRequest`` for ``spans`` (SDK ``ReadableSpan``s).

    Spans are grouped by resource, then instrumentation scope, in first-seen order, as
    the stock encoder groups them. ``(count, bytes)`` items are ``count`` spans already
    encoded (by ``encode_span_fields``, concatenated) for the ``(resource, scope)`` in
    ``encoded_as``.
    """
    # Keyed by identity first: hashing a Resource serializes it to JSON, and every span
    # of a provider shares one Resource object.
    groups: dict[int, dict[Any, list[bytes]]] = {}
    group_of: dict[int, int] = {}  # id(resource) -> its group; the spans keep the objects alive
    resources: dict[int, Any] = {}
    by_value: dict[Any, int] = {}
    for span in spans:
        if type(span) is tuple:
            if encoded_as is None:
                raise ValueError("encoded spans need the resource and scope they were encoded for")
            resource, scope, encoded = encoded_as[0], encoded_as[1], span[1]
        else:
            resource, scope, encoded = span.resource, span.instrumentation_scope, _encode_span(span)
        rid = group_of.get(id(resource))
        if rid is None:  # a Resource object not seen yet: hashed once, merged with an equal one
            rid = group_of[id(resource)] = by_value.setdefault(resource, id(resource))
            resources.setdefault(rid, resource)
        groups.setdefault(rid, {}).setdefault(scope or None, []).append(encoded)
    out = []
    for rid, scopes in groups.items():
        resource = resources[rid]
        body = [_field(b"\x0a", _encode_resource(resource))]
        for scope, encoded in scopes.items():
            scope_body = [_field(b"\x0a", _encode_scope(scope)), *encoded]
            if scope is not None and scope.schema_url:
                scope_body.append(_string(b"\x1a", scope.schema_url))
            body.append(_field(b"\x12", b"".join(scope_body)))
        if resource.schema_url:
            body.append(_string(b"\x1a", resource.schema_url))
        out.append(_field(b"\x0a", b"".join(body)))
    return b"".join(out)


MAX_SPANS_PER_ITEM = 512
"""The most spans in one encoded batch-queue item (the SDK's default export batch size)."""


def span_count(items: Sequence[Any]) -> int:
    """Spans in a batch of ``ReadableSpan`` and ``(count, bytes)`` items."""
    return sum(item[0] if type(item) is tuple else 1 for item in items)


def export_requests(items: Sequence[Any], max_spans: int = MAX_SPANS_PER_ITEM) -> list[list[Any]]:
    """``items`` cut into requests of at most about ``max_spans`` spans (an item is never split)."""
    requests: list[list[Any]] = [[]]
    spans = 0
    for item in items:
        n = item[0] if type(item) is tuple else 1
        if spans and spans + n > max_spans:
            requests.append([])
            spans = 0
        requests[-1].append(item)
        spans += n
    return requests


_exporter_class: list[type] = []


def otlp_span_exporter(**kwargs: Any) -> Any:
    """The stock ``OTLPSpanExporter`` (same arguments) encoding with ``encode_spans``.

    What ``configure_tracing("otlp")`` uses; build it yourself to put baton's encoder in
    a ``TracerProvider`` you configure. Needs ``pip install 'baton-agents[otlp]'``
    (raises ``ImportError`` without it).
    """
    if not _exporter_class:
        _exporter_class.append(_define_exporter())
    return _exporter_class[0](**kwargs)


def _define_exporter() -> type:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    class FastOTLPSpanExporter(OTLPSpanExporter):  # type: ignore[misc]
        """The stock OTLP/HTTP exporter with ``encode_spans`` as its encoder.

        ``encoded_as`` is the (resource, scope) of the spans that baton's sink queues
        already encoded, as ``(count, bytes)`` items, set by the sink; other spans arrive
        as ``ReadableSpan``.
        """

        encoded_as: tuple[Any, Any] | None = None

        def export(self, spans: Sequence[Any]) -> Any:
            client: Any = getattr(self, "_client", None)
            metrics: Any = getattr(self, "_metrics", None)
            if client is None or getattr(self, "_shutdown", True) or not hasattr(metrics, "export_operation") \
                    or not hasattr(client, "export"):
                if any(type(span) is tuple for span in spans):  # the stock export cannot take encoded items
                    log.error("OTLP: dropping %d encoded spans: the exporter is shut down or of a version "
                              "baton does not know", span_count(spans))
                    return SpanExportResult.FAILURE
                return super().export(spans)  # shut down, or an exporter version this code does not know
            result = SpanExportResult.SUCCESS
            for request in export_requests(spans):
                if self._send(client, metrics, request) is not SpanExportResult.SUCCESS:
                    result = SpanExportResult.FAILURE
            return result

        def _send(self, client: Any, metrics: Any, spans: list[Any]) -> Any:
            with metrics.export_operation(span_count(spans)) as result:  # the exporter's own metrics, as stock
                try:
                    data = encode_spans(spans, self.encoded_as)
                except Exception as exc:  # a span from other instrumentation that cannot be encoded
                    log.error("OTLP: failed to encode a span batch: %s", exc)
                    result.error = exc
                    return SpanExportResult.FAILURE
                limit = getattr(self, "_max_request_size", 0) or 0
                if 0 < limit < len(data):
                    log.warning("OTLP: dropping a span batch of %d bytes (max_request_size %d)", len(data), limit)
                    result.error = ValueError(f"span batch of {len(data)} bytes exceeds max_request_size {limit}")
                    return SpanExportResult.FAILURE
                sent = client.export(data)  # retries, compression, headers and TLS as stock
                if not sent.success:
                    result.error = sent.error
                    status = getattr(sent, "status_code", None)
                    if status is not None:
                        result.error_attrs = {"http.response.status_code": status}
                    return SpanExportResult.FAILURE
            return SpanExportResult.SUCCESS

    return FastOTLPSpanExporter
