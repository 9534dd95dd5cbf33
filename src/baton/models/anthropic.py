"""Anthropic Messages API adapter: a lean aiohttp client, one HTTP attempt per call.

Why not the official SDK: it allocates pydantic models per response and owns retries;
baton's runtime owns retries, and at high concurrency the adapter's CPU per call is what
limits a single process (see docs/transport.md for the measured numbers). This module
speaks the wire format directly, encodes with orjson, shares one connection pool per endpoint and
event loop with every other adapter and run (``baton.models.pool``),
and maps every failure to ``baton.errors`` with a retry verdict the runtime can act on.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import orjson
from yarl import URL

from baton.errors import ProviderConnectionError, ProviderError, ProviderTimeout, UsageError
from baton.messages import (
    ContentBlock,
    Message,
    ModelRequest,
    ModelResponse,
    TextBlock,
    ToolChoice,
    ToolResultBlock,
    ToolSpec,
    ToolUseBlock,
    Usage,
)
from baton.models._wire import invalid_usage, parse_retry_after, wire_tokens
from baton.models.pool import ConnectionPool, abandon_pool, lease_pool, release_pool

JSON = dict[str, Any]
OnDelta = Callable[[int, str, str], None]
"""Called with (content block index, ``"text"`` or ``"tool_input"``, the new piece) as it arrives."""

DEFAULT_BASE_URL = "https://api.anthropic.com"
RETRYABLE_STATUSES = frozenset({408, 409, 429})
SPEND_LIMIT_CODE = "enforced_spend_limit_reached"
_SSE_ACCEPT = {"accept": "text/event-stream"}
_KEPT_HEADER_PREFIXES = ("anthropic-ratelimit-", "retry-after")
# An error event inside a 200 stream carries only a type; give it the status it would have had.
_STREAM_ERROR_STATUS = {
    "invalid_request_error": 400, "authentication_error": 401, "billing_error": 402,
    "permission_error": 403, "not_found_error": 404, "request_too_large": 413,
    "rate_limit_error": 429, "api_error": 500, "timeout_error": 504, "overloaded_error": 529,
}


# --- request encoding ------------------------------------------------------------------


def _block_to_wire(b: ContentBlock) -> JSON:
    t = type(b)
    if t is TextBlock:
        assert isinstance(b, TextBlock)
        if b.cache_control is None:
            return {"type": "text", "text": b.text}
        return {"type": "text", "text": b.text, "cache_control": b.cache_control}
    if t is ToolUseBlock:
        assert isinstance(b, ToolUseBlock)
        return {"type": "tool_use", "id": b.id, "name": b.name, "input": b.input}
    assert isinstance(b, ToolResultBlock)
    d: JSON = {"type": "tool_result", "tool_use_id": b.tool_use_id, "content": b.content}
    if b.is_error:
        d["is_error"] = True
    if b.cache_control is not None:
        d["cache_control"] = b.cache_control
    return d


def _message_to_wire(m: Message) -> JSON:
    return {"role": m.role, "content": [_block_to_wire(b) for b in m.content]}


def _tool_to_wire(t: ToolSpec) -> JSON:
    d: JSON = {"name": t.name, "description": t.description, "input_schema": t.input_schema}
    if t.cache_control is not None:
        d["cache_control"] = t.cache_control
    return d


def _tool_choice_to_wire(tc: ToolChoice) -> JSON:
    d: JSON = {"type": tc.type}
    if tc.type == "tool":
        d["name"] = tc.name
    if tc.disable_parallel_tool_use and tc.type != "none":
        d["disable_parallel_tool_use"] = True
    return d


def request_to_wire(request: ModelRequest, *, stream: bool = False) -> JSON:
    """The Messages API body for ``request``.

    ``request.metadata["anthropic"]`` (a dict) is merged in last for provider extras
    such as a top-level ``cache_control`` or ``metadata.user_id``; it cannot replace the
    core fields.
    """
    body: JSON = {
        "model": request.model,
        "max_tokens": request.max_tokens,
        "messages": [_message_to_wire(m) for m in request.messages],
    }
    if request.system:
        body["system"] = request.system
    if request.tools:
        body["tools"] = [_tool_to_wire(t) for t in request.tools]
    if request.tool_choice is not None:
        body["tool_choice"] = _tool_choice_to_wire(request.tool_choice)
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.stop_sequences:
        body["stop_sequences"] = request.stop_sequences
    if stream:
        body["stream"] = True
    extra = request.metadata.get("anthropic") if request.metadata else None
    if isinstance(extra, dict):
        for k, v in extra.items():
            body.setdefault(k, v)
    return body


# --- response decoding -----------------------------------------------------------------


def usage_from_wire(u: Mapping[str, Any] | None, request_id: str | None = None) -> Usage:
    """The usage of a response; a count that is not a non-negative integer is a ``ProviderError``."""
    if not u:
        return Usage()
    if not isinstance(u, Mapping):
        raise invalid_usage(f"usage={u!r}", provider="anthropic", request_id=request_id)
    cc = u.get("cache_creation")
    inp, out = u.get("input_tokens"), u.get("output_tokens")
    cw, cr = u.get("cache_creation_input_tokens") or 0, u.get("cache_read_input_tokens") or 0
    h1 = (cc.get("ephemeral_1h_input_tokens") or 0) if isinstance(cc, dict) else 0
    if type(inp) is int and type(out) is int and type(cw) is int and type(cr) is int and type(h1) is int \
            and min(inp, out, cw, cr, h1) >= 0:  # the common case, checked without a call per field
        return Usage(inp, out, cw, cr, h1)

    def count(value: Any, name: str) -> int:
        return wire_tokens(value, name, provider="anthropic", request_id=request_id)

    return Usage(
        count(u.get("input_tokens"), "input_tokens"),
        count(u.get("output_tokens"), "output_tokens"),
        count(u.get("cache_creation_input_tokens"), "cache_creation_input_tokens"),
        count(u.get("cache_read_input_tokens"), "cache_read_input_tokens"),
        count(cc.get("ephemeral_1h_input_tokens"), "cache_creation.ephemeral_1h_input_tokens")
        if isinstance(cc, dict) else 0,
    )


def content_from_wire(blocks: Any) -> list[ContentBlock]:
    """Text and tool_use blocks; other kinds (thinking, server tools) are skipped.

    Raises TypeError naming what is wrong when the body does not have the Messages API's shape
    (``content`` not a list, a block not an object, text not a string...)."""
    if not isinstance(blocks, list):
        raise TypeError(f"'content' is {type(blocks).__name__}, not a list of blocks")
    out: list[ContentBlock] = []
    for b in blocks:
        if not isinstance(b, dict):
            raise TypeError(f"a content block is {type(b).__name__}, not an object")
        kind = b.get("type")
        if kind == "text":
            if not isinstance(b.get("text"), str):
                raise TypeError("a text block's 'text' is not a string")
            out.append(TextBlock(b["text"]))
        elif kind == "tool_use":
            tool_input = b.get("input") or {}
            if not (isinstance(b.get("id"), str) and isinstance(b.get("name"), str) and isinstance(tool_input, dict)):
                raise TypeError("a tool_use block needs a string 'id' and 'name' and an object 'input'")
            out.append(ToolUseBlock(b["id"], b["name"], tool_input))
    return out


def kept_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Only rate-limit and retry-after headers: nothing that could carry credentials."""
    kept: dict[str, str] = {}
    for k, v in headers.items():
        if k[:1] in "aArR":  # the others (content-type, date, server...) are skipped without lowercasing
            lk = k.lower()
            if lk.startswith(_KEPT_HEADER_PREFIXES):
                kept[lk] = v
    return kept


def is_retryable(status: int, should_retry: str | None, error_code: str | None) -> bool:
    """The retry verdict: spend cap never; then ``x-should-retry``; then the status."""
    if error_code == SPEND_LIMIT_CODE:
        return False
    if should_retry is not None:
        flag = should_retry.strip().lower()
        if flag == "true":
            return True
        if flag == "false":
            return False
    return status in RETRYABLE_STATUSES or status >= 500


def status_error(status: int, raw: bytes, headers: Mapping[str, str], *, secret: str | None = None,
                 provider: str = "anthropic") -> ProviderError:
    """Map an HTTP error response (JSON or not) to a ``ProviderError``."""
    error_type: str | None = None
    message: str | None = None
    error_code: str | None = None
    request_id = headers.get("request-id")
    try:
        data = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):
            error_type = err.get("type") if isinstance(err.get("type"), str) else None
            message = str(err.get("message") or "")
            details = err.get("details")
            if isinstance(details, dict) and isinstance(details.get("error_code"), str):
                error_code = details["error_code"]
        request_id = request_id or data.get("request_id")
    if message is None:
        ctype = headers.get("content-type", "unknown content type")
        snippet = " ".join(raw[:300].decode("utf-8", "replace").split())[:200]
        message = f"non-JSON error body ({ctype}): {snippet!r}" if snippet else "empty error body"
    if secret and secret in message:
        message = message.replace(secret, "[REDACTED]")
    text = f"{provider} API error {status}"
    if error_type:
        text += f" {error_type}"
    text += f": {message}"
    if error_code:
        text += f" [{error_code}]"
    if request_id:
        text += f" (request_id={request_id})"
    return ProviderError(
        text,
        status=status,
        error_type=error_type or f"http_{status}",
        request_id=request_id,
        retry_after=parse_retry_after(headers),
        retryable=is_retryable(status, headers.get("x-should-retry"), error_code),
        provider=provider,
    )


# --- SSE (optional streaming mode) -------------------------------------------------------


class _StreamAssembler:
    """Builds the final message from Messages-API SSE events."""

    def __init__(self, on_delta: OnDelta | None = None) -> None:
        self.on_delta = on_delta
        self.message: JSON | None = None
        self.blocks: dict[int, JSON] = {}
        self.partial_json: dict[int, list[str]] = {}
        self.usage: JSON = {}
        self.stop_reason: str | None = None
        self.done = False

    def feed(self, event: str, data: JSON) -> None:
        kind = data.get("type", event)
        if kind == "message_start":
            self.message = data.get("message") or {}
            self.usage.update(self.message.get("usage") or {})
        elif kind == "content_block_start":
            self.blocks[data["index"]] = dict(data.get("content_block") or {})
        elif kind == "content_block_delta":
            idx, delta = data["index"], data.get("delta") or {}
            block = self.blocks.setdefault(idx, {"type": "text", "text": ""})
            dtype = delta.get("type")
            if dtype == "text_delta":
                piece = delta.get("text", "")
                block["text"] = block.get("text", "") + piece
                if self.on_delta is not None and piece:
                    self.on_delta(idx, "text", piece)
            elif dtype == "input_json_delta":
                piece = delta.get("partial_json", "")
                self.partial_json.setdefault(idx, []).append(piece)
                if self.on_delta is not None and piece:
                    self.on_delta(idx, "tool_input", piece)
        elif kind == "content_block_stop":
            idx = data["index"]
            parts = self.partial_json.pop(idx, None)
            if parts is not None:
                joined = "".join(parts)
                self.blocks[idx]["input"] = orjson.loads(joined) if joined else {}
        elif kind == "message_delta":
            delta = data.get("delta") or {}
            self.stop_reason = delta.get("stop_reason") or self.stop_reason
            self.usage.update({k: v for k, v in (data.get("usage") or {}).items() if v is not None})
        elif kind == "message_stop":
            self.done = True

    def result(self) -> JSON:
        msg = dict(self.message or {})
        msg["content"] = [self.blocks[i] for i in sorted(self.blocks)]
        msg["stop_reason"] = self.stop_reason
        msg["usage"] = self.usage
        return msg


# --- the adapter -----------------------------------------------------------------------


class AnthropicModel:
    """Claude over the Messages API. One HTTP attempt per ``complete``; never retries.

    Args:
        api_key: defaults to ``ANTHROPIC_API_KEY``; ``ANTHROPIC_AUTH_TOKEN`` is sent as a
            bearer token when no key is set.
        base_url: defaults to ``ANTHROPIC_BASE_URL`` then ``https://api.anthropic.com``.
        timeout_s: total time for one call; ``ModelRequest.timeout_s`` overrides it.
        connect_timeout_s: time to open a connection.
        max_connections: connections to the endpoint, shared with every adapter in this event loop
            that has the same base URL, credential and limit (``baton.models.pool``); calls beyond it
            wait in line for a free one, and their timeout starts when they get it.
        stream: use SSE under the hood (for very long generations); the result is the
            same ``ModelResponse``, and an in-band ``error`` event raises ``ProviderError``.
    """

    provider = "anthropic"
    streams_deltas = True
    """``complete`` takes ``on_delta`` (the runtime passes one only while someone listens)."""
    supports_batches = True
    """Calls may go through the Message Batches API (``baton.models.anthropic_batch``)."""

    def __init__(self, *, api_key: str | None = None, base_url: str | None = None,
                 timeout_s: float = 600.0, connect_timeout_s: float = 5.0,
                 max_connections: int = 1000, anthropic_version: str = "2023-06-01",
                 stream: bool = False) -> None:
        key = api_key or os.environ.get("ANTHROPIC_API_KEY") or None
        token = None if key else (os.environ.get("ANTHROPIC_AUTH_TOKEN") or None)
        base = (base_url or os.environ.get("ANTHROPIC_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        if not key and not token and base == DEFAULT_BASE_URL:
            raise UsageError("no Anthropic API key: pass api_key= or set ANTHROPIC_API_KEY "
                             "(or ANTHROPIC_AUTH_TOKEN for bearer auth)")
        self.base_url = base
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_connections = max_connections
        self.stream = stream
        self._secret = key or token
        self._url = URL(base + "/v1/messages")
        # Every header the client would otherwise add per call is set once here.
        self._headers: dict[str, str] = {
            "anthropic-version": anthropic_version,
            "content-type": "application/json",
            "accept": "text/event-stream" if stream else "application/json",
            "user-agent": "baton-agents/0.1",
        }
        if key:
            self._headers["x-api-key"] = key
        elif token:
            self._headers["authorization"] = f"Bearer {token}"
        # The timeout starts once the call holds a connection: waiting for one is queueing (see pool.py).
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_timeout_s)
        self._leased: ConnectionPool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"AnthropicModel(base_url={self.base_url!r})"

    def _pool(self) -> ConnectionPool:
        """This loop's shared pool for the endpoint (see ``baton.models.pool``), leased on first use."""
        loop = asyncio.get_running_loop()
        pool = self._leased
        if pool is not None and self._loop is loop and not pool.session.closed:
            return pool
        if pool is not None and self._loop is not loop:
            abandon_pool(pool)  # made on another loop (e.g. an earlier asyncio.run)
        self._leased = lease_pool(self.base_url, self._headers, self.max_connections)
        self._loop = loop
        return self._leased

    async def complete(self, request: ModelRequest, on_delta: OnDelta | None = None) -> ModelResponse:
        """One call. With ``on_delta`` it goes over SSE and ``on_delta`` gets each piece of text or
        tool input as it arrives; the response is the same ``ModelResponse`` either way."""
        stream = self.stream or on_delta is not None
        timeout = self._timeout if request.timeout_s is None else aiohttp.ClientTimeout(
            total=request.timeout_s, sock_connect=min(self.connect_timeout_s, request.timeout_s))
        # The session's accept header follows ``self.stream``; a call streamed for a listener says so itself.
        extra = _SSE_ACCEPT if stream and not self.stream else None
        try:
            async with self._pool().slot() as session:
                # Encoded once the call may be sent: a call waiting in the queue holds no 4 KB orjson buffer.
                body = orjson.dumps(request_to_wire(request, stream=stream))
                async with session.post(self._url, data=body, timeout=timeout, allow_redirects=False,
                                        headers=extra) as resp:
                    status = resp.status
                    headers = resp.headers
                    if status >= 400 or not stream:
                        raw = await resp.read()
                    else:
                        return await self._read_stream(resp, on_delta)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._transport_error(exc, timeout) from exc
        if status >= 300:
            raise status_error(status, raw, headers, secret=self._secret)
        try:
            data = orjson.loads(raw)
            if not isinstance(data, dict):
                raise TypeError(f"the body is {type(data).__name__}, not an object")
            content = content_from_wire(data["content"])
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ProviderError(
                f"anthropic: malformed response body (HTTP {status}; {exc}): {raw[:200]!r}",
                status=status, error_type="invalid_response", request_id=headers.get("request-id"),
                retryable=True) from exc
        return ModelResponse(
            id=data.get("id", ""),
            model=data.get("model", request.model),
            content=content,
            stop_reason=data.get("stop_reason") or "end_turn",
            usage=usage_from_wire(data.get("usage"), headers.get("request-id")),
            request_id=headers.get("request-id") or data.get("request_id"),
            headers=kept_headers(headers),
        )

    def _transport_error(self, exc: BaseException, timeout: aiohttp.ClientTimeout) -> ProviderError:
        """The ``ProviderError`` for a call that got no HTTP answer: which wait ran out, or what broke.
        The timeouts count from holding a pooled connection: waiting in the pool's queue is not failure."""
        if isinstance(exc, aiohttp.ConnectionTimeoutError):  # before TimeoutError: it is one
            return ProviderConnectionError(f"anthropic: cannot connect to {self.base_url}: no connection "
                                           f"within {timeout.sock_connect:g}s")
        if isinstance(exc, TimeoutError):
            return ProviderTimeout(f"anthropic: no response from {self.base_url} within {timeout.total:g}s "
                                   f"of sending the request")
        if isinstance(exc, aiohttp.ClientConnectorError):
            return ProviderConnectionError(f"anthropic: cannot connect to {self.base_url}: {exc.os_error}")
        return ProviderConnectionError(f"anthropic: connection to {self.base_url} failed: {type(exc).__name__}: {exc}")

    async def send_raw(self, method: str, path: str, body: JSON | None = None) -> bytes:
        """One HTTP call to ``path`` under the base URL (the batch endpoints use it): the body of a
        2xx answer; anything else is a ``ProviderError`` with the same verdicts as ``complete``."""
        data = orjson.dumps(body) if body is not None else None
        try:
            async with self._pool().slot() as session, session.request(
                    method, URL(self.base_url + path), data=data, timeout=self._timeout, allow_redirects=False,
                    headers={"accept": "application/json"}) as resp:
                raw, status, headers = await resp.read(), resp.status, resp.headers
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._transport_error(exc, self._timeout) from exc
        if status >= 300:
            raise status_error(status, raw, headers, secret=self._secret)
        return raw

    async def _read_stream(self, resp: aiohttp.ClientResponse, on_delta: OnDelta | None = None) -> ModelResponse:
        """Assemble a streamed message; errors inside the stream become ProviderErrors."""
        request_id = resp.headers.get("request-id")
        asm = _StreamAssembler(on_delta)
        event = ""
        data_lines: list[bytes] = []
        async for line in resp.content:
            line = line.rstrip(b"\r\n")
            if line:
                if line.startswith(b"event:"):
                    event = line[6:].strip().decode()
                elif line.startswith(b"data:"):
                    data_lines.append(line[5:].strip())
                continue
            if not data_lines:
                continue
            try:
                data = orjson.loads(b"\n".join(data_lines))
            except orjson.JSONDecodeError as exc:
                raise ProviderError(f"anthropic: malformed stream event {event!r} (request_id={request_id})",
                                    status=resp.status, error_type="invalid_response",
                                    request_id=request_id, retryable=True) from exc
            data_lines = []
            if event == "error" or data.get("type") == "error":
                err = data.get("error") or {}
                etype = err.get("type") or "api_error"
                status = _STREAM_ERROR_STATUS.get(etype, 500)
                raise ProviderError(
                    f"anthropic stream error {etype}: {err.get('message', '')} (request_id={request_id})",
                    status=status, error_type=etype, request_id=request_id,
                    retryable=is_retryable(status, None, None))
            try:
                asm.feed(event, data)
            except (KeyError, TypeError, orjson.JSONDecodeError) as exc:
                raise ProviderError(f"anthropic: malformed stream event {event!r} (request_id={request_id})",
                                    status=resp.status, error_type="invalid_response",
                                    request_id=request_id, retryable=True) from exc
            if asm.done:
                break
        if not asm.done:
            raise ProviderConnectionError(
                f"anthropic: stream from {self.base_url} ended before message_stop (request_id={request_id})")
        msg = asm.result()
        return ModelResponse(
            id=msg.get("id", ""),
            model=msg.get("model", ""),
            content=content_from_wire(msg["content"]),
            stop_reason=msg.get("stop_reason") or "end_turn",
            usage=usage_from_wire(msg["usage"], request_id),
            request_id=request_id,
            headers=kept_headers(resp.headers),
        )

    async def aclose(self) -> None:
        """Give back this adapter's lease on the shared pool (the last lease closes the session)."""
        pool, self._leased = self._leased, None
        if pool is None:
            return
        if self._loop is asyncio.get_running_loop():
            await release_pool(pool)
        else:
            abandon_pool(pool)
