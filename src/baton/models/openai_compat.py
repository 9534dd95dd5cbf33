"""Adapter for OpenAI-compatible chat-completions endpoints (Ollama, vLLM, llama.cpp
server, LiteLLM, OpenAI itself) over aiohttp.

One request per ``complete`` call and no retries: baton's runtime owns retries, guided by
``ProviderError.retryable`` and ``retry_after`` (408, 409, 429 and 5xx are retryable, as
are dropped connections and timeouts; other 4xx are not).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from baton.errors import ModelBehaviorError, ProviderConnectionError, ProviderError, ProviderTimeout
from baton.messages import (
    JSON,
    ContentBlock,
    Message,
    ModelRequest,
    ModelResponse,
    TextBlock,
    ToolChoice,
    ToolResultBlock,
    ToolUseBlock,
    Usage,
)
from baton.models._wire import invalid_usage, parse_retry_after, wire_tokens

PROVIDER = "openai"
_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_KEPT_HEADERS = ("x-ratelimit-", "retry-after", "x-request-id", "openai-processing-ms")


class OpenAICompatModel:
    """``Model`` for a ``/chat/completions`` endpoint. ``base_url`` includes the API
    version path (``http://localhost:11434/v1``), as ``OPENAI_BASE_URL`` does."""

    provider = PROVIDER

    def __init__(self, *, base_url: str, api_key: str | None = None, timeout_s: float = 600.0,
                 model_map: dict[str, str] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.timeout_s = timeout_s
        self.model_map = dict(model_map or {})
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:  # never show the key
        return f"OpenAICompatModel(base_url={self.base_url!r})"

    async def complete(self, request: ModelRequest) -> ModelResponse:
        body = build_body(request, self.model_map.get(request.model, request.model))
        headers = {"content-type": "application/json"}
        if self._api_key:
            headers["authorization"] = f"Bearer {self._api_key}"
        timeout_s = request.timeout_s or self.timeout_s
        url = f"{self.base_url}/chat/completions"
        session = self._get_session()
        try:
            async with session.post(url, data=json.dumps(body), headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                raw = await resp.read()
                kept = _kept_headers(resp.headers)
                if resp.status >= 400:
                    raise _status_error(resp.status, raw, resp.headers)
        except ProviderError:
            raise
        except TimeoutError as exc:
            raise ProviderTimeout(f"no response from {url} within {timeout_s}s", provider=PROVIDER) from exc
        except aiohttp.ClientConnectionError as exc:
            raise ProviderConnectionError(f"connection to {url} failed: {exc}", provider=PROVIDER) from exc
        except aiohttp.ClientError as exc:
            raise ProviderConnectionError(f"request to {url} failed: {exc}", provider=PROVIDER) from exc
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise ProviderError(f"{url} returned a body that is not JSON: {raw[:200]!r}", status=200,
                                error_type="invalid_response", retryable=True, provider=PROVIDER) from exc
        return parse_response(data, request.model, kept)

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    def _get_session(self) -> aiohttp.ClientSession:
        # One session per event loop: an adapter cached per process may outlive a loop.
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            self._session = aiohttp.ClientSession()
            self._session_loop = loop
        return self._session


# -- request ----------------------------------------------------------------------------------


def build_body(request: ModelRequest, model: str) -> JSON:
    """The chat-completions request body for a neutral request."""
    body: JSON = {"model": model, "messages": to_openai_messages(request), "max_tokens": request.max_tokens}
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.stop_sequences:
        body["stop"] = list(request.stop_sequences)
    if request.tools:
        body["tools"] = [
            {"type": "function", "function": {"name": t.name, "description": t.description,
                                              "parameters": t.input_schema}}
            for t in request.tools
        ]
        choice = _tool_choice(request.tool_choice)
        if choice is not None:
            body["tool_choice"] = choice
        if request.tool_choice is not None and request.tool_choice.disable_parallel_tool_use:
            body["parallel_tool_calls"] = False
    elif request.output_schema is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": request.output_schema},
        }
    return body


def _tool_choice(choice: ToolChoice | None) -> str | JSON | None:
    if choice is None:
        return None
    if choice.type == "tool":
        return {"type": "function", "function": {"name": choice.name}}
    return {"auto": "auto", "none": "none", "any": "required"}[choice.type]


def to_openai_messages(request: ModelRequest) -> list[JSON]:
    out: list[JSON] = []
    system = _system_text(request.system)
    if system:
        out.append({"role": "system", "content": system})
    for message in request.messages:
        out.extend(_convert(message))
    return out


def _convert(message: Message) -> list[JSON]:
    texts = [b.text for b in message.content if isinstance(b, TextBlock)]
    if message.role == "assistant":
        calls = [
            {"id": b.id, "type": "function", "function": {"name": b.name, "arguments": json.dumps(b.input)}}
            for b in message.content if isinstance(b, ToolUseBlock)
        ]
        msg: JSON = {"role": "assistant", "content": "".join(texts) if texts else None}
        if calls:
            msg["tool_calls"] = calls
        return [msg]
    # Tool results must directly follow the assistant turn that called them.
    out: list[JSON] = [
        {"role": "tool", "tool_call_id": b.tool_use_id, "content": f"Error: {b.content}" if b.is_error else b.content}
        for b in message.content if isinstance(b, ToolResultBlock)
    ]
    if texts:
        out.append({"role": "user", "content": "\n".join(texts)})
    return out


def _system_text(system: str | list[JSON] | None) -> str:
    if system is None:
        return ""
    if isinstance(system, str):
        return system
    return "\n".join(str(b.get("text", "")) for b in system if isinstance(b, dict))


# -- response ---------------------------------------------------------------------------------


def parse_response(data: JSON, requested_model: str, headers: dict[str, str] | None = None) -> ModelResponse:
    """The neutral response; a body of the wrong shape is a retryable provider error naming what is wrong."""
    try:
        return _parse_response(data, requested_model, headers)
    except (AttributeError, KeyError, IndexError, TypeError) as exc:
        raise ProviderError(f"malformed response body ({type(exc).__name__}: {exc}): {str(data)[:200]}",
                            status=200, error_type="invalid_response", retryable=True, provider=PROVIDER) from exc


def _parse_response(data: JSON, requested_model: str, headers: dict[str, str] | None) -> ModelResponse:
    try:
        choice = data["choices"][0]
        message = choice.get("message") or {}
    except (KeyError, IndexError, TypeError) as exc:
        raise ProviderError(f"response has no choices: {str(data)[:200]}", status=200,
                            error_type="invalid_response", retryable=True, provider=PROVIDER) from exc
    content: list[ContentBlock] = []
    text = _content_text(message.get("content"))
    refusal = message.get("refusal")
    if refusal:
        text = str(refusal)
    if text:
        content.append(TextBlock(text))
    calls = list(message.get("tool_calls") or [])
    if message.get("function_call"):  # the legacy single-function shape
        calls.append({"id": "call_legacy", "function": message["function_call"]})
    for i, call in enumerate(calls):
        function = call.get("function") or {}
        content.append(ToolUseBlock(str(call.get("id") or f"call_{i}"), str(function.get("name", "")),
                                    _arguments(function.get("arguments"), str(function.get("name", "")))))
    finish = choice.get("finish_reason")
    stop_reason = "refusal" if refusal else _STOP_REASONS.get(str(finish), "end_turn")
    if calls and stop_reason == "end_turn":  # some servers say "stop" after tool calls
        stop_reason = "tool_use"
    kept = headers or {}
    usage = _usage(data.get("usage"), kept.get("x-request-id"))
    return ModelResponse(id=str(data.get("id", "")), model=str(data.get("model") or requested_model),
                         content=content, stop_reason=stop_reason, usage=usage,
                         request_id=kept.get("x-request-id"), headers=kept)


def _usage(data: Any, request_id: str | None) -> Usage:
    """Usage of a response; counts that are not non-negative integers are a ``ProviderError``."""
    if not data:
        return Usage()
    details = data.get("prompt_tokens_details") if isinstance(data, dict) else None
    if not isinstance(data, dict) or not isinstance(details or {}, dict):
        raise invalid_usage(f"usage={data!r}", provider=PROVIDER, request_id=request_id)
    prompt = wire_tokens(data.get("prompt_tokens"), "prompt_tokens", provider=PROVIDER, request_id=request_id)
    cached = wire_tokens((details or {}).get("cached_tokens"), "prompt_tokens_details.cached_tokens",
                         provider=PROVIDER, request_id=request_id)
    if cached > prompt:
        raise invalid_usage(f"cached_tokens={cached} > prompt_tokens={prompt}", provider=PROVIDER,
                            request_id=request_id)
    output = wire_tokens(data.get("completion_tokens"), "completion_tokens", provider=PROVIDER,
                         request_id=request_id)
    return Usage(input_tokens=prompt - cached, output_tokens=output, cache_read_input_tokens=cached)


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, list):  # content parts
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content)


def _arguments(raw: Any, name: str) -> JSON:
    if isinstance(raw, dict):
        return raw
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}
    try:
        value = json.loads(raw)
    except (TypeError, ValueError) as exc:
        raise ModelBehaviorError(f"tool call {name!r} has arguments that are not JSON: {exc}",
                                 raw_output=raw, errors=[str(exc)]) from exc
    if not isinstance(value, dict):
        raise ModelBehaviorError(f"tool call {name!r} has arguments that are not a JSON object",
                                 raw_output=raw, errors=["arguments must be an object"])
    return value


# -- errors -----------------------------------------------------------------------------------


def _status_error(status: int, raw: bytes, headers: Any) -> ProviderError:
    message, kind = f"HTTP {status}", None
    try:
        err = json.loads(raw).get("error")
        if isinstance(err, dict):
            message = str(err.get("message") or message)
            kind = err.get("type") or err.get("code")
        elif isinstance(err, str):
            message = err
    except (ValueError, AttributeError):
        if raw:
            message = raw[:200].decode("utf-8", "replace")
    should = (headers.get("x-should-retry") or "").lower()
    retryable = status in (408, 409, 429) or status >= 500
    if should in ("true", "false"):
        retryable = should == "true"
    return ProviderError(f"{PROVIDER} API error {status}: {message}", status=status,
                         error_type=str(kind) if kind else None, request_id=headers.get("x-request-id"),
                         retry_after=parse_retry_after(headers), retryable=retryable, provider=PROVIDER)


def _kept_headers(headers: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items() if k.lower().startswith(_KEPT_HEADERS)}
