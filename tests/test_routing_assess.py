"""Routing by an assessment: ``model: auto`` asks a small model to rate the task and picks the tier.

Real sockets to the fake Messages API; the assessor's answer decides the model the work
goes to; the assessment is one journaled, cached, billed model call per agent call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import baton
from _events import EventLog
from baton.errors import WorkflowError
from baton.models.anthropic import AnthropicModel, usage_from_wire
from baton.models.pricing import cost_of
from baton.patterns.fan_out import FanOut
from baton.runtime.breaker import BreakerRegistry
from baton.runtime.cache import MemoryResultCache
from baton.runtime.engine import Engine
from baton.runtime.ratelimit import RateGovernor
from baton.runtime.retry import RetryPolicy
from baton.runtime.routing import ModelRouter, parse_score, route_key
from baton.stores.memory import MemoryStore
from baton.stores.sqlite import SQLiteStore
from baton.testing import FakeAnthropicServer, text, tool_call

pytestmark = pytest.mark.timeout(60)

HAIKU, SONNET, OPUS = "claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-6"
ASSESS = r"You rate how complex a task is"
ASSESSING = ModelRouter(assess=True)

auto = baton.Agent("solver", system="You solve the task.", model="auto", max_tokens=64)


def engine(model: AnthropicModel, **options: Any) -> Engine:
    options.setdefault("store", MemoryStore())
    options.setdefault("router", ASSESSING)
    return Engine(model=model, governor=RateGovernor(), breakers=BreakerRegistry(),
                  retry=RetryPolicy(max_attempts=2, initial_delay_s=0.01, max_delay_s=0.02), **options)


def rate(server: FakeAnthropicServer) -> None:
    """The assessor rates by a word in the task; every other request gets an answer."""
    server.add_rule(rf"(?s){ASSESS}.*easy", reply=text("0.1"))
    server.add_rule(rf"(?s){ASSESS}.*middling", reply=text("0.5"))
    server.add_rule(rf"(?s){ASSESS}.*gnarly", reply=text("Complexity: 0.9"))
    server.add_rule(ASSESS, reply=text("I cannot say"))
    server.add_rule(reply=text("answer"))


def work_models(server: FakeAnthropicServer) -> dict[str, str]:
    """The model each task's work (not its assessment) went to, by the task's first word."""
    return {r.text.split("\n")[-1].split()[0]: r.body["model"] for r in server.requests
            if r.body is not None and ASSESS not in r.text}


def assessments(server: FakeAnthropicServer) -> list[Any]:
    return server.requests_matching(ASSESS)


async def test_the_assessment_picks_the_tier(server: FakeAnthropicServer, model: AnthropicModel) -> None:
    rate(server)
    sink = EventLog()
    result = await engine(model, sinks=[sink]).run(FanOut(each=auto), "easy task\nmiddling task\ngnarly task")
    assert result.status == "succeeded", result.error
    assert work_models(server) == {"easy": HAIKU, "middling": SONNET, "gnarly": OPUS}
    assert all(r.body["model"] == HAIKU for r in assessments(server)) and len(assessments(server)) == 3
    routed = {e.data["model"]: e.data for e in sink.events if e.kind == "model.routed"}
    assert routed[OPUS]["score"] == 0.9 and routed[OPUS]["tier"] == "strong"
    # The assessments are billed like any call: the run's cost is every served request's.
    served = sum(cost_of(r.body["model"], usage_from_wire(r.usage)) or 0.0 for r in server.requests)
    assert result.cost_usd == pytest.approx(served) and result.model_calls == 6


async def test_without_assess_the_heuristic_routes_with_no_extra_call(server: FakeAnthropicServer,
                                                                      model: AnthropicModel) -> None:
    rate(server)
    result = await engine(model, router=ModelRouter()).run(FanOut(each=auto), "gnarly task")
    assert result.status == "succeeded"
    assert not assessments(server) and work_models(server) == {"gnarly": HAIKU}  # short text: the cheap tier
    typed = auto.with_(task_type="synthesis")  # a task type decides without asking, even with assess on
    await engine(model).run(FanOut(each=typed), "easy task")
    assert not assessments(server) and work_models(server)["easy"] == OPUS


async def test_an_unreadable_rating_falls_back_to_the_heuristic(server: FakeAnthropicServer,
                                                                model: AnthropicModel) -> None:
    rate(server)
    sink = EventLog()
    result = await engine(model, sinks=[sink]).run(FanOut(each=auto), "unclear task")
    assert result.status == "succeeded"
    (routed,) = [e.data for e in sink.events if e.kind == "model.routed"]
    assert routed["score"] is None and routed["tier"] == "heuristic" and work_models(server) == {"unclear": HAIKU}


async def test_one_assessment_per_agent_call_across_its_turns(server: FakeAnthropicServer,
                                                              model: AnthropicModel) -> None:
    server.add_rule(rf"{ASSESS}", reply=text("0.95"))
    server.add_rule(r"Result: 4", reply=text("four"))
    server.add_rule(reply=tool_call("add", {"a": 2, "b": 2}))

    @baton.tool
    def add(a: int, b: int) -> str:
        """Add two numbers."""
        return f"Result: {a + b}"

    calc = auto.with_(tools=[add])

    async def workflow(ctx: baton.RunContext, task: str) -> str:
        return (await ctx.call(calc, task)).text

    result = await engine(model).run(workflow, "add two and two")
    assert result.output == "four"
    assert len(assessments(server)) == 1
    assert [r.body["model"] for r in server.requests if ASSESS not in r.text] == [OPUS, OPUS]


async def test_the_assessment_is_journaled_and_a_resume_reuses_it(server: FakeAnthropicServer,
                                                                  model: AnthropicModel, tmp_path: Path) -> None:
    rate(server)
    url = f"sqlite:///{tmp_path}/runs.db"
    wf = FanOut(each=auto)
    # One model call allowed: the assessment runs, the work is stopped by the budget.
    stopped = await engine(model, store=SQLiteStore(url)).run(wf, "gnarly task", run_id="routed1",
                                                              limits=baton.Limits(max_model_calls=1))
    assert stopped.status == "budget_exceeded" and len(assessments(server)) == 1
    store = SQLiteStore(url)
    await store.open()
    steps = {s.key: s for s in await store.load_steps("routed1")}
    await store.close()
    rkey = route_key("0/m0")
    assert steps[rkey].status == "completed" and steps[rkey].meta["model"] == HAIKU
    done = await engine(model, store=SQLiteStore(url)).resume("routed1", wf, max_model_calls=10)
    assert done.status == "succeeded"
    assert len(assessments(server)) == 1 and work_models(server) == {"gnarly": OPUS}  # not asked again


async def test_the_assessment_is_cached_like_any_call(server: FakeAnthropicServer, model: AnthropicModel) -> None:
    rate(server)
    cache = MemoryResultCache()
    for _ in range(2):
        result = await engine(model, cache=cache).run(FanOut(each=auto), "middling task")
        assert result.output == ["answer"]
    assert len(assessments(server)) == 1 and len(server.requests) == 2  # the second run: all from the cache


def test_parse_score() -> None:
    assert parse_score("0.3") == 0.3
    assert parse_score("Complexity: 0.85.") == 0.85
    assert parse_score("7") == 0.7  # a 0-10 scale
    assert parse_score("1") == 1.0
    assert parse_score("none") is None
    assert parse_score("15") is None


def test_routing_in_yaml(tmp_path: Path) -> None:
    from baton.spec import load_workflow_file

    wf = tmp_path / "wf.yaml"
    body = """version: 1
name: routed
routing: {assess: true, assessor: claude-haiku-4-5, assess_cheap_below: 0.3, strong: claude-opus-4-7}
agents: {solver: {model: auto, system: s}}
workflow: {pattern: agent, agent: solver}
"""
    wf.write_text(body)
    router = load_workflow_file(str(wf)).router
    assert router.assess and router.assess_cheap_below == 0.3 and router.strong == "claude-opus-4-7"
    wf.write_text(body.replace("assess_cheap_below: 0.3", "assess_cheap_below: 0.9, assess_strong_above: 0.5"))
    with pytest.raises(WorkflowError, match="cheap_below"):
        load_workflow_file(str(wf))
    wf.write_text(body.replace("assess: true", "assess: 2"))
    with pytest.raises(WorkflowError, match="assess"):
        load_workflow_file(str(wf))
