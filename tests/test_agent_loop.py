"""The agent's tool-use loop, tools and structured output, on a scripted model."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel

import baton
from baton.errors import MaxTurnsExceeded, ModelBehaviorError, UsageError
from baton.messages import ToolResultBlock
from baton.stores.memory import MemoryStore
from baton.testing import Rule, ScriptedModel, json_reply, text, tool_call, tool_calls

calls: list[tuple[str, str]] = []


@baton.tool
async def slow_lookup(topic: str) -> str:
    """Look a topic up.

    Args:
        topic: what to look up
    """
    calls.append(("start", topic))
    await asyncio.sleep(0.05)
    calls.append(("end", topic))
    return f"facts about {topic}"


@baton.tool
def explode(x: int) -> int:
    """Always fails."""
    raise RuntimeError("boom")


def agent_workflow(agent: baton.Agent):
    async def wf(ctx: baton.RunContext, input: str):
        return (await ctx.call(agent, input)).output

    return wf


async def test_parallel_tool_calls_run_concurrently_and_return_in_one_message() -> None:
    calls.clear()
    model = ScriptedModel([
        Rule(r"facts about", reply=text("done")),
        Rule(None, reply=tool_calls([("slow_lookup", {"topic": "a"}), ("slow_lookup", {"topic": "b"})])),
    ])
    agent = baton.Agent("researcher", tools=[slow_lookup])
    result = await baton.run(agent_workflow(agent), "go", store="memory://", model=model)
    assert result.status == "succeeded" and result.output == "done"
    # Both tools started before either finished.
    assert [c[0] for c in calls[:2]] == ["start", "start"]
    # The second request carries both results, first in one user message.
    second = model.requests[1]
    results = [b for b in second.messages[-1].content if isinstance(b, ToolResultBlock)]
    assert [r.content for r in results] == ['facts about a', 'facts about b']
    assert model.call_count == 2


async def test_tool_error_goes_back_to_the_model_as_is_error() -> None:
    model = ScriptedModel([Rule(r"boom", reply=text("the tool failed")),
                           Rule(None, reply=tool_call("explode", {"x": 1}))])
    result = await baton.run(agent_workflow(baton.Agent("a", tools=[explode])), "go", store="memory://", model=model)
    assert result.output == "the tool failed"
    block = model.requests[1].messages[-1].content[0]
    assert isinstance(block, ToolResultBlock) and block.is_error and "RuntimeError: boom" in block.content


async def test_tool_not_given_is_never_executed() -> None:
    store = MemoryStore()
    model = ScriptedModel([Rule(r"not available", reply=text("ok then")),
                           Rule(None, reply=tool_call("explode", {"x": 1}))])
    events = []

    class Capture:
        def handle(self, e):
            events.append(e)

        def close(self):
            pass

    result = await baton.run(agent_workflow(baton.Agent("a", tools=[slow_lookup])), "go", store=store, model=model,
                             sinks=[Capture()])
    assert result.output == "ok then"
    block = model.requests[1].messages[-1].content[0]
    assert block.is_error and "'explode' is not available to agent 'a'" in block.content
    assert [e.data["tool"] for e in events if e.kind == "tool.denied"] == ["explode"]
    assert not [s for s in await store.load_steps(result.run_id) if s.kind == "tool"]


async def test_invalid_tool_input_is_rejected_before_the_call() -> None:
    model = ScriptedModel([Rule(r"invalid input", reply=text("fixed")),
                           Rule(None, reply=tool_call("slow_lookup", {"topic": 5}))])
    calls.clear()
    result = await baton.run(agent_workflow(baton.Agent("a", tools=[slow_lookup])), "go", store="memory://",
                             model=model)
    assert result.output == "fixed" and calls == []


def test_schema_from_type_hints_and_docstring() -> None:
    spec = slow_lookup.spec()
    assert spec.description == "Look a topic up."
    assert spec.input_schema["properties"]["topic"] == {"type": "string", "description": "what to look up"}
    assert spec.input_schema["required"] == ["topic"]
    assert spec.input_schema["additionalProperties"] is False


class Verdict(BaseModel):
    label: str
    score: float


async def test_structured_output_is_forced_and_validated() -> None:
    model = ScriptedModel([Rule(None, reply=json_reply({"label": "spam", "score": 0.9}))])
    result = await baton.run(agent_workflow(baton.Agent("clf", output=Verdict)), "hi", store="memory://",
                             model=model)
    assert result.output == {"label": "spam", "score": 0.9}
    req = model.requests[0]
    assert req.tool_choice is not None and req.tool_choice.type == "tool" and req.tool_choice.name == "final_answer"


async def test_invalid_structured_output_is_reasked_then_fails_with_raw_output() -> None:
    model = ScriptedModel([Rule(r"does not match", reply=json_reply({"label": "x", "score": 0.5}), times=1),
                           Rule(None, reply=json_reply({"label": 3}))])
    wf = agent_workflow(baton.Agent("clf", output=Verdict, output_retries=1))
    ok = await baton.run(wf, "hi", store="memory://", model=model)
    assert ok.output == {"label": "x", "score": 0.5}
    assert "(root): 'score' is a required property" in model.requests[1].messages[-1].content[0].content

    bad = ScriptedModel([Rule(None, reply=json_reply({"label": 3}))])
    result = await baton.run(wf, "hi", store="memory://", model=bad)
    assert result.status == "failed" and result.error["type"] == "ModelBehaviorError"
    assert result.error["raw_output"] == {"label": 3}
    assert bad.call_count == 2


async def test_max_turns_guard_names_the_agent() -> None:
    model = ScriptedModel([Rule(None, reply=tool_call("slow_lookup", {"topic": "x"}))])
    result = await baton.run(agent_workflow(baton.Agent("looper", tools=[slow_lookup], max_turns=3)), "go",
                             store="memory://", model=model)
    assert result.status == "failed" and result.error["type"] == "MaxTurnsExceeded"
    assert "agent 'looper' used all 3 turns" in result.error["message"]
    assert model.call_count == 3

    async def direct(ctx: baton.RunContext, _: str) -> None:
        with pytest.raises(MaxTurnsExceeded, match="looper"):  # the guard raises, inside the workflow too
            await ctx.call(baton.Agent("looper", tools=[slow_lookup], max_turns=2), "go")

    assert (await baton.run(direct, "go", store="memory://", model=model)).ok


def test_prompt_version_changes_with_prompt_tools_and_model() -> None:
    a = baton.Agent("a", system="one")
    assert a.prompt_version == baton.Agent("a", system="one").prompt_version
    assert a.prompt_version != baton.Agent("a", system="two").prompt_version
    assert a.prompt_version != baton.Agent("a", system="one", model="claude-opus-4-6").prompt_version
    assert a.prompt_version != baton.Agent("a", system="one", tools=[slow_lookup]).prompt_version


def test_reserved_and_duplicate_tool_names_are_rejected() -> None:
    with pytest.raises(UsageError):
        baton.Agent("a", tools=[slow_lookup, slow_lookup])
    with pytest.raises(ModelBehaviorError.__mro__[1]):  # BatonError
        baton.tool(lambda: 1, name="bad name!")
