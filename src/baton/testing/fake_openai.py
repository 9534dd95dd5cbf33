"""A scripted OpenAI-compatible chat-completions server on a real socket, for tests.

    rules = [
        Rule(match=r"weather", tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}]),
        Rule(match=r"18C", text="It is 18C in Paris."),
        Rule(status=429, retry_after=2, times=1),          # fault injection
    ]
    async with FakeOpenAIServer(rules) as server:
        model = OpenAICompatModel(base_url=server.url)

The first rule whose ``match`` regex is found in the request's concatenated message
text (and that has uses left) answers. Every request is logged in ``server.requests``.
A request no rule matches gets a 400, so a test fails loudly instead of hanging.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

JSON = dict[str, Any]


@dataclass
class Rule:
    """One scripted reply. Give exactly one of ``text``, ``tool_calls``, ``json``,
    ``status`` or ``reset``; ``match=None`` matches every request."""

    match: str | None = None
    text: str | None = None
    tool_calls: list[JSON] | None = None
    """Each ``{"name": ..., "arguments": dict or JSON string, "id"?: ...}``."""
    json: Any = None
    """Replied as the message content, serialized (for JSON-schema response formats)."""
    status: int | None = None
    """Answer with this HTTP error status and an OpenAI-shaped error body."""
    retry_after: float | None = None
    reset: bool = False
    """Drop the connection without answering."""
    delay_s: float = 0.0
    """Wait this long before answering (to trigger client timeouts)."""
    times: int | None = None
    """How many requests this rule answers; None = unlimited."""
    finish_reason: str | None = None
    usage: JSON | None = None
    """Replaces the computed usage object."""
    headers: dict[str, str] = field(default_factory=dict)
    used: int = 0

    def matches(self, text: str) -> bool:
        if self.times is not None and self.used >= self.times:
            return False
        return self.match is None or re.search(self.match, text) is not None


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: JSON


def message_text(body: JSON) -> str:
    """All message contents of a request, joined: what rules match against."""
    parts: list[str] = []
    for message in body.get("messages", []):
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
        for call in message.get("tool_calls") or []:
            parts.append(str(call.get("function", {}).get("arguments", "")))
    return "\n".join(parts)


class FakeOpenAIServer:
    """A fake OpenAI-compatible ``/v1/chat/completions`` server on a real socket, answering by ``Rule``s."""

    def __init__(self, rules: list[Rule] | None = None, *, host: str = "127.0.0.1", model: str | None = None) -> None:
        self.rules: list[Rule] = list(rules or [])
        self.requests: list[RecordedRequest] = []
        self.host = host
        self.model = model
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._ids = itertools.count(1)

    @property
    def url(self) -> str:
        """The OpenAI-style base URL (with ``/v1``), as ``OPENAI_BASE_URL`` would hold it."""
        if self._port is None:
            raise RuntimeError("FakeOpenAIServer is not started")
        return f"http://{self.host}:{self._port}/v1"

    def add(self, rule: Rule) -> Rule:
        self.rules.append(rule)
        return rule

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        # Cancel a handler when its client goes away (timeouts), so stop() never waits on it.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self._port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeOpenAIServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "invalid_request_error", "request body is not JSON")
        self.requests.append(RecordedRequest(request.path, dict(request.headers), body))
        text = message_text(body)
        rule = next((r for r in self.rules if r.matches(text)), None)
        if rule is None:
            return _error(400, "invalid_request_error", f"fake server: no scripted rule matches {text[-200:]!r}")
        rule.used += 1
        if rule.delay_s:
            await asyncio.sleep(rule.delay_s)
        if rule.reset:
            assert request.transport is not None
            request.transport.abort()  # RST: the client sees the connection drop mid-request
            return web.Response(status=500)
        if rule.status is not None:
            headers = dict(rule.headers)
            if rule.retry_after is not None:
                headers["retry-after"] = _number(rule.retry_after)
            return _error(rule.status, _error_type(rule.status), f"scripted status {rule.status}", headers)
        return web.json_response(self._completion(body, text, rule), headers=rule.headers)

    def _completion(self, body: JSON, prompt_text: str, rule: Rule) -> JSON:
        n = next(self._ids)
        message: JSON = {"role": "assistant", "content": None}
        finish = "stop"
        if rule.tool_calls is not None:
            calls = []
            for i, call in enumerate(rule.tool_calls):
                args = call.get("arguments", {})
                calls.append({
                    "id": call.get("id") or f"call_{n}_{i}",
                    "type": "function",
                    "function": {"name": call["name"],
                                 "arguments": args if isinstance(args, str) else json.dumps(args)},
                })
            message["tool_calls"] = calls
            finish = "tool_calls"
        elif rule.json is not None:
            message["content"] = json.dumps(rule.json)
        else:
            message["content"] = rule.text or ""
        reply_text = json.dumps(message.get("tool_calls")) if rule.tool_calls else str(message["content"])
        usage = rule.usage or {
            "prompt_tokens": _tokens(prompt_text),
            "completion_tokens": _tokens(reply_text),
            "total_tokens": _tokens(prompt_text) + _tokens(reply_text),
        }
        return {
            "id": f"chatcmpl-fake{n}",
            "object": "chat.completion",
            "created": 0,
            "model": self.model or body.get("model", "fake-model"),
            "choices": [{"index": 0, "message": message, "finish_reason": rule.finish_reason or finish}],
            "usage": usage,
        }


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _error_type(status: int) -> str:
    return {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
            404: "not_found_error", 429: "rate_limit_error"}.get(status, "server_error")


def _error(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "code": None}}
    return web.json_response(body, status=status, headers={"x-request-id": f"req_fake_{status}", **(headers or {})})


__all__ = ["FakeOpenAIServer", "Rule"]
