"""Router and agent-to-agent handoffs, driven by a scripted model through baton.run."""

from __future__ import annotations

from typing import Any

import pytest

import baton
from _events import EventLog
from baton.errors import UsageError
from baton.observe import events as ev
from baton.patterns.handoff import TRANSFER_SCHEMA, Handoffs
from baton.patterns.router import ROUTE_SCHEMA, Router
from baton.runtime.ratelimit import RateGovernor
from baton.stores.memory import MemoryStore
from baton.testing import Fault, Rule, ScriptedModel, json_reply, text, tool_call
from test_pattern_support import agent, calls, order, prompt, requests_of, steps


class RecordingGovernor(RateGovernor):
    """Records the priority every model call asked the rate governor with."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[tuple[str, str]] = []

    async def acquire(self, model: str, *, input_tokens: int, output_tokens: int,
                      priority: Any = "normal") -> float:
        self.asked.append((model, priority))
        return await super().acquire(model, input_tokens=input_tokens, output_tokens=output_tokens,
                                     priority=priority)


def _router(fallback: baton.Agent | None = None) -> Router:
    return Router(agent("classifier", model="claude-haiku-4-5"),
                  {"billing": agent("billing", description="handles invoices and refunds"),
                   "tech": agent("tech", description="fixes technical problems")}, fallback=fallback)


def _classify(route: str, priority: str = "high") -> Rule:
    return Rule(r"^You are classifier", reply=json_reply({"route": route, "priority": priority,
                                                          "reasoning": "it is about money"}))


def _handlers() -> list[Rule]:
    return [Rule(r"^You are billing", reply=text("refund issued")), Rule(r"^You are tech", reply=text("rebooted")),
            Rule(r"^You are general", reply=text("general answer"))]


# --- router -----------------------------------------------------------------------------------


async def test_router_sends_input_to_the_chosen_route_with_its_priority() -> None:
    model = ScriptedModel([_classify("billing", "high"), *_handlers()])
    governor, sink = RecordingGovernor(), EventLog()
    result = await baton.run(_router(), "I was charged twice", store=MemoryStore(), model=model,
                             governor=governor, sinks=[sink])
    assert result.status == "succeeded" and result.output == "refund issued"
    assert order(model) == ["classifier", "billing"]
    cls_req = requests_of(model, "classifier")[0]
    assert cls_req.tools[-1].input_schema == ROUTE_SCHEMA
    assert "- billing: handles invoices and refunds" in prompt(cls_req)
    assert "- tech: fixes technical problems" in prompt(cls_req) and "I was charged twice" in prompt(cls_req)
    assert prompt(requests_of(model, "billing")[0]) == "I was charged twice"
    assert governor.asked == [("claude-haiku-4-5", "normal"), ("claude-sonnet-4-6", "high")]
    decision = sink.of("router.decision")[0]
    assert decision["route"] == "billing" and decision["priority"] == "high" and not decision["fallback"]
    assert decision["reasoning"] == "it is about money" and decision["target"] == "billing"


async def test_router_priority_reaches_a_nested_workflow_route() -> None:
    inner = agent("tech")

    async def tech_flow(ctx: baton.RunContext, x: Any) -> Any:
        return (await ctx.call(inner, x)).output

    router = Router(agent("classifier"), {"tech": tech_flow, "billing": agent("billing")})
    governor = RecordingGovernor()
    model = ScriptedModel([_classify("tech", "low"), *_handlers()])
    result = await baton.run(router, "wifi down", store=MemoryStore(), model=model, governor=governor)
    assert result.output == "rebooted" and [p for _, p in governor.asked] == ["normal", "low"]


async def test_router_matches_routes_ignoring_case_and_spaces() -> None:
    model = ScriptedModel([_classify(" Tech "), *_handlers()])
    result = await baton.run(_router(), "x", store=MemoryStore(), model=model)
    assert result.output == "rebooted"


async def test_router_unknown_route_goes_to_the_fallback() -> None:
    model = ScriptedModel([_classify("legal"), *_handlers()])
    sink = EventLog()
    result = await baton.run(_router(fallback=agent("general")), "x", store=MemoryStore(), model=model, sinks=[sink])
    assert result.output == "general answer" and order(model) == ["classifier", "general"]
    decision = sink.of("router.decision")[0]
    assert decision["fallback"] and decision["route"] == "legal" and decision["resolved"] is None


async def test_router_unknown_route_without_fallback_names_the_valid_routes() -> None:
    model = ScriptedModel([_classify("legal"), *_handlers()])
    result = await baton.run(_router(), "x", store=MemoryStore(), model=model)
    assert result.status == "failed" and result.error["type"] == "StepFailed"
    assert "unknown route 'legal'" in result.error["message"]
    assert "valid routes: billing, tech" in result.error["message"]
    assert order(model) == ["classifier"]


# --- handoffs ---------------------------------------------------------------------------------

TRANSFER = {"asked": "refund for order 42", "found": {"order": 42, "charged_twice": True}, "next": "refund it"}


def _desk(*extra: Rule) -> tuple[Handoffs, ScriptedModel]:
    desk = Handoffs({"triage": agent("triage"), "billing": agent("billing", description="handles refunds"),
                     "tech": agent("tech")}, start="triage")
    model = ScriptedModel([*extra,
                           Rule(r"Handoff to billing recorded", reply=text("Passed to billing.")),
                           Rule(r"^You are triage", reply=tool_call("transfer_to_billing", TRANSFER)),
                           Rule(r"^You are billing", reply=text("Refund issued for order 42."))])
    return desk, model


async def test_handoff_passes_control_and_explicit_state_to_the_peer() -> None:
    desk, model = _desk()
    store, sink = MemoryStore(), EventLog()
    result = await baton.run(desk, "I was charged twice for order 42", store=store, model=model, sinks=[sink])
    assert result.status == "succeeded"
    out = result.output
    assert out["output"] == "Refund issued for order 42." and out["chain"] == ["triage", "billing"]
    assert out["handoffs"][0]["from_agent"] == "triage" and out["handoffs"][0]["found"] == TRANSFER["found"]
    assert order(model) == ["triage", "billing"]  # the transfer ends triage's turn: no closing call
    triage_tools = {t.name: t for t in requests_of(model, "triage")[0].tools}
    assert set(triage_tools) == {"transfer_to_billing", "transfer_to_tech"}
    assert triage_tools["transfer_to_billing"].input_schema == TRANSFER_SCHEMA
    assert "handles refunds" in triage_tools["transfer_to_billing"].description
    to_billing = prompt(requests_of(model, "billing")[0])
    assert to_billing.startswith("Original request:\nI was charged twice for order 42")
    assert "Handoff from triage." in to_billing and '"order":42' in to_billing and "Next: refund it" in to_billing
    assert {t.name for t in requests_of(model, "billing")[0].tools} == {"transfer_to_triage", "transfer_to_tech"}
    assert [(e["from"], e["to"]) for e in sink.of(ev.HANDOFF_RECORDED)] == [("triage", "billing")]
    agent_depths = {s.name: s.meta["depth"] for s in await steps(store, result.run_id, "agent")}
    assert agent_depths == {"triage": 1, "billing": 2}  # each handoff goes one level deeper


async def test_handoff_loop_is_stopped_by_max_handoffs() -> None:
    pair = Handoffs({"a": agent("a"), "b": agent("b")}, start="a", max_handoffs=2)
    model = ScriptedModel([Rule(r"Handoff to (a|b) recorded", reply=text("ok")),
                           Rule(r"^You are a", reply=tool_call("transfer_to_b", TRANSFER)),
                           Rule(r"^You are b", reply=tool_call("transfer_to_a", TRANSFER))])
    result = await baton.run(pair, "x", store=MemoryStore(), model=model)
    assert result.status == "failed" and result.error["type"] == "StepFailed"
    assert "more than 2 handoffs: a > b > a > b" in result.error["message"]


async def test_handoff_loop_is_stopped_by_the_depth_limit() -> None:
    pair = Handoffs({"a": agent("a"), "b": agent("b")}, start="a", max_handoffs=50)
    model = ScriptedModel([Rule(r"Handoff to (a|b) recorded", reply=text("ok")),
                           Rule(r"^You are a", reply=tool_call("transfer_to_b", TRANSFER)),
                           Rule(r"^You are b", reply=tool_call("transfer_to_a", TRANSFER))])
    result = await baton.run(pair, "x", store=MemoryStore(), model=model, limits=baton.Limits(max_depth=3))
    assert result.status == "failed" and result.error["type"] == "DepthExceeded"
    assert "depth 4, over the limit of 3: a > b > a > b" in result.error["message"]
    # a (depth 1) > b (depth 2) > a (depth 3); the next handoff would be at depth 4.
    # A transfer ends the agent's turn: one request per agent turn that hands off.
    assert calls(model) == {"a": 2, "b": 1}


async def test_handoff_resume_does_not_rerun_the_first_agent_and_replays() -> None:
    desk, model = _desk(Rule(r"^You are billing", fault=Fault.status(400), times=1))
    store = MemoryStore()
    first = await baton.run(desk, "charged twice", store=store, model=model)
    assert first.status == "failed" and calls(model) == {"triage": 1, "billing": 1}
    second = await baton.resume(first.run_id, desk, store=store, model=model)
    assert second.status == "succeeded" and second.output["chain"] == ["triage", "billing"]
    assert calls(model) == {"triage": 1, "billing": 2}
    replayed = await baton.replay(first.run_id, desk, store=store)
    assert replayed.output == second.output


async def test_handoff_recovers_a_transfer_when_only_the_agent_record_survived() -> None:
    # A crash between the agent's journal record and the turn's record: the agent call
    # replays without its conversation, so the turn runs again and still sees the transfer.
    desk, model = _desk(Rule(r"^You are billing", fault=Fault.status(400), times=1))
    store = MemoryStore()
    first = await baton.run(desk, "charged twice", store=store, model=model)
    assert first.status == "failed"
    turn_key = next(s.key for s in await steps(store, first.run_id, "step") if s.name == "turn:triage")
    del store._steps[first.run_id][turn_key]
    second = await baton.resume(first.run_id, desk, store=store, model=model)
    assert second.status == "succeeded" and second.output["chain"] == ["triage", "billing"]
    assert calls(model) == {"triage": 2, "billing": 2}


def test_handoff_configuration_errors() -> None:
    with pytest.raises(UsageError, match="start agent 'x'"):
        Handoffs({"a": agent("a"), "b": agent("b")}, start="x")
    with pytest.raises(UsageError, match="at least two agents"):
        Handoffs({"a": agent("a")}, start="a")
