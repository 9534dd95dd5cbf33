"""FakeAnthropicServer on real sockets: validation, faults, rate limits, prompt caching, the log."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime

import aiohttp
import orjson
import pytest

from baton.errors import ProviderError
from baton.messages import Message, ModelRequest, TextBlock
from baton.models.anthropic import AnthropicModel
from baton.testing import FakeAnthropicServer, Fault, RateLimitConfig, Rule, text, tool_call
from baton.testing.fake_anthropic import PromptCache
from baton.testing.script import prompt_segments

KEY = "sk-test-key"
HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01", "content-type": "application/json"}
LONG = "cacheable context " * 300  # 5,400 chars -> 1,350 fake tokens


async def post(server: FakeAnthropicServer, body: object, headers: dict[str, str] | None = None,
               raw: bytes | None = None) -> tuple[int, dict[str, str], dict]:
    async with aiohttp.ClientSession() as session:
        data = raw if raw is not None else orjson.dumps(body)
        async with session.post(server.url + "/v1/messages", data=data,
                                headers=HEADERS if headers is None else headers) as resp:
            payload = await resp.read()
            parsed = orjson.loads(payload) if resp.content_type == "application/json" else {"raw": payload}
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, parsed


def body(*messages: dict, **extra: object) -> dict:
    return {"model": "claude-sonnet-4-6", "max_tokens": 100,
            "messages": list(messages) or [{"role": "user", "content": "hi"}], **extra}


@pytest.fixture
async def server():
    async with FakeAnthropicServer() as s:
        yield s


@pytest.fixture
async def model(server):
    m = AnthropicModel(api_key=KEY, base_url=server.url)
    yield m
    await m.aclose()


# --- validation ------------------------------------------------------------------------------

ASSISTANT_TOOL = {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_a", "name": "f", "input": {}},
                                                   {"type": "tool_use", "id": "toolu_b", "name": "f", "input": {}}]}
TOOLS = [{"name": "f", "description": "", "input_schema": {"type": "object"}}]


@pytest.mark.parametrize(("request_body", "message"), [
    ({"model": "m", "messages": [{"role": "user", "content": "hi"}]}, "max_tokens: Field required"),
    (body(max_tokens=0), "max_tokens: Input should be greater than or equal to 1"),
    ({"model": "m", "max_tokens": 5, "messages": []}, "messages: at least one message is required"),
    (body({"role": "system", "content": "x"}), "messages.0.role: Input should be 'user' or 'assistant'"),
    (body({"role": "user", "content": [{"type": "text", "text": ""}]}), "text content blocks must be non-empty"),
    (body({"role": "user", "content": "q"}, ASSISTANT_TOOL, tools=TOOLS),
     "messages.1: `tool_use` ids were found without `tool_result` blocks immediately after: toolu_a, toolu_b"),
    (body({"role": "user", "content": "q"}, ASSISTANT_TOOL,
          {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_a", "content": "1"}]},
          tools=TOOLS),
     "`tool_use` ids were found without `tool_result` blocks immediately after: toolu_b"),
    (body({"role": "user", "content": "q"}, ASSISTANT_TOOL,
          {"role": "user", "content": [{"type": "text", "text": "here"},
                                       {"type": "tool_result", "tool_use_id": "toolu_a", "content": "1"},
                                       {"type": "tool_result", "tool_use_id": "toolu_b", "content": "2"}]},
          tools=TOOLS),
     "messages.2.content.1: `tool_result` blocks must come first"),
    (body({"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "1"}]}),
     "unexpected `tool_use_id` found in `tool_result` blocks: toolu_x"),
    (body(tools=TOOLS, tool_choice={"type": "tool", "name": "nope"}), "Tool 'nope' not found in provided tools"),
    (body(tool_choice={"type": "any"}), "tool_choice may only be specified while providing tools"),
    (body(tools=TOOLS + TOOLS), "Tool names must be unique"),
    (body(temperature=1.5), "temperature: Input should be less than or equal to 1"),
    (body(system=[{"type": "text", "text": f"s{i}", "cache_control": {"type": "ephemeral"}} for i in range(5)]),
     "A maximum of 4 blocks with cache_control may be provided. Found 5."),
    (body(system=[{"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}},
                  {"type": "text", "text": "b", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]),
     "must not come after a ttl='5m'"),
])
async def test_invalid_requests_get_400_like_the_real_api(server, request_body, message):
    status, headers, payload = await post(server, request_body)
    assert status == 400
    assert payload["type"] == "error" and payload["error"]["type"] == "invalid_request_error"
    assert message in payload["error"]["message"]
    assert headers["request-id"] == payload["request_id"] == server.requests[0].request_id
    assert server.requests[0].status == 400 and server.completed_count == 0


async def test_valid_tool_roundtrip_is_accepted(server):
    status, _, payload = await post(server, body(
        {"role": "user", "content": "q"}, ASSISTANT_TOOL,
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_a", "content": "1"},
                                     {"type": "tool_result", "tool_use_id": "toolu_b", "content": "2"},
                                     {"type": "text", "text": "thanks"}]}, tools=TOOLS))
    assert status == 200 and payload["content"] == [{"type": "text", "text": "ok"}]


async def test_auth_and_body_errors(server):
    status, _, payload = await post(server, body(), headers={"anthropic-version": "2023-06-01"})
    assert status == 401 and payload["error"]["type"] == "authentication_error"
    status, _, payload = await post(server, body(), headers={"x-api-key": KEY})
    assert status == 400 and "anthropic-version" in payload["error"]["message"]
    status, _, payload = await post(server, None, raw=b"{not json")
    assert status == 400 and "error parsing the body" in payload["error"]["message"]
    async with FakeAnthropicServer(api_key="right") as strict:
        status, _, payload = await post(strict, body())
        assert status == 401 and payload["error"]["message"] == "invalid x-api-key"


# --- request log --------------------------------------------------------------------------------


async def test_request_log_records_everything_but_the_key(server, model):
    server.add_rule("weather", reply=tool_call("f", {"x": 1}))
    await model.complete(ModelRequest("claude-sonnet-4-6", [Message.user("weather please")], system="SYS"))
    await model.complete(ModelRequest("claude-sonnet-4-6", [Message.user("other")]))
    first, second = server.requests
    assert first.time_start <= first.time_end and first.status == 200 and first.rule_index == 0
    assert second.rule_index is None
    assert first.headers["x-api-key"] == "REDACTED"
    assert KEY not in json.dumps([r.to_dict() for r in server.requests])
    assert first.text == "SYS\nweather please"
    assert first.usage["output_tokens"] >= 1
    assert [r.index for r in server.requests_matching("weather")] == [0]
    assert server.completed_count == 2
    server.reset()
    assert server.requests == [] and server.completed_count == 0


async def test_jsonl_log_for_other_processes(tmp_path):
    log = tmp_path / "requests.jsonl"
    async with FakeAnthropicServer(log_path=log) as server:
        model = AnthropicModel(api_key=KEY, base_url=server.url)
        await model.complete(ModelRequest("claude-sonnet-4-6", [Message.user("one")]))
        await model.complete(ModelRequest("claude-sonnet-4-6", [Message.user("two")]))
        await model.aclose()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [entry["body"]["messages"][0]["content"][0]["text"] for entry in lines] == ["one", "two"]
    assert all(entry["status"] == 200 and entry["headers"]["x-api-key"] == "REDACTED" for entry in lines)


# --- rules and faults on the wire ---------------------------------------------------------------


async def test_rules_first_match_times_and_fallthrough(server, model):
    server.add_rule("alpha", reply=text("A1"), times=1)
    server.add_rule("alpha", reply=text("A2"))
    server.add_rule(reply=lambda req: text(f"echo {len(req.messages)}"))
    ask = lambda p: model.complete(ModelRequest("claude-sonnet-4-6", [Message.user(p)]))  # noqa: E731
    assert [(await ask(p)).text for p in ("alpha", "alpha", "beta")] == ["A1", "A2", "echo 1"]
    assert server.rules[0].used == 1 and server.rules[1].used == 1


async def test_fault_headers_on_the_wire(server):
    server.add_rule("rl", fault=Fault.rate_limit(3, retry_after_ms=2500))
    server.add_rule("nr", fault=Fault.overloaded(should_retry=False))
    server.add_rule("cap", fault=Fault.spend_limit())
    status, headers, payload = await post(server, body({"role": "user", "content": "rl"}))
    assert (status, headers["retry-after"], headers["retry-after-ms"]) == (429, "3", "2500")
    assert payload["error"]["type"] == "rate_limit_error"
    status, headers, payload = await post(server, body({"role": "user", "content": "nr"}))
    assert (status, headers["x-should-retry"], payload["error"]["type"]) == (529, "false", "overloaded_error")
    status, headers, payload = await post(server, body({"role": "user", "content": "cap"}))
    assert status == 429 and "retry-after" not in headers
    assert payload["error"]["details"] == {"error_code": "enforced_spend_limit_reached"}


async def test_connection_reset_sends_no_response(server):
    server.add_rule(fault=Fault.connection_reset())
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        await post(server, body())
    assert server.requests[0].fault == "connection_reset" and server.requests[0].status is None


async def test_probabilistic_faults_are_seeded():
    async def outcomes(seed: int) -> list[int]:
        async with FakeAnthropicServer([Rule(fault=Fault.server_error(p=0.25))], seed=seed) as server:
            model = AnthropicModel(api_key=KEY, base_url=server.url)
            results = []
            for i in range(80):
                try:
                    await model.complete(ModelRequest("claude-sonnet-4-6", [Message.user(f"q{i}")]))
                    results.append(200)
                except ProviderError as exc:
                    results.append(exc.status or 0)
            await model.aclose()
            return results

    first, again = await outcomes(7), await outcomes(7)
    assert first == again
    assert 8 <= first.count(500) <= 35 and first.count(200) + first.count(500) == 80


async def test_streaming_events_in_order(server):
    server.add_rule(reply=tool_call("f", {"k": "v"}, text="hi"))
    async with aiohttp.ClientSession() as session:
        async with session.post(server.url + "/v1/messages", headers=HEADERS,
                                data=orjson.dumps(body(stream=True, tools=TOOLS))) as resp:
            raw = (await resp.read()).decode()
    events = [line[7:] for line in raw.splitlines() if line.startswith("event: ")]
    assert events[0] == "message_start" and events[-2:] == ["message_delta", "message_stop"]
    assert events.count("content_block_start") == events.count("content_block_stop") == 2
    assert "input_json_delta" in raw


async def test_count_tokens_endpoint(server):
    async with aiohttp.ClientSession() as session:
        async with session.post(server.url + "/v1/messages/count_tokens", headers=HEADERS,
                                data=orjson.dumps(body({"role": "user", "content": "x" * 400}))) as resp:
            assert (await resp.json()) == {"input_tokens": 100}


# --- rate limits ------------------------------------------------------------------------------


async def test_requests_per_minute_bucket_and_headers():
    async with FakeAnthropicServer(rate_limits=RateLimitConfig(rpm=3)) as server:
        model = AnthropicModel(api_key=KEY, base_url=server.url)
        req = ModelRequest("claude-sonnet-4-6", [Message.user("hi")])
        remaining = [(await model.complete(req)).headers["anthropic-ratelimit-requests-remaining"] for _ in range(3)]
        assert remaining == ["2", "1", "0"]
        with pytest.raises(ProviderError) as info:
            await model.complete(req)
        assert info.value.status == 429 and info.value.retryable
        assert info.value.retry_after == 20  # refill is 3/min: one request every 20 s
        assert "3 requests per minute" in str(info.value)
        assert server.rate_limited_count == 1 and server.requests[-1].rule_index is None
        server.advance_clock(20)
        ok = await model.complete(req)
        reset = datetime.fromisoformat(ok.headers["anthropic-ratelimit-requests-reset"].replace("Z", "+00:00"))
        assert reset > datetime.now(UTC)
        with pytest.raises(ProviderError):
            await model.complete(req)
        assert server.rate_limited_count == 2 and server.completed_count == 4
        await model.aclose()


async def test_input_tokens_bucket_ignores_cache_reads():
    system = [{"type": "text", "text": LONG, "cache_control": {"type": "ephemeral"}}]
    async with FakeAnthropicServer(rate_limits=RateLimitConfig(itpm=2000)) as server:
        model = AnthropicModel(api_key=KEY, base_url=server.url)
        req = ModelRequest("claude-sonnet-4-6", [Message.user("hi")], system=system)
        first = await model.complete(req)  # ~1,350 tokens written: counts toward ITPM
        assert first.usage.cache_creation_input_tokens == len(LONG) // 4
        for _ in range(5):  # reads don't count, so these fit in the remaining ~650 tokens
            assert (await model.complete(req)).usage.cache_read_input_tokens == len(LONG) // 4
        other = ModelRequest("claude-sonnet-4-6", [Message.user("hi " + LONG)])
        with pytest.raises(ProviderError, match="input tokens per minute") as info:
            await model.complete(other)
        assert info.value.retry_after and info.value.retry_after > 1
        await model.aclose()


async def test_output_tokens_bucket_charges_after_the_response():
    async with FakeAnthropicServer([Rule(reply=text("y" * 400))], rate_limits=RateLimitConfig(otpm=120)) as server:
        model = AnthropicModel(api_key=KEY, base_url=server.url)
        req = ModelRequest("claude-sonnet-4-6", [Message.user("hi")])
        assert (await model.complete(req)).usage.output_tokens == 100
        assert (await model.complete(req)).headers["anthropic-ratelimit-output-tokens-remaining"] == "0"
        with pytest.raises(ProviderError, match="output tokens per minute"):
            await model.complete(req)
        await model.aclose()


# --- prompt caching ---------------------------------------------------------------------------


def cached_request(*user_texts: str, ttl: str | None = None, system_text: str = LONG) -> ModelRequest:
    cc = {"type": "ephemeral", **({"ttl": ttl} if ttl else {})}
    return ModelRequest("claude-sonnet-4-6", [Message.user(t) for t in user_texts][:1],
                        system=[{"type": "text", "text": system_text, "cache_control": cc}])


async def test_cache_write_then_read_and_input_after_breakpoint(server, model):
    first = await model.complete(cached_request("question one"))
    second = await model.complete(cached_request("a different question"))
    prefix = len(LONG) // 4
    assert (first.usage.cache_creation_input_tokens, first.usage.cache_read_input_tokens) == (prefix, 0)
    assert (second.usage.cache_creation_input_tokens, second.usage.cache_read_input_tokens) == (0, prefix)
    assert second.usage.input_tokens == len("a different question") // 4


async def test_below_minimum_nothing_is_cached(server, model):
    small = cached_request("q", system_text="short system prompt")
    for _ in range(2):
        usage = (await model.complete(small)).usage
        assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (0, 0)


async def test_cache_entry_is_readable_only_after_the_first_response_starts(server, model):
    server.add_rule(latency_s=0.3)
    request = cached_request("same")
    # Three identical requests arrive together, before any response starts: all pay the write.
    burst = await asyncio.gather(*(model.complete(request) for _ in range(3)))
    assert [r.usage.cache_creation_input_tokens for r in burst] == [len(LONG) // 4] * 3
    assert [r.usage.cache_read_input_tokens for r in burst] == [0, 0, 0]
    # Once a response has started, the next request reads.
    after = await model.complete(request)
    assert after.usage.cache_read_input_tokens == len(LONG) // 4


async def test_cache_readable_from_response_start_not_request_arrival():
    async with FakeAnthropicServer([Rule(latency_s=0.4)]) as server:
        model = AnthropicModel(api_key=KEY, base_url=server.url)
        request = cached_request("same")
        first = asyncio.create_task(model.complete(request))
        await asyncio.sleep(0.2)  # first is in flight, its response has not started
        mid = await model.complete(request)  # arrives before first's response starts
        assert mid.usage.cache_creation_input_tokens > 0
        await first
        server.rules.clear()
        late = await model.complete(request)
        assert late.usage.cache_read_input_tokens == len(LONG) // 4
        await model.aclose()


async def test_ttl_expiry_refresh_and_one_hour_entries(server, model):
    five = cached_request("q")
    await model.complete(five)
    server.advance_clock(200)
    assert (await model.complete(five)).usage.cache_read_input_tokens > 0  # hit refreshes the 5 min TTL
    server.advance_clock(250)  # 450 s after the write, 250 s after the refresh
    assert (await model.complete(five)).usage.cache_read_input_tokens > 0
    server.advance_clock(301)
    expired = (await model.complete(five)).usage
    assert expired.cache_read_input_tokens == 0 and expired.cache_creation_input_tokens > 0

    hour = cached_request("q", ttl="1h", system_text=LONG + " hourly")
    written = (await model.complete(hour)).usage
    assert written.cache_creation_1h_input_tokens == written.cache_creation_input_tokens > 0
    server.advance_clock(1800)
    assert (await model.complete(hour)).usage.cache_read_input_tokens > 0


async def test_growing_conversation_reads_the_previous_breakpoint(server, model):
    turn1 = [Message("user", [TextBlock(LONG, cache_control={"type": "ephemeral"})])]
    r1 = await model.complete(ModelRequest("claude-sonnet-4-6", turn1))
    turn2 = [Message("user", [TextBlock(LONG)]), Message("assistant", r1.content),
             Message("user", [TextBlock("follow-up " * 10, cache_control={"type": "ephemeral"})])]
    r2 = await model.complete(ModelRequest("claude-sonnet-4-6", turn2))
    segments = prompt_segments(server.requests[1].body)
    total = sum(s.tokens for s in segments)
    assert r2.usage.cache_read_input_tokens == len(LONG) // 4
    assert r2.usage.cache_creation_input_tokens == total - len(LONG) // 4
    assert r2.usage.input_tokens == 0


async def test_breakpoints_on_tools_and_automatic_top_level(server, model):
    big_schema = {"type": "object", "properties": {f"p{i}": {"type": "string", "description": "d" * 60}
                                                   for i in range(60)}}
    tools = [{"name": "big", "description": "x", "input_schema": big_schema, "cache_control": {"type": "ephemeral"}}]
    raw = body({"role": "user", "content": "question"}, tools=tools, cache_control={"type": "ephemeral"})
    segments = prompt_segments(raw)
    tool_tokens, total = segments[0].tokens, sum(s.tokens for s in segments)
    assert tool_tokens >= 1024
    status, _, payload = await post(server, raw)
    assert status == 200
    usage = payload["usage"]
    # Two breakpoints: the tool (explicit) and the last block (automatic); both written.
    assert usage["cache_creation_input_tokens"] == total and usage["input_tokens"] == 0
    status, _, payload = await post(server, raw)
    assert payload["usage"]["cache_read_input_tokens"] == total


def test_prompt_cache_unit_semantics():
    cache = PromptCache(min_tokens=10)
    segs = prompt_segments(body({"role": "user", "content": [{"type": "text", "text": "z" * 80,
                                                              "cache_control": {"type": "ephemeral"}}]}))
    plan = cache.plan("m", segs, None, now=0.0)
    assert (plan.write_5m, plan.read_tokens, plan.input_tokens) == (20, 0, 0)
    assert cache.plan("m", segs, None, now=1.0).read_tokens == 0  # not committed yet: still a write
    cache.commit(plan, now=2.0)
    assert cache.plan("m", segs, None, now=3.0).read_tokens == 20
    assert cache.plan("other-model", segs, None, now=3.0).read_tokens == 0  # caches are per model


# --- threads and processes --------------------------------------------------------------------


def test_background_thread_server_with_rules_added_later():
    server = FakeAnthropicServer()
    url = server.start_in_thread()
    try:
        server.add_rule("ping", reply=text("pong"))

        async def call() -> str:
            model = AnthropicModel(api_key=KEY, base_url=url)
            try:
                return (await model.complete(ModelRequest("claude-sonnet-4-6", [Message.user("ping")]))).text
            finally:
                await model.aclose()

        assert asyncio.run(call()) == "pong"
    finally:
        server.stop_thread()
    assert server.completed_count == 1


def test_cli_serves_a_json_script(tmp_path):
    script = tmp_path / "rules.json"
    script.write_text(json.dumps({"rules": [
        {"match": "weather", "tool_call": {"name": "f", "input": {"city": "Oslo"}}, "times": 1},
        {"match": "boom", "fault": {"kind": "status", "code": 503}},
        {"text": "fallback"},
    ]}))
    log = tmp_path / "log.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "baton.testing.fake_anthropic", "--port", "0",
                             "--script", str(script), "--log", str(log)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("READY http://127.0.0.1:")
        url = line.split()[1]

        async def calls() -> list[object]:
            model = AnthropicModel(api_key=KEY, base_url=url)
            out: list[object] = []
            for prompt in ("weather?", "boom", "anything"):
                try:
                    out.append((await model.complete(ModelRequest("claude-sonnet-4-6", [Message.user(prompt)]))).content)
                except ProviderError as exc:
                    out.append(exc.status)
            await model.aclose()
            return out

        weather, boom, other = asyncio.run(calls())
        assert weather[0].name == "f" and weather[0].input == {"city": "Oslo"}
        assert boom == 503 and other == [TextBlock("fallback")]
    finally:
        proc.terminate()
        proc.wait(10)
    assert proc.returncode == 0
    assert "RuntimeWarning" not in proc.stderr.read()
    assert [json.loads(x)["status"] for x in log.read_text().splitlines()] == [200, 503, 200]


def test_cli_rejects_a_bad_script(tmp_path):
    script = tmp_path / "bad.json"
    script.write_text(json.dumps([{"match": "x", "fault": {"kind": "meteor"}}]))
    done = subprocess.run([sys.executable, "-m", "baton.testing.fake_anthropic", "--script", str(script)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "rules[0].fault.kind: unknown fault 'meteor'" in done.stderr
