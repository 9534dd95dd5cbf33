"""OpenAICompatModel against the scripted FakeOpenAIServer on a real socket."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator

import pytest

from baton.errors import ModelBehaviorError, ProviderConnectionError, ProviderError, ProviderTimeout
from baton.messages import (
    Message,
    ModelRequest,
    TextBlock,
    ToolChoice,
    ToolResultBlock,
    ToolSpec,
    ToolUseBlock,
)
from baton.models._wire import parse_retry_after as retry_after
from baton.models.base import Model
from baton.models.openai_compat import OpenAICompatModel
from baton.testing.fake_openai import FakeOpenAIServer, Rule

WEATHER = ToolSpec(
    name="get_weather",
    description="Current weather for a city",
    input_schema={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer() as srv:
        yield srv


@pytest.fixture
async def model(server: FakeOpenAIServer) -> AsyncIterator[OpenAICompatModel]:
    m = OpenAICompatModel(base_url=server.url, api_key="sk-test-secret", model_map={"claude-sonnet-4-6": "qwen2.5"})
    yield m
    await m.aclose()


def request(text: str = "hello", **kw: object) -> ModelRequest:
    return ModelRequest(model="claude-sonnet-4-6", messages=[Message.user(text)], **kw)  # type: ignore[arg-type]


async def test_is_a_model(model: OpenAICompatModel) -> None:
    assert isinstance(model, Model)
    assert model.provider == "openai"
    assert "sk-test-secret" not in repr(model)


async def test_tool_loop_round_trip(server: FakeOpenAIServer, model: OpenAICompatModel) -> None:
    server.add(Rule(match=r"18C and sunny", text="It is 18C and sunny in Paris."))
    server.add(Rule(match=r"weather in Paris", tool_calls=[{"id": "call_abc", "name": "get_weather",
                                                            "arguments": {"city": "Paris"}}]))
    messages = [Message.user("What is the weather in Paris?")]
    first = await model.complete(ModelRequest(model="claude-sonnet-4-6", messages=messages, system="Be brief.",
                                              tools=[WEATHER], max_tokens=200, temperature=0))
    assert first.stop_reason == "tool_use"
    assert first.tool_uses == [ToolUseBlock("call_abc", "get_weather", {"city": "Paris"})]

    messages += [Message("assistant", list(first.content)),
                 Message("user", [ToolResultBlock("call_abc", "18C and sunny")])]
    final = await model.complete(ModelRequest(model="claude-sonnet-4-6", messages=messages, system="Be brief.",
                                              tools=[WEATHER], max_tokens=200, temperature=0))
    assert final.stop_reason == "end_turn"
    assert final.text == "It is 18C and sunny in Paris."
    assert final.tool_uses == []

    assert len(server.requests) == 2
    req1, req2 = (r.body for r in server.requests)
    assert server.requests[0].path == "/v1/chat/completions"
    assert server.requests[0].headers["Authorization"] == "Bearer sk-test-secret"
    assert req1["model"] == "qwen2.5"  # model_map applied
    assert req1["max_tokens"] == 200 and req1["temperature"] == 0
    assert req1["messages"] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "What is the weather in Paris?"}]
    assert req1["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Current weather for a city", "parameters": WEATHER.input_schema}}]
    assert "tool_choice" not in req1
    assert req2["messages"][2] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}
    assert req2["messages"][3] == {"role": "tool", "tool_call_id": "call_abc", "content": "18C and sunny"}
    assert len(req2["messages"]) == 4


async def test_tool_result_error_and_trailing_text(server: FakeOpenAIServer, model: OpenAICompatModel) -> None:
    server.add(Rule(text="ok"))
    messages = [
        Message.user("go"),
        Message("assistant", [TextBlock("Let me check."), ToolUseBlock("c1", "get_weather", {"city": "Oslo"})]),
        Message("user", [ToolResultBlock("c1", "city not found", is_error=True), TextBlock("Try again.")]),
    ]
    await model.complete(ModelRequest(model="m", messages=messages, tools=[WEATHER]))
    sent = server.requests[0].body["messages"]
    assert sent[1]["content"] == "Let me check."
    assert sent[2] == {"role": "tool", "tool_call_id": "c1", "content": "Error: city not found"}
    assert sent[3] == {"role": "user", "content": "Try again."}


@pytest.mark.parametrize(("choice", "wire"), [
    (ToolChoice("auto"), "auto"),
    (ToolChoice("none"), "none"),
    (ToolChoice("any"), "required"),
    (ToolChoice("tool", "get_weather"), {"type": "function", "function": {"name": "get_weather"}}),
])
async def test_tool_choice_mapping(server: FakeOpenAIServer, model: OpenAICompatModel,
                                   choice: ToolChoice, wire: object) -> None:
    server.add(Rule(text="ok"))
    await model.complete(request(tools=[WEATHER], tool_choice=choice))
    assert server.requests[0].body["tool_choice"] == wire
    assert "parallel_tool_calls" not in server.requests[0].body


async def test_disable_parallel_tool_use(server: FakeOpenAIServer, model: OpenAICompatModel) -> None:
    server.add(Rule(text="ok"))
    await model.complete(request(tools=[WEATHER], tool_choice=ToolChoice("any", disable_parallel_tool_use=True)))
    assert server.requests[0].body["parallel_tool_calls"] is False


async def test_json_schema_response_format(server: FakeOpenAIServer, model: OpenAICompatModel) -> None:
    schema = {"type": "object", "properties": {"verdict": {"enum": ["pass", "fail"]}}, "required": ["verdict"]}
    server.add(Rule(match="judge", json={"verdict": "pass"}))
    resp = await model.complete(request("judge this", output_schema=schema, stop_sequences=["END"]))
    body = server.requests[0].body
    assert body["response_format"] == {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
    assert body["stop"] == ["END"]
    assert "temperature" not in body
    assert json.loads(resp.text) == {"verdict": "pass"}
    assert resp.stop_reason == "end_turn"


async def test_output_schema_with_tools_sends_no_response_format(server: FakeOpenAIServer,
                                                                 model: OpenAICompatModel) -> None:
    server.add(Rule(text="ok"))
    await model.complete(request(tools=[WEATHER], output_schema={"type": "object"}))
    assert "response_format" not in server.requests[0].body


async def test_usage_and_cached_tokens(server: FakeOpenAIServer, model: OpenAICompatModel) -> None:
    server.add(Rule(text="hi", usage={"prompt_tokens": 1200, "completion_tokens": 37,
                                      "prompt_tokens_details": {"cached_tokens": 1000}},
                    headers={"x-ratelimit-remaining-requests": "99", "x-request-id": "req_42",
                             "set-cookie": "secret=1"}))
    resp = await model.complete(request())
    assert resp.usage.input_tokens == 200
    assert resp.usage.cache_read_input_tokens == 1000
    assert resp.usage.output_tokens == 37
    assert resp.usage.total_input_tokens == 1200
    assert resp.model == "qwen2.5"
    assert resp.request_id == "req_42"
    assert resp.headers["x-ratelimit-remaining-requests"] == "99"
    assert "set-cookie" not in resp.headers


async def test_usage_without_details(server: FakeOpenAIServer, model: OpenAICompatModel) -> None:
    server.add(Rule(text="hi", usage={"prompt_tokens": 10, "completion_tokens": 2}))
    resp = await model.complete(request())
    assert (resp.usage.input_tokens, resp.usage.output_tokens, resp.usage.cache_read_input_tokens) == (10, 2, 0)


@pytest.mark.parametrize(("finish", "stop_reason"), [
    ("stop", "end_turn"), ("length", "max_tokens"), ("content_filter", "refusal"), ("tool_calls", "tool_use"),
])
async def test_finish_reason_mapping(server: FakeOpenAIServer, model: OpenAICompatModel,
                                     finish: str, stop_reason: str) -> None:
    server.add(Rule(text="x", finish_reason=finish))
    assert (await model.complete(request())).stop_reason == stop_reason


async def test_tool_calls_with_stop_finish_reason_is_tool_use(server: FakeOpenAIServer,
                                                              model: OpenAICompatModel) -> None:
    server.add(Rule(tool_calls=[{"name": "get_weather", "arguments": "{\"city\": \"Rome\"}"}], finish_reason="stop"))
    resp = await model.complete(request(tools=[WEATHER]))
    assert resp.stop_reason == "tool_use"
    assert resp.tool_uses[0].input == {"city": "Rome"}


async def test_malformed_tool_arguments_raise_model_behavior_error(server: FakeOpenAIServer,
                                                                  model: OpenAICompatModel) -> None:
    server.add(Rule(tool_calls=[{"name": "get_weather", "arguments": "{city: Rome"}]))
    with pytest.raises(ModelBehaviorError) as info:
        await model.complete(request(tools=[WEATHER]))
    assert info.value.raw_output == "{city: Rome"
    assert "get_weather" in str(info.value)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_client_errors_are_not_retryable(server: FakeOpenAIServer, model: OpenAICompatModel,
                                               status: int) -> None:
    server.add(Rule(status=status))
    with pytest.raises(ProviderError) as info:
        await model.complete(request())
    err = info.value
    assert type(err) is ProviderError
    assert err.status == status and err.retryable is False and err.provider == "openai"
    assert err.request_id == f"req_fake_{status}"
    assert f"scripted status {status}" in str(err)
    assert len(server.requests) == 1  # the adapter never retries


@pytest.mark.parametrize("status", [408, 409, 500, 502, 503, 529])
async def test_server_errors_are_retryable(server: FakeOpenAIServer, model: OpenAICompatModel, status: int) -> None:
    server.add(Rule(status=status))
    with pytest.raises(ProviderError) as info:
        await model.complete(request())
    assert info.value.status == status and info.value.retryable is True
    assert info.value.retry_after is None
    assert len(server.requests) == 1


async def test_429_honours_retry_after(server: FakeOpenAIServer, model: OpenAICompatModel) -> None:
    server.add(Rule(status=429, retry_after=7, times=1))
    server.add(Rule(text="recovered"))
    with pytest.raises(ProviderError) as info:
        await model.complete(request())
    assert info.value.status == 429 and info.value.retryable is True
    assert info.value.retry_after == 7.0
    assert info.value.error_type == "rate_limit_error"
    assert (await model.complete(request())).text == "recovered"  # the rule is spent


async def test_x_should_retry_header_overrides_status(server: FakeOpenAIServer, model: OpenAICompatModel) -> None:
    server.add(Rule(status=429, headers={"x-should-retry": "false"}, times=1))
    server.add(Rule(status=400, headers={"x-should-retry": "true"}, times=1))
    with pytest.raises(ProviderError) as first:
        await model.complete(request())
    with pytest.raises(ProviderError) as second:
        await model.complete(request())
    assert first.value.retryable is False
    assert second.value.retryable is True


async def test_connection_reset_is_a_retryable_connection_error(server: FakeOpenAIServer,
                                                                model: OpenAICompatModel) -> None:
    server.add(Rule(reset=True))
    with pytest.raises(ProviderConnectionError) as info:
        await model.complete(request())
    assert info.value.retryable is True and info.value.provider == "openai"
    assert len(server.requests) == 1


async def test_connection_refused() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    m = OpenAICompatModel(base_url=f"http://127.0.0.1:{port}/v1")
    try:
        with pytest.raises(ProviderConnectionError) as info:
            await m.complete(request())
        assert info.value.retryable is True
        assert f"127.0.0.1:{port}" in str(info.value)
    finally:
        await m.aclose()


async def test_timeout_is_retryable(server: FakeOpenAIServer, model: OpenAICompatModel) -> None:
    server.add(Rule(text="slow", delay_s=2.0))
    with pytest.raises(ProviderTimeout) as info:
        await model.complete(request(timeout_s=0.3))
    assert info.value.retryable is True and info.value.provider == "openai"


async def test_unmatched_request_fails_loudly(server: FakeOpenAIServer, model: OpenAICompatModel) -> None:
    server.add(Rule(match="only this", text="x"))
    with pytest.raises(ProviderError) as info:
        await model.complete(request("something else"))
    assert info.value.status == 400 and "no scripted rule" in str(info.value)


async def test_session_survives_a_new_event_loop(server: FakeOpenAIServer) -> None:
    """An adapter cached per process is reused by a later event loop (e.g. a second asyncio.run)."""
    server.add(Rule(text="ok"))
    m = OpenAICompatModel(base_url=server.url)
    assert (await m.complete(request())).text == "ok"
    first_session = m._session

    def other_loop() -> str:
        async def go() -> str:
            try:
                return (await m.complete(request())).text
            finally:
                await m.aclose()
        return asyncio.run(go())

    assert await asyncio.to_thread(other_loop) == "ok"
    assert m._session is not first_session
    assert first_session is not None
    await first_session.close()


def test_retry_after_parsing() -> None:
    assert retry_after({"retry-after-ms": "1500"}) == 1.5
    assert retry_after({"retry-after": "2.5"}) == 2.5
    assert retry_after({"retry-after": "garbage"}) is None
    assert retry_after({}) is None
    date = retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert date == 0.0  # in the past: no wait


@pytest.mark.parametrize("data", [
    {"choices": ["hello"]},
    {"choices": [{"message": "hello", "finish_reason": "stop"}]},
    {"choices": [{"message": {"content": "hi", "tool_calls": ["x"]}, "finish_reason": "stop"}]},
])
def test_a_body_of_the_wrong_shape_is_a_provider_error(data):
    from baton.errors import ProviderError
    from baton.models.openai_compat import parse_response

    with pytest.raises(ProviderError) as info:
        parse_response(data, "m")
    assert info.value.error_type == "invalid_response" and info.value.retryable
