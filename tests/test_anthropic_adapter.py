"""AnthropicModel against the fake Messages API on a real socket; assertions read the request log."""

from __future__ import annotations

import asyncio
import socket
import time
from email.utils import formatdate

import pytest

from baton.errors import ProviderConnectionError, ProviderError, ProviderTimeout, UsageError
from baton.messages import (
    Message,
    ModelRequest,
    TextBlock,
    ToolChoice,
    ToolResultBlock,
    ToolSpec,
    ToolUseBlock,
)
from baton.models.anthropic import AnthropicModel
from baton.testing import FakeAnthropicServer, Fault, RateLimitConfig, text, tool_call, tool_calls
from baton.testing.script import prompt_segments

SECRET = "sk-ant-test-SECRET-4242"
WEATHER = ToolSpec("get_weather", "Weather for a city.",
                   {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
CLOCK = ToolSpec("get_time", "Current time.", {"type": "object", "properties": {}},
                 cache_control={"type": "ephemeral", "ttl": "1h"})


@pytest.fixture
async def server():
    async with FakeAnthropicServer() as s:
        yield s


@pytest.fixture
async def model(server):
    m = AnthropicModel(api_key=SECRET, base_url=server.url)
    yield m
    await m.aclose()


def ask(prompt: str = "hello", **kw) -> ModelRequest:
    return ModelRequest("claude-sonnet-4-6", [Message.user(prompt)], **kw)


def assert_no_secret(exc: BaseException) -> None:
    for rendered in (str(exc), repr(exc), str(getattr(exc, "to_dict", dict)())):
        assert SECRET not in rendered


# --- request shape -----------------------------------------------------------------------


async def test_request_body_and_headers_match_the_wire_format(server, model):
    server.add_rule(reply=text("done"))
    request = ModelRequest(
        "claude-sonnet-4-6",
        [
            Message.user("weather in Paris?"),
            Message("assistant", [TextBlock("Checking."), ToolUseBlock("toolu_1", "get_weather", {"city": "Paris"})]),
            Message("user", [ToolResultBlock("toolu_1", "boom", is_error=True, cache_control={"type": "ephemeral"}),
                             TextBlock("try again", cache_control={"type": "ephemeral", "ttl": "5m"})]),
        ],
        system=[{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
        tools=[WEATHER, CLOCK],
        tool_choice=ToolChoice("auto", disable_parallel_tool_use=True),
        max_tokens=321,
        temperature=0.0,
        stop_sequences=["STOP"],
    )
    response = await model.complete(request)
    assert response.text == "done"
    assert len(server.requests) == 1
    logged = server.requests[0]
    assert logged.body == {
        "model": "claude-sonnet-4-6",
        "max_tokens": 321,
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "weather in Paris?"}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "boom", "is_error": True,
                 "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "try again", "cache_control": {"type": "ephemeral", "ttl": "5m"}}]},
        ],
        "system": [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
        "tools": [
            {"name": "get_weather", "description": "Weather for a city.", "input_schema": WEATHER.input_schema},
            {"name": "get_time", "description": "Current time.", "input_schema": {"type": "object", "properties": {}},
             "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        ],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
        "temperature": 0.0,
        "stop_sequences": ["STOP"],
    }
    assert logged.headers["x-api-key"] == "REDACTED"
    assert logged.headers["anthropic-version"] == "2023-06-01"
    assert logged.headers["content-type"] == "application/json"
    assert logged.status == 200


async def test_string_system_and_optional_fields_left_out(server, model):
    await model.complete(ask("hi", system="Be brief."))
    body = server.requests[0].body
    assert body["system"] == "Be brief."
    assert set(body) == {"model", "max_tokens", "messages", "system"}


@pytest.mark.parametrize(("choice", "wire"), [
    (ToolChoice("auto"), {"type": "auto"}),
    (ToolChoice("any"), {"type": "any"}),
    (ToolChoice("none"), {"type": "none"}),
    (ToolChoice("tool", "get_weather"), {"type": "tool", "name": "get_weather"}),
    (ToolChoice("any", disable_parallel_tool_use=True), {"type": "any", "disable_parallel_tool_use": True}),
    (ToolChoice("tool", "get_weather", True), {"type": "tool", "name": "get_weather",
                                               "disable_parallel_tool_use": True}),
])
async def test_tool_choice_variants(server, model, choice, wire):
    response = await model.complete(ask("weather?", tools=[WEATHER], tool_choice=choice))
    assert server.requests[0].body["tool_choice"] == wire
    if choice.type in ("any", "tool"):
        # A forced tool makes the fake answer with a schema-valid input for it.
        assert response.stop_reason == "tool_use"
        assert response.tool_uses[0].name == "get_weather"
        assert isinstance(response.tool_uses[0].input["city"], str)


async def test_provider_extras_from_metadata_are_merged(server, model):
    await model.complete(ask("x", metadata={"anthropic": {"cache_control": {"type": "ephemeral"}, "model": "evil"}}))
    body = server.requests[0].body
    assert body["cache_control"] == {"type": "ephemeral"}
    assert body["model"] == "claude-sonnet-4-6"  # extras never replace core fields


# --- responses ---------------------------------------------------------------------------


async def test_parallel_tool_use_roundtrip(server, model):
    server.add_rule("Paris and Rome", times=1,
                    reply=tool_calls([("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"})]))
    server.add_rule("sunny.*rainy", reply=text("Paris is sunny, Rome is rainy."))
    first = await model.complete(ask("Paris and Rome", tools=[WEATHER]))
    assert first.stop_reason == "tool_use"
    assert [(u.name, u.input) for u in first.tool_uses] == [("get_weather", {"city": "Paris"}),
                                                             ("get_weather", {"city": "Rome"})]
    a, b = first.tool_uses
    assert a.id != b.id and a.id.startswith("toolu_")
    history = [Message.user("Paris and Rome"), Message("assistant", first.content),
               Message("user", [ToolResultBlock(a.id, "sunny"), ToolResultBlock(b.id, "rainy")])]
    second = await model.complete(ModelRequest("claude-sonnet-4-6", history, tools=[WEATHER]))
    assert second.text == "Paris is sunny, Rome is rainy."
    assert [r.status for r in server.requests] == [200, 200]
    assert server.requests[1].rule_index == 1


@pytest.mark.parametrize("reason", ["end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn",
                                    "refusal", "model_context_window_exceeded"])
async def test_every_stop_reason(server, model, reason):
    server.add_rule(reply=text("partial", stop_reason=reason))
    response = await model.complete(ask())
    assert response.stop_reason == reason
    assert response.text == "partial"


async def test_natural_max_tokens_and_stop_sequence(server, model):
    server.add_rule("long", reply=text("x" * 400))
    server.add_rule("seq", reply=text("alpha STOP beta"))
    cut = await model.complete(ask("long", max_tokens=10))
    assert cut.stop_reason == "max_tokens" and cut.text == "x" * 40
    stopped = await model.complete(ask("seq", stop_sequences=["STOP"]))
    assert stopped.stop_reason == "stop_sequence" and stopped.text == "alpha "


async def test_unknown_blocks_like_thinking_are_skipped(server, model):
    server.add_rule(reply=text("answer", thinking="let me think"))
    response = await model.complete(ask())
    assert response.content == [TextBlock("answer")]


async def test_usage_with_cache_write_then_read_and_1h_ttl(server, model):
    long_system = "policy " * 1000  # 7,000 chars -> 1,750 fake tokens, above the 1,024 minimum
    system = [{"type": "text", "text": long_system, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    request = ask("question", system=system)
    first = await model.complete(request)
    second = await model.complete(request)
    prefix = len(long_system) // 4
    assert first.usage.cache_creation_input_tokens == prefix
    assert first.usage.cache_creation_1h_input_tokens == prefix
    assert first.usage.cache_read_input_tokens == 0
    assert second.usage.cache_read_input_tokens == prefix
    assert second.usage.cache_creation_input_tokens == 0
    segments = prompt_segments(server.requests[0].body)
    assert first.usage.input_tokens == second.usage.input_tokens == sum(s.tokens for s in segments) - prefix
    assert first.usage.output_tokens == 1  # "ok"


async def test_request_id_and_only_ratelimit_headers_are_kept():
    async with FakeAnthropicServer(rate_limits=RateLimitConfig(rpm=100, itpm=10_000, otpm=5_000)) as server:
        model = AnthropicModel(api_key=SECRET, base_url=server.url)
        response = await model.complete(ask())
        await model.aclose()
    assert response.request_id == server.requests[0].request_id
    assert response.request_id.startswith("req_fake_")
    assert response.headers["anthropic-ratelimit-requests-limit"] == "100"
    assert response.headers["anthropic-ratelimit-requests-remaining"] == "99"
    assert "anthropic-ratelimit-input-tokens-reset" in response.headers
    assert all(k.startswith("anthropic-ratelimit-") for k in response.headers)


async def test_streaming_mode_assembles_the_same_response(server):
    server.add_rule("tool", reply=tool_call("get_weather", {"city": "Paris, France"}, text="Let me check."))
    streaming = AnthropicModel(api_key=SECRET, base_url=server.url, stream=True)
    try:
        plain = await streaming.complete(ask("hi"))
        tooled = await streaming.complete(ask("tool", tools=[WEATHER]))
    finally:
        await streaming.aclose()
    assert plain.text == "ok" and plain.stop_reason == "end_turn" and plain.usage.output_tokens == 1
    assert tooled.content[0] == TextBlock("Let me check.")
    assert tooled.tool_uses[0].input == {"city": "Paris, France"}
    assert tooled.stop_reason == "tool_use"
    assert all(r.body["stream"] is True for r in server.requests)


async def test_streaming_in_band_error_and_cut_stream(server):
    server.add_rule("overload", fault=Fault.stream_error("overloaded_error"))
    server.add_rule("cut", fault=Fault.stream_cut())
    streaming = AnthropicModel(api_key=SECRET, base_url=server.url, stream=True)
    try:
        with pytest.raises(ProviderError) as overloaded:
            await streaming.complete(ask("overload"))
        with pytest.raises(ProviderConnectionError, match="before message_stop"):
            await streaming.complete(ask("cut"))
    finally:
        await streaming.aclose()
    assert overloaded.value.status == 529 and overloaded.value.retryable
    assert overloaded.value.request_id == server.requests[0].request_id
    assert len(server.requests) == 2


# --- errors: one HTTP attempt per call, a verdict per status --------------------------------


@pytest.mark.parametrize(("status", "error_type"), [
    (400, "invalid_request_error"), (401, "authentication_error"), (402, "billing_error"),
    (403, "permission_error"), (404, "not_found_error"), (413, "request_too_large"), (422, "invalid_request_error"),
])
async def test_client_errors_are_not_retryable(server, model, status, error_type):
    server.add_rule(fault=Fault.status(status, retry_after_s=3))
    with pytest.raises(ProviderError) as info:
        await model.complete(ask())
    err = info.value
    assert (err.status, err.error_type, err.retryable) == (status, error_type, False)
    assert err.request_id == server.requests[0].request_id
    assert f"{status}" in str(err) and error_type in str(err)
    assert len(server.requests) == 1
    assert_no_secret(err)


@pytest.mark.parametrize(("status", "error_type"), [
    (408, "timeout_error"), (409, "conflict_error"), (429, "rate_limit_error"), (500, "api_error"),
    (502, "api_error"), (503, "api_error"), (504, "timeout_error"), (529, "overloaded_error"),
])
async def test_transient_errors_are_retryable(server, model, status, error_type):
    server.add_rule(fault=Fault.status(status))
    with pytest.raises(ProviderError) as info:
        await model.complete(ask())
    assert (info.value.status, info.value.error_type, info.value.retryable) == (status, error_type, True)
    assert len(server.requests) == 1
    assert_no_secret(info.value)


async def test_413_with_html_body_from_a_proxy(server, model):
    server.add_rule(fault=Fault.too_large())
    with pytest.raises(ProviderError) as info:
        await model.complete(ask())
    err = info.value
    assert err.status == 413 and not err.retryable
    assert "non-JSON error body (text/html" in str(err) and "413 Request Entity Too Large" in str(err)
    assert len(server.requests) == 1


async def test_429_retry_after_seconds(server, model):
    server.add_rule(fault=Fault.rate_limit(7))
    with pytest.raises(ProviderError) as info:
        await model.complete(ask())
    assert info.value.retry_after == 7.0 and info.value.retryable
    assert len(server.requests) == 1


async def test_429_retry_after_ms_wins(server, model):
    server.add_rule(fault=Fault.rate_limit(2, retry_after_ms=1500))
    with pytest.raises(ProviderError) as info:
        await model.complete(ask())
    assert info.value.retry_after == 1.5
    assert len(server.requests) == 1


async def test_429_retry_after_http_date(server, model):
    when = formatdate(time.time() + 30, usegmt=True)
    server.add_rule(fault=Fault.status(429, headers={"retry-after": when}))
    with pytest.raises(ProviderError) as info:
        await model.complete(ask())
    assert 25 <= info.value.retry_after <= 31


async def test_x_should_retry_false_overrides_a_500(server, model):
    server.add_rule(fault=Fault.server_error(should_retry=False))
    with pytest.raises(ProviderError) as info:
        await model.complete(ask())
    assert info.value.status == 500 and info.value.retryable is False
    assert server.requests[0].status == 500 and len(server.requests) == 1


async def test_x_should_retry_true_overrides_a_400(server, model):
    server.add_rule(fault=Fault.status(400, should_retry=True))
    with pytest.raises(ProviderError) as info:
        await model.complete(ask())
    assert info.value.status == 400 and info.value.retryable is True
    assert len(server.requests) == 1


async def test_spend_limit_429_is_never_retryable(server, model):
    server.add_rule("cap", fault=Fault.spend_limit())
    server.add_rule("forced", fault=Fault("status", code=429, error_type="rate_limit_error", message="cap",
                                          error_code="enforced_spend_limit_reached", should_retry=True))
    for prompt in ("cap", "forced"):
        with pytest.raises(ProviderError) as info:
            await model.complete(ask(prompt))
        err = info.value
        assert err.status == 429 and err.retryable is False and err.retry_after is None
        assert "enforced_spend_limit_reached" in str(err)
    assert len(server.requests) == 2


async def test_connection_reset_is_a_connection_error(server, model):
    server.add_rule(fault=Fault.connection_reset())
    with pytest.raises(ProviderConnectionError) as info:
        await model.complete(ask())
    assert info.value.retryable and info.value.error_type == "connection_error"
    assert len(server.requests) == 1 and server.requests[0].status is None
    assert_no_secret(info.value)
    # The pool recovers: the next call on the same model succeeds.
    server.rules.clear()
    assert (await model.complete(ask())).text == "ok"


async def test_connection_refused_is_a_connection_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    model = AnthropicModel(api_key=SECRET, base_url=f"http://127.0.0.1:{port}")
    try:
        with pytest.raises(ProviderConnectionError, match="cannot connect") as info:
            await model.complete(ask())
    finally:
        await model.aclose()
    assert_no_secret(info.value)


async def test_stall_past_request_timeout_is_a_timeout(server, model):
    server.add_rule(fault=Fault.stall(5))
    started = time.monotonic()
    with pytest.raises(ProviderTimeout, match="within 0.3s") as info:
        await model.complete(ask(timeout_s=0.3))
    assert time.monotonic() - started < 2
    assert info.value.retryable
    assert len(server.requests) == 1
    assert_no_secret(info.value)


async def test_model_level_timeout_applies_without_request_override(server):
    server.add_rule(fault=Fault.stall(5))
    model = AnthropicModel(api_key=SECRET, base_url=server.url, timeout_s=0.3)
    try:
        with pytest.raises(ProviderTimeout):
            await model.complete(ask())
    finally:
        await model.aclose()
    assert len(server.requests) == 1


async def test_request_timeout_override_can_be_longer_than_the_model_default(server):
    server.add_rule(latency_s=0.4)
    model = AnthropicModel(api_key=SECRET, base_url=server.url, timeout_s=0.1)
    try:
        assert (await model.complete(ask(timeout_s=2))).text == "ok"
    finally:
        await model.aclose()


async def test_key_is_redacted_even_if_the_server_echoes_it(server, model):
    server.add_rule(fault=Fault.status(401, message=f"invalid x-api-key {SECRET}"))
    with pytest.raises(ProviderError) as info:
        await model.complete(ask())
    assert "[REDACTED]" in str(info.value)
    assert_no_secret(info.value)
    assert SECRET not in repr(model) and SECRET not in str(vars(model).get("base_url"))


async def test_no_hidden_retries_across_many_failures(server, model):
    server.add_rule(fault=Fault.overloaded())
    results = await asyncio.gather(*(model.complete(ask()) for _ in range(20)), return_exceptions=True)
    assert all(isinstance(r, ProviderError) and r.status == 529 for r in results)
    assert len(server.requests) == 20


# --- configuration, sessions, concurrency ------------------------------------------------


async def test_env_key_and_base_url(monkeypatch):
    async with FakeAnthropicServer(api_key="env-key") as server:
        monkeypatch.setenv("ANTHROPIC_API_KEY", "env-key")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url + "/")
        model = AnthropicModel()
        try:
            assert (await model.complete(ask())).text == "ok"
        finally:
            await model.aclose()
        assert server.requests[0].status == 200


async def test_auth_token_is_sent_as_bearer(monkeypatch):
    async with FakeAnthropicServer(api_key="tok-1") as server:
        monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
        monkeypatch.setenv("ANTHROPIC_AUTH_TOKEN", "tok-1")
        model = AnthropicModel(base_url=server.url)
        try:
            await model.complete(ask())
        finally:
            await model.aclose()
    headers = server.requests[0].headers
    assert headers["authorization"] == "REDACTED" and "x-api-key" not in headers


async def test_missing_key_for_the_real_api_is_a_usage_error(monkeypatch):
    for var in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(UsageError, match="ANTHROPIC_API_KEY"):
        AnthropicModel()


async def test_missing_key_against_a_compatible_endpoint_gets_401(server, monkeypatch):
    for var in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    model = AnthropicModel(base_url=server.url)
    try:
        with pytest.raises(ProviderError) as info:
            await model.complete(ask())
    finally:
        await model.aclose()
    assert (info.value.status, info.value.error_type, info.value.retryable) == (401, "authentication_error", False)


async def test_concurrent_calls_overlap_on_the_server(server, model):
    server.add_rule(latency_s=0.3)
    started = time.monotonic()
    responses = await asyncio.gather(*(model.complete(ask(f"q{i}")) for i in range(50)))
    assert time.monotonic() - started < 1.5
    assert len(responses) == 50 and server.completed_count == 50
    assert server.max_concurrency == 50


def test_one_model_works_across_event_loops():
    server = FakeAnthropicServer()
    server.start_in_thread()
    try:
        model = AnthropicModel(api_key=SECRET, base_url=server.url)
        assert asyncio.run(model.complete(ask())).text == "ok"
        assert asyncio.run(model.complete(ask())).text == "ok"

        async def close() -> None:
            await model.complete(ask())
            await model.aclose()
            await model.aclose()  # safe twice

        asyncio.run(close())
    finally:
        server.stop_thread()
    assert server.completed_count == 3


@pytest.mark.parametrize("body", [
    '{"content": "hello", "stop_reason": "end_turn", "usage": {"input_tokens": 1, "output_tokens": 1}}',
    '{"content": {"type": "text", "text": "hi"}, "usage": {"input_tokens": 1, "output_tokens": 1}}',
    '{"content": ["hi"], "usage": {"input_tokens": 1, "output_tokens": 1}}',
    '{"content": [{"type": "text", "text": 5}], "usage": {"input_tokens": 1, "output_tokens": 1}}',
    '{"content": [{"type": "tool_use", "id": "t", "name": "x", "input": [1]}]}',
    '[{"content": []}]',
])
async def test_a_200_body_of_the_wrong_shape_is_a_provider_error(server, model, body):
    """A 200 whose content is not a list of blocks is a clear, retryable provider error, not a traceback."""
    server.add_rule(fault=Fault.status(200, body=body, content_type="application/json"))
    with pytest.raises(ProviderError) as info:
        await model.complete(ask())
    assert info.value.error_type == "invalid_response" and info.value.retryable
    assert "malformed response body" in str(info.value)
