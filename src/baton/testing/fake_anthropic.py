"""``FakeAnthropicServer``: a real HTTP server speaking the Messages API, for tests.

It listens on a real socket (aiohttp.web), checks requests the way the API does,
answers from the same ``Rule`` script as ``ScriptedModel``, and models what a client
has to survive: HTTP faults with retry-after / x-should-retry, connection resets,
stalls, in-band SSE errors, token-bucket rate limits with the real headers, and
prompt-cache accounting (writes become readable only once their response starts).
Every request is logged (``server.requests``) so tests assert on what went over the wire.

Run it in-process (``async with FakeAnthropicServer(...) as server``), in a background
thread (``start_in_thread``), or as its own process::

    python -m baton.testing.fake_anthropic --port 8090 --script rules.json
    # prints "READY http://127.0.0.1:8090" once listening
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import math
import os
import re
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import orjson
from aiohttp import web

from baton.errors import UsageError
from baton.testing.fake_batches import BatchDesk
from baton.testing.script import (
    DEFAULT_REPLY,
    Fault,
    ReplySpec,
    Rule,
    Script,
    Segment,
    match_text,
    prompt_segments,
    render_reply,
    request_from_wire,
    rules_from_data,
    validate_body,
)

JSON = dict[str, Any]
_REDACTED_HEADERS = frozenset({"x-api-key", "authorization"})


# --- rate limits ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """Per-minute limits; ``None`` leaves a dimension unlimited."""

    rpm: int | None = None
    itpm: int | None = None
    otpm: int | None = None


class TokenBucket:
    """Continuously refilled bucket: ``capacity`` per minute, full at start."""

    def __init__(self, capacity: int, now: float) -> None:
        self.capacity = float(capacity)
        self.rate = capacity / 60.0
        self.level = float(capacity)
        self.updated = now

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
            self.updated = now

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` is available (0 if it is now)."""
        self.refill(now)
        if self.level >= amount:
            return 0.0
        if amount > self.capacity:
            return 60.0
        return (amount - self.level) / self.rate

    def take(self, amount: float, now: float) -> None:
        self.refill(now)
        self.level -= amount

    def seconds_to_full(self, now: float) -> float:
        self.refill(now)
        return max(0.0, (self.capacity - self.level) / self.rate)


# --- prompt cache ---------------------------------------------------------------------------

_TTL_S = {"5m": 300.0, "1h": 3600.0}
_LOOKBACK_BLOCKS = 20


@dataclass(slots=True)
class CachePlan:
    """Cache outcome decided when a request arrives; writes are committed at response start."""

    input_tokens: int
    read_tokens: int = 0
    write_5m: int = 0
    write_1h: int = 0
    writes: list[tuple[bytes, float]] = field(default_factory=list)


class PromptCache:
    """Prefix cache keyed by a hash of (model, tools, system, messages) up to a breakpoint."""

    def __init__(self, min_tokens: int) -> None:
        self.min_tokens = min_tokens
        self.entries: dict[bytes, tuple[float, float]] = {}
        """digest -> (expires_at, ttl_s)"""

    def plan(self, model: str, segments: list[Segment], auto_cc: JSON | None, now: float) -> CachePlan:
        total = sum(s.tokens for s in segments)
        points = [(j, s.cache_control) for j, s in enumerate(segments) if s.cache_control is not None]
        if auto_cc is not None and segments and (not points or points[-1][0] != len(segments) - 1):
            points.append((len(segments) - 1, auto_cc))
        if not points:
            return CachePlan(input_tokens=max(1, total))
        digests: list[bytes] = []
        prefix: list[int] = []
        h = hashlib.sha256(model.encode() + b"\0")
        running = 0
        for s in segments:
            h.update(len(s.canon).to_bytes(8, "big") + s.canon)
            digests.append(h.digest())
            running += s.tokens
            prefix.append(running)
        hit = -1
        for j, _cc in points:
            for k in range(j, max(-1, j - _LOOKBACK_BLOCKS - 1), -1):
                entry = self.entries.get(digests[k])
                if entry is not None and entry[0] > now:
                    hit = max(hit, k)
                    break
        plan = CachePlan(input_tokens=0)
        cached_to = 0
        if hit >= 0:
            expires, ttl = self.entries[digests[hit]]
            self.entries[digests[hit]] = (max(expires, now + ttl), ttl)  # a hit refreshes the TTL
            plan.read_tokens = cached_to = prefix[hit]
        for j, cc in points:
            if j <= hit or prefix[j] < self.min_tokens:
                continue
            ttl_name = str((cc or {}).get("ttl", "5m"))
            delta = prefix[j] - cached_to
            if ttl_name == "1h":
                plan.write_1h += delta
            else:
                plan.write_5m += delta
            cached_to = prefix[j]
            plan.writes.append((digests[j], _TTL_S.get(ttl_name, 300.0)))
        plan.input_tokens = total - cached_to
        return plan

    def commit(self, plan: CachePlan, now: float) -> None:
        for digest, ttl in plan.writes:
            self.entries[digest] = (now + ttl, ttl)


# --- request log ----------------------------------------------------------------------------


@dataclass(slots=True)
class LoggedRequest:
    """One request as the server saw it. ``status`` is None until answered (or if reset)."""

    index: int
    time_start: float
    headers: dict[str, str]
    request_id: str
    time_end: float | None = None
    body: JSON | None = None
    status: int | None = None
    rule_index: int | None = None
    usage: JSON | None = None
    fault: str | None = None
    error: str | None = None
    text: str = ""
    """What rules matched against (system + user text)."""

    @property
    def stream(self) -> bool:
        return bool(self.body and self.body.get("stream"))

    def to_dict(self) -> JSON:
        return {"index": self.index, "time_start": self.time_start, "time_end": self.time_end,
                "request_id": self.request_id, "status": self.status, "rule_index": self.rule_index,
                "usage": self.usage, "fault": self.fault, "error": self.error, "headers": self.headers,
                "body": self.body}


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sse(event: str, data: JSON) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


# --- the server -----------------------------------------------------------------------------


class FakeAnthropicServer:
    """A Messages-API server on a real socket, answering from ``rules``.

    Args:
        rules: the script (see ``baton.testing.script``).
        host, port: where to listen; port 0 picks a free one (see ``url``).
        rate_limits: optional token buckets (RPM / ITPM / OTPM) with real headers.
        cache_min_tokens: shortest prefix that prompt caching stores.
        default_latency_s: latency for rules that set none.
        api_key: if set, any other key gets 401; otherwise any non-empty key is accepted.
        seed: seeds the coin for faults with ``p < 1``.
        log_path: append each finished request as a JSON line (for other processes).
        batch_processing_s: how long a Message Batch takes to end (``server.batches``).
    """

    def __init__(self, rules: list[Rule] | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 rate_limits: RateLimitConfig | None = None, cache_min_tokens: int = 1024,
                 default_latency_s: float = 0.0, api_key: str | None = None, seed: int = 0,
                 log_path: str | os.PathLike[str] | None = None, batch_processing_s: float = 1.0) -> None:
        self.script = Script(rules, seed=seed)
        self.host = host
        self.port = port
        self.rate_limits = rate_limits
        self.default_latency_s = default_latency_s
        self.api_key = api_key
        self.log_path = Path(log_path) if log_path else None
        self.cache = PromptCache(cache_min_tokens)
        self.requests: list[LoggedRequest] = []
        self.completed_count = 0
        self.rate_limited_count = 0
        self.max_concurrency = 0
        self.in_flight = 0
        self._clock_offset = 0.0
        self._buckets: dict[str, TokenBucket] = {}
        self._msg_ids = itertools.count(1)
        self._tool_ids = itertools.count(1)
        self._id_prefix = os.urandom(4).hex()
        self._runner: web.AppRunner | None = None
        self._log_file: IO[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        self._reset_buckets()
        self.batches = BatchDesk(self, processing_s=batch_processing_s)
        """The Message Batches endpoints: their batches, request log and knobs (``fake_batches``)."""

    # -- configuration and inspection --

    @property
    def url(self) -> str:
        """The base URL to use as ``ANTHROPIC_BASE_URL``."""
        return f"http://{self.host}:{self.port}"

    @property
    def rules(self) -> list[Rule]:
        return self.script.rules

    def add_rule(self, match: str | Rule | None = None, *, reply: ReplySpec | None = None,
                 times: int | None = None, latency_s: float = 0.0, fault: Fault | None = None,
                 model: str | None = None) -> Rule:
        """Append a rule (a ``Rule`` or its fields); safe while serving, even from another thread."""
        rule = match if isinstance(match, Rule) else Rule(match, reply=reply, times=times, latency_s=latency_s,
                                                          fault=fault, model=model)
        self.script.add(rule)
        return rule

    def requests_matching(self, pattern: str) -> list[LoggedRequest]:
        """Logged requests whose system + user text matches ``pattern`` (``re.S`` search)."""
        rx = re.compile(pattern, re.S)
        return [r for r in list(self.requests) if rx.search(r.text)]

    def now(self) -> float:
        """The server's clock (monotonic, shifted by ``advance_clock``) for TTLs and buckets."""
        return time.monotonic() + self._clock_offset

    def advance_clock(self, seconds: float) -> None:
        """Move cache expiry and bucket refill forward without sleeping."""
        self._clock_offset += seconds

    def reset(self) -> None:
        """Forget the request log, counters, cache entries and bucket levels (rules stay)."""
        self.requests.clear()
        self.completed_count = self.rate_limited_count = self.max_concurrency = 0
        self.cache.entries.clear()
        self._reset_buckets()

    def _reset_buckets(self) -> None:
        now = self.now()
        rl = self.rate_limits
        self._buckets = {}
        if rl is None:
            return
        for name, cap in (("requests", rl.rpm), ("input-tokens", rl.itpm), ("output-tokens", rl.otpm)):
            if cap:
                self._buckets[name] = TokenBucket(cap, now)

    # -- lifecycle --

    async def start(self) -> str:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/messages", self._handle_messages)
        app.router.add_post("/v1/messages/count_tokens", self._handle_count_tokens)
        self.batches.add_routes(app)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=4096, reuse_address=True)
        await site.start()
        if self.port == 0:  # the bound socket tells us the port the OS picked
            self.port = int(self._runner.addresses[0][1])
        if self.log_path is not None:
            self._log_file = self.log_path.open("ab")
        return self.url

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    async def __aenter__(self) -> FakeAnthropicServer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    def start_in_thread(self, timeout_s: float = 10.0) -> str:
        """Serve from a background thread with its own event loop; returns ``url``."""
        if self._thread is not None:
            raise UsageError("FakeAnthropicServer is already running in a thread")
        ready = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller below
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.stop())
                loop.close()

        self._thread_loop = loop
        self._thread = threading.Thread(target=serve, name="fake-anthropic", daemon=True)
        self._thread.start()
        if not ready.wait(timeout_s):
            raise UsageError(f"FakeAnthropicServer did not start within {timeout_s:g}s")
        if failure:
            self._thread = None
            raise failure[0]
        return self.url

    def stop_thread(self, timeout_s: float = 10.0) -> None:
        thread, loop = self._thread, self._thread_loop
        self._thread = self._thread_loop = None
        if thread is None or loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout_s)

    # -- handlers --

    def _new_tool_id(self) -> str:
        return f"toolu_fake_{self._id_prefix}{next(self._tool_ids):012d}"

    async def _handle_count_tokens(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return self._error(400, "invalid_request_error", "request body is not valid JSON", "req_fake_count")
        return web.Response(body=orjson.dumps({"input_tokens": max(1, sum(s.tokens for s in prompt_segments(body)))}),
                            content_type="application/json")

    async def _handle_messages(self, request: web.Request) -> web.StreamResponse:
        n = len(self.requests)
        headers = {k.lower(): ("REDACTED" if k.lower() in _REDACTED_HEADERS else v) for k, v in request.headers.items()}
        entry = LoggedRequest(n, time.time(), headers, f"req_fake_{self._id_prefix}{next(self._msg_ids):016d}")
        self.requests.append(entry)
        self.in_flight += 1
        self.max_concurrency = max(self.max_concurrency, self.in_flight)
        try:
            return await self._process(request, entry)
        except asyncio.CancelledError:
            entry.status = entry.status or 499
            entry.error = entry.error or "client disconnected"
            raise
        except Exception as exc:  # a fake bug still answers like the API: a JSON api_error
            return self._error(500, "api_error", f"Internal server error ({type(exc).__name__})",
                               entry.request_id, entry=entry)
        finally:
            self.in_flight -= 1
            entry.time_end = time.time()
            if entry.status == 200:
                self.completed_count += 1
            if self._log_file is not None:
                self._log_file.write(orjson.dumps(entry.to_dict()) + b"\n")
                self._log_file.flush()

    def _error(self, status: int, error_type: str, message: str, request_id: str,
               headers: dict[str, str] | None = None, entry: LoggedRequest | None = None) -> web.Response:
        if entry is not None:
            entry.status, entry.error = status, f"{error_type}: {message}"
        body = orjson.dumps({"type": "error", "error": {"type": error_type, "message": message},
                             "request_id": request_id})
        hdrs = {"request-id": request_id, **(headers or {})}
        return web.Response(status=status, body=body, headers=hdrs, content_type="application/json")

    def refused(self, request: web.Request, rid: str, entry: LoggedRequest | None = None) -> web.Response | None:
        """The 401/400 answer to a request without a valid key or ``anthropic-version``, else None."""
        key = request.headers.get("x-api-key") or ""
        auth = request.headers.get("authorization") or ""
        if not key and auth.lower().startswith("bearer "):
            key = auth[7:]
        if not key:
            return self._error(401, "authentication_error", "x-api-key header is required", rid, entry=entry)
        if self.api_key is not None and key != self.api_key:
            return self._error(401, "authentication_error", "invalid x-api-key", rid, entry=entry)
        if not request.headers.get("anthropic-version"):
            return self._error(400, "invalid_request_error", "anthropic-version: header is required", rid,
                               entry=entry)
        return None

    def answer(self, body: JSON, neutral: Any, rule: Rule | None, plan: CachePlan, rid: str,
               *, tier: str = "standard") -> JSON:
        """The message answering ``body`` (its rule's reply); prompt-cache writes commit now."""
        reply = rule.resolve(neutral) if rule is not None else DEFAULT_REPLY
        rendered = render_reply(reply, neutral, self._new_tool_id)
        self.cache.commit(plan, self.now())
        usage: JSON = {
            "input_tokens": plan.input_tokens,
            "cache_creation_input_tokens": plan.write_5m + plan.write_1h,
            "cache_read_input_tokens": plan.read_tokens,
            "cache_creation": {"ephemeral_5m_input_tokens": plan.write_5m,
                               "ephemeral_1h_input_tokens": plan.write_1h},
            "output_tokens": rendered.output_tokens,
            "service_tier": tier,
        }
        return {
            "id": f"msg_fake_{rid[9:]}", "type": "message", "role": "assistant", "model": body["model"],
            "content": rendered.content, "stop_reason": rendered.stop_reason,
            "stop_sequence": rendered.stop_sequence, "usage": usage,
        }

    async def _process(self, request: web.Request, entry: LoggedRequest) -> web.StreamResponse:
        rid = entry.request_id
        refused = self.refused(request, rid, entry)
        if refused is not None:
            return refused
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            return self._error(400, "invalid_request_error",
                               f"There was an error parsing the body of your request: {exc}", rid, entry=entry)
        entry.body = body if isinstance(body, dict) else None
        problem = validate_body(body)
        if problem is not None:
            return self._error(400, "invalid_request_error", problem, rid, entry=entry)
        neutral = request_from_wire(body)
        entry.text = match_text(neutral)

        now = self.now()
        segments = prompt_segments(body)
        plan = self.cache.plan(body["model"], segments, body.get("cache_control"), now)
        limited = self._admit(plan, now)
        if limited is not None:
            self.rate_limited_count += 1
            return self._error(429, "rate_limit_error", limited[1], rid,
                               {"retry-after": str(limited[0]), **self._ratelimit_headers(now)}, entry)

        index, rule = self.script.pick(neutral)
        entry.rule_index = index
        fault = rule.fault if rule is not None and self.script.fires(rule.fault) else None
        entry.fault = fault.kind if fault is not None else None
        delay = rule.latency_s if rule is not None and rule.latency_s else self.default_latency_s
        if fault is not None and fault.kind == "stall":
            delay += fault.seconds
        if delay > 0:
            await asyncio.sleep(delay)

        stream = bool(body.get("stream"))
        if fault is not None and (fault.kind == "connection_reset" or (fault.kind == "stream_cut" and not stream)):
            entry.error = "connection reset by fault"
            self._reset_connection(request)
            return web.Response(status=500)
        if fault is not None and (fault.kind == "status" or (fault.kind == "stream_error" and not stream)):
            status, fhdrs, raw = fault.wire_error(rid)
            entry.status, entry.error = status, f"{fault.error_type}: {fault.message}"
            fhdrs.update(self._ratelimit_headers(self.now()))
            ctype = fhdrs.pop("content-type", "application/json")
            return web.Response(status=status, body=raw, headers=fhdrs, content_type=ctype.split(";")[0])

        # The response starts now: cache writes become readable and output is charged.
        message = self.answer(body, neutral, rule, plan, rid)
        start = self.now()
        usage = entry.usage = message["usage"]
        bucket = self._buckets.get("output-tokens")
        if bucket is not None:
            bucket.take(usage["output_tokens"], start)
        out_headers = {"request-id": rid, **self._ratelimit_headers(start)}
        if not stream:
            entry.status = 200
            return web.Response(body=orjson.dumps(message), headers=out_headers, content_type="application/json")
        return await self._stream(request, entry, message, out_headers, fault)

    async def _stream(self, request: web.Request, entry: LoggedRequest, message: JSON,
                      headers: dict[str, str], fault: Fault | None) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={**headers, "content-type": "text/event-stream",
                                                       "cache-control": "no-cache"})
        await resp.prepare(request)
        entry.status = 200
        usage = message["usage"]
        start = {**message, "content": [], "stop_reason": None,
                 "usage": {**usage, "output_tokens": min(1, usage["output_tokens"])}}
        await resp.write(_sse("message_start", {"type": "message_start", "message": start}))
        if fault is not None and fault.kind == "stream_error":
            entry.error = f"{fault.error_type}: {fault.message} (in stream)"
            await resp.write(_sse("error", {"type": "error", "error": {"type": fault.error_type,
                                                                       "message": fault.message}}))
            await resp.write_eof()
            return resp
        await resp.write(_sse("ping", {"type": "ping"}))
        for i, block in enumerate(message["content"]):
            kind = block["type"]
            if kind == "text":
                head: JSON = {"type": "text", "text": ""}
                deltas = [{"type": "text_delta", "text": block["text"][k:k + 32]}
                          for k in range(0, max(len(block["text"]), 1), 32)]
            elif kind == "tool_use":
                head = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
                raw = orjson.dumps(block["input"]).decode()
                deltas = [{"type": "input_json_delta", "partial_json": raw[k:k + 32]} for k in range(0, len(raw), 32)]
            else:
                head = {"type": kind, "thinking": "", "signature": ""}
                deltas = [{"type": "thinking_delta", "thinking": block.get("thinking", "")},
                          {"type": "signature_delta", "signature": block.get("signature", "")}]
            await resp.write(_sse("content_block_start", {"type": "content_block_start", "index": i,
                                                          "content_block": head}))
            for d in deltas:
                await resp.write(_sse("content_block_delta", {"type": "content_block_delta", "index": i, "delta": d}))
            if fault is not None and fault.kind == "stream_cut":
                entry.error = "stream cut before message_stop"
                await resp.write_eof()
                return resp
            await resp.write(_sse("content_block_stop", {"type": "content_block_stop", "index": i}))
        await resp.write(_sse("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]},
            "usage": {"output_tokens": usage["output_tokens"]}}))
        await resp.write(_sse("message_stop", {"type": "message_stop"}))
        await resp.write_eof()
        return resp

    @staticmethod
    def _reset_connection(request: web.Request) -> None:
        """Drop the TCP connection with an RST and no HTTP response."""
        transport = request.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

    def _admit(self, plan: CachePlan, now: float) -> tuple[int, str] | None:
        """Take from the buckets, or say (retry-after seconds, message) if a limit is hit."""
        if not self._buckets:
            return None
        need = {"requests": 1.0, "input-tokens": float(plan.input_tokens + plan.write_5m + plan.write_1h),
                "output-tokens": 1.0}
        waits = {name: b.wait_for(need[name], now) for name, b in self._buckets.items()}
        name, wait = max(waits.items(), key=lambda kv: kv[1])
        if wait > 0:
            cap = int(self._buckets[name].capacity)
            what = {"requests": "requests", "input-tokens": "input tokens", "output-tokens": "output tokens"}[name]
            return max(1, math.ceil(wait)), (
                f"This request would exceed your organization's rate limit of {cap:,} {what} per minute. "
                "For details, refer to: https://docs.claude.com/en/api/rate-limits.")
        for bname in ("requests", "input-tokens"):
            if bname in self._buckets:
                self._buckets[bname].take(need[bname], now)
        return None

    def _ratelimit_headers(self, now: float) -> dict[str, str]:
        out: dict[str, str] = {}
        wall = time.time()
        for name, b in self._buckets.items():
            b.refill(now)
            out[f"anthropic-ratelimit-{name}-limit"] = str(int(b.capacity))
            out[f"anthropic-ratelimit-{name}-remaining"] = str(max(0, int(b.level)))
            out[f"anthropic-ratelimit-{name}-reset"] = _rfc3339(wall + b.seconds_to_full(now))
        return out


# --- command line ---------------------------------------------------------------------------


def _load_script(path: str | None) -> tuple[list[Rule], JSON]:
    if not path:
        return [], {}
    try:
        data = orjson.loads(Path(path).read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise UsageError(f"{path}: cannot read script: {exc}") from exc
    return rules_from_data(data), (data if isinstance(data, dict) else {})


async def _serve(args: argparse.Namespace) -> None:
    rules, options = _load_script(args.script)
    limits = options.get("rate_limits") or {}
    rpm, itpm, otpm = (args.rpm or limits.get("rpm"), args.itpm or limits.get("itpm"),
                       args.otpm or limits.get("otpm"))
    server = FakeAnthropicServer(
        rules, host=args.host, port=args.port,
        rate_limits=RateLimitConfig(rpm, itpm, otpm) if (rpm or itpm or otpm) else None,
        cache_min_tokens=args.cache_min_tokens if args.cache_min_tokens is not None
        else int(options.get("cache_min_tokens", 1024)),
        default_latency_s=args.latency if args.latency is not None else float(options.get("latency_s", 0.0)),
        api_key=args.api_key, seed=args.seed, log_path=args.log,
        batch_processing_s=args.batch_processing if args.batch_processing is not None
        else float(options.get("batch_processing_s", 1.0)),
    )
    await server.start()
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    print(f"READY {server.url}", flush=True)
    try:
        await done.wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m baton.testing.fake_anthropic",
                                     description="A fake Anthropic Messages API server for tests and benchmarks.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (see the READY line)")
    parser.add_argument("--script", help="JSON file: a list of rules or {rules, latency_s, rate_limits, ...}")
    parser.add_argument("--latency", type=float, default=None, help="default latency in seconds")
    parser.add_argument("--rpm", type=int, default=None)
    parser.add_argument("--itpm", type=int, default=None)
    parser.add_argument("--otpm", type=int, default=None)
    parser.add_argument("--cache-min-tokens", type=int, default=None)
    parser.add_argument("--api-key", default=None, help="accept only this key (default: any non-empty key)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log", default=None, help="append each request as a JSON line to this file")
    parser.add_argument("--batch-processing", type=float, default=None,
                        help="seconds a Message Batch takes to end (default 1)")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_serve(args))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
