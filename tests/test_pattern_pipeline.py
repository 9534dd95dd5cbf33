"""Pipeline, gates and fallback chains, driven by a scripted model through baton.run."""

from __future__ import annotations

from typing import Any

import baton
from baton.patterns.gates import VERDICT_SCHEMA, FallbackChain, Gate, Verdict
from baton.patterns.pipeline import Pipeline, Stage
from baton.stores.memory import MemoryStore
from baton.testing import Fault, Rule, ScriptedModel, json_reply, text
from test_pattern_support import agent, calls, order, prompt, requests_of, steps

a, b, c = agent("a"), agent("b"), agent("c", description="polishes the text")


def abc_model(*extra: Rule) -> ScriptedModel:
    return ScriptedModel([*extra, Rule(r"^You are a", reply=text("A-out")), Rule(r"^You are b", reply=text("B-out")),
                          Rule(r"^You are c", reply=text("C-out"))])


# --- pipeline -------------------------------------------------------------------------------


async def test_pipeline_runs_stages_in_order_with_explicit_handoffs() -> None:
    store, model = MemoryStore(), abc_model()
    result = await baton.run(Pipeline([a, b, c]), "topic X", store=store, model=model)
    assert result.status == "succeeded" and result.output == "C-out"
    assert order(model) == ["a", "b", "c"]
    assert prompt(model.requests[0]) == "topic X"
    to_b = prompt(model.requests[1])
    assert to_b.startswith("A-out\n\n---\nHandoff from a.")
    assert "Asked: topic X" in to_b and "Next: stage 2 of 3: b" in to_b
    assert "Found:" not in to_b  # the output is shown once, as text
    to_c = prompt(model.requests[2])
    assert to_c.startswith("B-out") and "Next: stage 3 of 3: c (polishes the text)" in to_c
    handoffs = [s for s in await steps(store, result.run_id, "step") if s.name.startswith("handoff:")]
    assert [(h.name, h.result["found"]["output"]) for h in handoffs] == [("handoff:a>b", "A-out"),
                                                                           ("handoff:b>c", "B-out")]
    assert handoffs[0].result["asked"] == "topic X" and handoffs[0].result["to_agent"] == "b"


async def test_pipeline_gate_rejection_stops_before_the_next_stage() -> None:
    checker = agent("checker")
    model = abc_model(Rule(r"^You are checker", reply=json_reply({"valid": False, "reasons": ["too short",
                                                                                              "no sources"]})))
    wf = Pipeline([Stage(a, gate=Gate(checker)), b])
    result = await baton.run(wf, "t", store=MemoryStore(), model=model)
    assert result.status == "failed" and result.error["type"] == "StepFailed"
    msg = result.error["message"]
    assert "stage 1 of 2 (a)" in msg and "gate 'checker'" in msg and "too short; no sources" in msg
    assert result.error["attempts"] == ["too short", "no sources"]
    assert order(model) == ["a", "checker"]  # b never ran
    gate_req = requests_of(model, "checker")[0]
    assert gate_req.tools[-1].name == "final_answer" and gate_req.tools[-1].input_schema == VERDICT_SCHEMA
    assert "A-out" in prompt(gate_req)


async def test_pipeline_function_gate_passes_and_is_journaled() -> None:
    store, model = MemoryStore(), abc_model()

    def has_output(value: Any) -> bool:
        return value == "A-out"

    wf = Pipeline([Stage(a, gate=Gate(has_output)), Stage(b, gate=Gate(lambda v: Verdict(v == "nope", ["not nope"]),
                                                                        name="strict"))])
    result = await baton.run(wf, "t", store=store, model=model)
    assert result.status == "failed" and "gate 'strict'" in result.error["message"]
    assert "not nope" in result.error["message"]
    gates = {s.name: s.result for s in await steps(store, result.run_id, "step") if s.name.startswith("gate:")}
    assert gates == {"gate:has_output": {"valid": True, "reasons": []},
                     "gate:strict": {"valid": False, "reasons": ["not nope"]}}


async def test_pipeline_stage_failure_names_the_stage_and_chains_the_cause() -> None:
    model = abc_model(Rule(r"^You are b", fault=Fault.status(400)))
    result = await baton.run(Pipeline([a, b, c]), "t", store=MemoryStore(), model=model)
    assert result.status == "failed" and result.error["type"] == "StepFailed"
    assert "stage 2 of 3 (b) failed: ProviderError" in result.error["message"]
    assert result.error["step"] == "b" and calls(model)["c"] == 0


async def test_pipeline_resumes_from_the_stage_that_failed() -> None:
    store = MemoryStore()
    model = abc_model(Rule(r"^You are c", fault=Fault.status(400), times=1))
    wf = Pipeline([a, b, c])
    first = await baton.run(wf, "t", store=store, model=model)
    assert first.status == "failed" and calls(model) == {"a": 1, "b": 1, "c": 1}
    second = await baton.resume(first.run_id, wf, store=store, model=model)
    assert second.status == "succeeded" and second.output == "C-out"
    assert calls(model) == {"a": 1, "b": 1, "c": 2}  # stages 1-2 came from the journal
    replayed = await baton.replay(first.run_id, wf, store=store)
    assert replayed.output == "C-out"


async def test_nested_workflow_stage_gets_raw_output_and_handoff_as_state() -> None:
    seen: dict[str, Any] = {}

    async def count_words(ctx: baton.RunContext, value: Any) -> int:
        seen["value"], seen["state"] = value, ctx.state
        return len(str(value).split("-"))

    model = abc_model()
    result = await baton.run(Pipeline([a, count_words, c]), "t", store=MemoryStore(), model=model)
    assert result.status == "succeeded" and result.output == "C-out"
    assert seen["value"] == "A-out"  # unchanged, no handoff text appended
    assert seen["state"].from_agent == "a" and seen["state"].found["output"] == "A-out"
    to_c = prompt(requests_of(model, "c")[0])
    assert to_c.startswith("2\n\n---\nHandoff from count_words.")


async def test_pipeline_rejects_empty_stage_list() -> None:
    try:
        Pipeline([])
    except baton.BatonError as exc:
        assert "at least one stage" in str(exc)
    else:
        raise AssertionError("expected a UsageError")


# --- fallback chains --------------------------------------------------------------------------


async def test_fallback_chain_skips_failures_and_gate_rejections() -> None:
    primary, secondary, tertiary = agent("primary"), agent("secondary"), agent("tertiary")
    model = ScriptedModel([Rule(r"^You are primary", reply=text("bad answer")),
                           Rule(r"^You are secondary", fault=Fault.status(400)),
                           Rule(r"^You are tertiary", reply=text("good answer"))])
    chain = FallbackChain([primary, secondary, tertiary], gate=Gate(lambda v: "good" in v, name="quality"))
    result = await baton.run(chain, "q", store=MemoryStore(), model=model)
    assert result.status == "succeeded" and result.output == "good answer"
    assert order(model) == ["primary", "secondary", "tertiary"]


async def test_fallback_chain_lists_every_attempt_when_all_fail() -> None:
    primary, secondary, tertiary = agent("primary"), agent("secondary"), agent("tertiary")
    model = ScriptedModel([Rule(r"^You are primary", reply=text("bad answer")),
                           Rule(r"^You are secondary", fault=Fault.status(400)),
                           Rule(r"^You are tertiary", reply=text("also bad"))])
    chain = FallbackChain([primary, secondary, tertiary], gate=Gate(lambda v: "good" in v, name="quality"))
    result = await baton.run(chain, "q", store=MemoryStore(), model=model)
    assert result.status == "failed" and result.error["type"] == "StepFailed"
    attempts = result.error["attempts"]
    assert len(attempts) == 3
    assert attempts[0].startswith("primary: rejected by gate 'quality'")
    assert attempts[1].startswith("secondary: ProviderError")
    assert attempts[2].startswith("tertiary: rejected by gate 'quality'")
    assert "all 3 targets failed" in result.error["message"]


async def test_fallback_chain_resume_keeps_keys_when_an_earlier_attempt_now_succeeds() -> None:
    # primary fails (not journaled), secondary succeeds, `after` completes, `last` fails.
    # On resume primary succeeds; the chain took one key in the caller's scope whatever
    # happened inside, so `after` still replays from the journal.
    primary, secondary, after, last = agent("primary"), agent("secondary"), agent("after"), agent("last")
    model = ScriptedModel([Rule(r"^You are primary", fault=Fault.status(400), times=1),
                           Rule(r"^You are primary", reply=text("P")),
                           Rule(r"^You are secondary", reply=text("S")),
                           Rule(r"^You are after", reply=text("done")),
                           Rule(r"^You are last", fault=Fault.status(400), times=1),
                           Rule(r"^You are last", reply=text("end"))])
    chain = FallbackChain([primary, secondary])

    async def wf(ctx: baton.RunContext, x: str) -> list[Any]:
        got = await chain(ctx, x)
        done = (await ctx.call(after, "go")).output
        return [got, done, (await ctx.call(last, "finish")).output]

    store = MemoryStore()
    first = await baton.run(wf, "q", store=store, model=model)
    assert first.status == "failed" and calls(model) == {"primary": 1, "secondary": 1, "after": 1, "last": 1}
    second = await baton.resume(first.run_id, wf, store=store, model=model)
    assert second.status == "succeeded" and second.output == ["P", "done", "end"]
    assert calls(model) == {"primary": 2, "secondary": 1, "after": 1, "last": 2}


async def test_pipeline_handoff_of_a_pydantic_output_is_journaled_as_json() -> None:
    from pydantic import BaseModel

    class Outline(BaseModel):
        points: list[str]

    planner = agent("planner", output=Outline)
    model = ScriptedModel([Rule(r"^You are planner", reply=json_reply({"points": ["x", "y"]})),
                           Rule(r"^You are b", reply=text("B-out"))])
    store = MemoryStore()
    result = await baton.run(Pipeline([planner, b]), "t", store=store, model=model)
    assert result.status == "succeeded" and result.output == "B-out"
    handoff = next(s for s in await steps(store, result.run_id, "step") if s.name == "handoff:planner>b")
    assert handoff.result["found"] == {"output": {"points": ["x", "y"]}}
    assert prompt(requests_of(model, "b")[0]).startswith('{\n  "points": [')
