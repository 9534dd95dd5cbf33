"""ScriptedModel and the shared script vocabulary (rules, replies, faults, schema examples)."""

from __future__ import annotations

import asyncio
import re
import time

import jsonschema
import pydantic
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
from baton.models.anthropic import AnthropicModel, request_to_wire
from baton.models.base import Model
from baton.testing import (
    FakeAnthropicServer,
    Fault,
    Rule,
    ScriptedModel,
    json_reply,
    text,
    tool_call,
    tool_calls,
)
from baton.testing.script import example_for_schema, prompt_segments, rules_from_data
from baton.testing.scripted import last_request_text

SEARCH = ToolSpec("search", "Search.", {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]})


def ask(prompt: str, **kw) -> ModelRequest:
    return ModelRequest("claude-sonnet-4-6", [Message.user(prompt)], **kw)


async def test_is_a_model_and_records_requests():
    model = ScriptedModel([Rule("hello", reply=text("hi"))])
    assert isinstance(model, Model) and model.provider == "scripted"
    response = await model.complete(ask("hello there"))
    assert response.text == "hi" and response.stop_reason == "end_turn"
    assert response.model == "claude-sonnet-4-6" and response.request_id.startswith("req_scripted_")
    assert (await model.complete(ask("unmatched"))).text == "ok"
    assert [r.messages[0].text for r in model.requests] == ["hello there", "unmatched"]
    assert len(model.responses) == 2 and last_request_text(model) == "unmatched"
    await model.aclose()


async def test_first_matching_rule_wins_until_used_up():
    model = ScriptedModel([Rule("plan", reply=text("first"), times=2), Rule("plan", reply=text("later")),
                           Rule(reply=text("default"))])
    texts = [(await model.complete(ask(p))).text for p in ("plan", "plan", "plan", "other")]
    assert texts == ["first", "first", "later", "default"]
    assert [r.used for r in model.rules] == [2, 1, 1]


async def test_match_covers_system_and_tool_results_but_not_assistant_text():
    model = ScriptedModel([Rule(r"ROLE-X.*result-42", reply=text("both seen")),
                           Rule("assistant-only", reply=text("wrong"))])
    history = [Message.user("go"), Message("assistant", [TextBlock("assistant-only"), ToolUseBlock("t1", "search", {})]),
               Message("user", [ToolResultBlock("t1", "result-42")])]
    response = await model.complete(ModelRequest("m", history, system="You are ROLE-X.", tools=[SEARCH]))
    assert response.text == "both seen"


async def test_model_filter_and_callable_replies():
    model = ScriptedModel([Rule(model="claude-haiku-4-5", reply=text("cheap")),
                           Rule(reply=lambda req: text(f"{req.model}:{len(req.messages)}"))])
    assert (await model.complete(ModelRequest("claude-haiku-4-5", [Message.user("x")]))).text == "cheap"
    assert (await model.complete(ask("x"))).text == "claude-sonnet-4-6:1"


async def test_tool_calls_have_unique_ids_and_a_valid_roundtrip():
    model = ScriptedModel([
        Rule("find", times=1, reply=tool_calls([("search", {"q": "a"}), ("search", {"q": "b"})])),
        Rule("found", reply=text("done")),
    ])
    first = await model.complete(ask("find", tools=[SEARCH]))
    assert first.stop_reason == "tool_use" and [u.input for u in first.tool_uses] == [{"q": "a"}, {"q": "b"}]
    ids = [u.id for u in first.tool_uses]
    assert len(set(ids)) == 2
    history = [Message.user("find"), Message("assistant", first.content),
               Message("user", [ToolResultBlock(i, "found it") for i in ids])]
    assert (await model.complete(ModelRequest("m", history, tools=[SEARCH]))).text == "done"


async def test_requests_the_real_api_rejects_raise_400():
    model = ScriptedModel()
    history = [Message.user("find"), Message("assistant", [ToolUseBlock("t1", "search", {"q": "x"})]),
               Message.user("no tool result here")]
    with pytest.raises(ProviderError, match="tool_use` ids were found without `tool_result`") as info:
        await model.complete(ModelRequest("m", history, tools=[SEARCH]))
    assert info.value.status == 400 and not info.value.retryable and info.value.provider == "scripted"
    with pytest.raises(ProviderError, match="not found in provided tools"):
        await model.complete(ask("x", tools=[SEARCH], tool_choice=ToolChoice("tool", "missing")))
    lenient = ScriptedModel(validate=False)
    assert (await lenient.complete(ModelRequest("m", history))).text == "ok"


async def test_forced_tool_gets_schema_valid_input_or_the_json_reply():
    schema = {"type": "object", "properties": {"answer": {"type": "string"}, "score": {"type": "integer",
                                                                                       "minimum": 1}},
              "required": ["answer", "score"]}
    tool = ToolSpec("final_output", "Return the result.", schema)
    model = ScriptedModel([Rule("exact", reply=json_reply({"answer": "yes", "score": 5}))])
    forced = ToolChoice("tool", "final_output")
    generated = await model.complete(ask("anything", tools=[SEARCH, tool], tool_choice=forced))
    use = generated.tool_uses[0]
    assert use.name == "final_output" and generated.stop_reason == "tool_use"
    jsonschema.validate(use.input, schema)
    exact = await model.complete(ask("exact", tools=[tool], tool_choice=ToolChoice("any")))
    assert exact.tool_uses[0].input == {"answer": "yes", "score": 5}
    as_text = await model.complete(ask("exact"))
    assert as_text.text == '{"answer":"yes","score":5}' and not as_text.tool_uses


class Address(pydantic.BaseModel):
    street: str
    zip_code: str = pydantic.Field(min_length=5, max_length=5)


class Report(pydantic.BaseModel):
    title: str
    kind: str = pydantic.Field(json_schema_extra={"enum": ["brief", "full"]})
    tags: list[str] = pydantic.Field(min_length=2)
    address: Address
    owner: Address | None
    ratio: float = pydantic.Field(gt=0, le=1)
    count: int = pydantic.Field(ge=3)
    flag: bool


@pytest.mark.parametrize("schema", [
    Report.model_json_schema(),
    {"type": "object", "properties": {"when": {"type": "string", "format": "date-time"},
                                      "mode": {"enum": ["fast", "slow"]}, "n": {"type": ["integer", "null"]},
                                      "pair": {"type": "array", "prefixItems": [{"type": "string"},
                                                                                {"type": "number"}]},
                                      "k": {"const": 7},
                                      "neg": {"type": "number", "exclusiveMaximum": -2},
                                      "all": {"allOf": [{"type": "object", "properties": {"a": {"type": "string"}},
                                                         "required": ["a"]},
                                                        {"properties": {"b": {"type": "boolean"}},
                                                         "required": ["b"]}]}},
     "required": ["when", "mode", "n", "pair", "k", "neg", "all"], "additionalProperties": False},
    {"type": "object", "properties": {"items": {"type": "array", "items": {"type": "integer"}, "minItems": 3,
                                                "uniqueItems": True}}, "required": ["items"]},
])
def test_schema_examples_validate(schema):
    value = example_for_schema(schema)
    jsonschema.validate(value, schema)
    assert value == example_for_schema(schema)  # deterministic


async def test_usage_is_deterministic():
    model = ScriptedModel([Rule(reply=text("x" * 40))])
    request = ask("y" * 100, system="s" * 20, tools=[SEARCH])
    response = await model.complete(request)
    expected_in = sum(s.tokens for s in prompt_segments(request_to_wire(request)))
    assert response.usage.input_tokens == expected_in and response.usage.output_tokens == 10
    assert (await model.complete(request)).usage == response.usage


async def test_stop_sequences_and_max_tokens_truncate():
    model = ScriptedModel([Rule(reply=text("one two STOP three " * 10))])
    stopped = await model.complete(ask("q", stop_sequences=["STOP"]))
    assert stopped.text == "one two " and stopped.stop_reason == "stop_sequence"
    cut = await model.complete(ask("q", max_tokens=5))
    assert len(cut.text) == 20 and cut.stop_reason == "max_tokens"


async def test_latency_and_timeout():
    model = ScriptedModel([Rule("slow", reply=text("late"), latency_s=0.2)], default_latency_s=0.05)
    started = time.monotonic()
    assert (await model.complete(ask("slow"))).text == "late"
    assert 0.18 <= time.monotonic() - started < 1
    with pytest.raises(ProviderTimeout):
        await model.complete(ask("slow", timeout_s=0.05))
    started = time.monotonic()
    await asyncio.gather(*(model.complete(ask("fast")) for _ in range(20)))
    assert time.monotonic() - started < 0.5  # latency overlaps across concurrent calls


@pytest.mark.parametrize(("fault", "status", "retryable", "retry_after"), [
    (Fault.rate_limit(4), 429, True, 4.0),
    (Fault.rate_limit(None, retry_after_ms=250), 429, True, 0.25),
    (Fault.spend_limit(), 429, False, None),
    (Fault.server_error(), 500, True, None),
    (Fault.server_error(should_retry=False), 500, False, None),
    (Fault.overloaded(), 529, True, None),
    (Fault.status(403), 403, False, None),
    (Fault.status(400, should_retry=True), 400, True, None),
    (Fault.too_large(), 413, False, None),
    (Fault.stream_error("overloaded_error"), 529, True, None),
])
async def test_faults_raise_the_adapters_errors(fault, status, retryable, retry_after):
    model = ScriptedModel([Rule(fault=fault)])
    with pytest.raises(ProviderError) as info:
        await model.complete(ask("q"))
    err = info.value
    assert (err.status, err.retryable, err.retry_after) == (status, retryable, retry_after)
    assert err.provider == "scripted" and err.request_id.startswith("req_scripted_")


async def test_connection_faults_and_stall():
    model = ScriptedModel([Rule("reset", fault=Fault.connection_reset()), Rule("stall", fault=Fault.stall(5)),
                           Rule("short", fault=Fault.stall(0.05), reply=text("eventually"))])
    with pytest.raises(ProviderConnectionError):
        await model.complete(ask("reset"))
    with pytest.raises(ProviderTimeout):
        await model.complete(ask("stall", timeout_s=0.05))
    assert (await model.complete(ask("short"))).text == "eventually"


def test_fault_probability_is_seeded_and_rule_then_replies():
    def run(seed: int) -> list[str]:
        async def go() -> list[str]:
            model = ScriptedModel([Rule(fault=Fault.server_error(p=0.2), reply=text("fine"))], seed=seed)
            out = []
            for _ in range(100):
                try:
                    out.append((await model.complete(ask("q"))).text)
                except ProviderError:
                    out.append("ERR")
            return out
        return asyncio.run(go())

    a, b, c = run(1), run(1), run(2)
    assert a == b and a != c
    assert 10 <= a.count("ERR") <= 32 and a.count("fine") == 100 - a.count("ERR")


def test_rules_from_json_data():
    rules = rules_from_data({"rules": [
        {"match": "a", "text": "A", "times": 1, "latency_s": 0.01},
        {"match": "b", "tool_calls": [{"name": "search", "input": {"q": "1"}}, {"name": "search"}]},
        {"match": "c", "json": {"k": 1}, "stop_reason": "max_tokens"},
        {"match": "d", "fault": {"kind": "rate_limit", "retry_after_s": 2, "p": 0.5}},
        {"match": "e", "fault": {"kind": "status", "code": 418, "error_type": "teapot_error"}},
        {"thinking": "hmm", "text": "T"},
    ]})
    assert rules[0].times == 1 and rules[0].reply == text("A")
    assert rules[1].reply.calls == (("search", {"q": "1"}), ("search", {}))
    assert rules[2].reply == json_reply({"k": 1}, stop_reason="max_tokens")
    assert rules[3].fault == Fault.rate_limit(2, p=0.5)
    assert rules[4].fault.code == 418 and rules[4].fault.error_type == "teapot_error"
    assert rules[5].reply.thinking == "hmm"
    for bad, where in [([{"match": "("}], "valid regex"), ([{"txt": "x"}], "rules[0]: unknown field"),
                       ([{"tool_call": {"input": {}}}], "rules[0].tool_call"),
                       ([{"fault": {"kind": "stall"}}], "needs field 'seconds'"), ({"rules": 3}, "expected a list")]:
        with pytest.raises(UsageError, match=re.escape(where)):
            rules_from_data(bad)


async def test_same_script_same_answers_in_process_and_over_http():
    rules = lambda: [Rule("weather", reply=tool_call("search", {"q": "weather"}), times=1),  # noqa: E731
                     Rule(reply=text("The forecast is sunny and mild for the whole week."))]
    request = ask("weather in Oslo", tools=[SEARCH], system="Be helpful.")
    scripted = ScriptedModel(rules())
    async with FakeAnthropicServer(rules()) as server:
        http = AnthropicModel(api_key="k", base_url=server.url)
        for _ in range(2):
            a, b = await scripted.complete(request), await http.complete(request)
            assert a.stop_reason == b.stop_reason and a.usage == b.usage
            assert [(type(x), getattr(x, "name", None), getattr(x, "input", None), getattr(x, "text", None))
                    for x in a.content] == \
                   [(type(x), getattr(x, "name", None), getattr(x, "input", None), getattr(x, "text", None))
                    for x in b.content]
        await http.aclose()
