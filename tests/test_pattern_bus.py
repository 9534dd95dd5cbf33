"""The reactive message bus: delivery, terminal messages, guards, exactly-once across crashes."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import pytest

import baton
from _events import EventLog
from baton.errors import UsageError
from baton.messages import ModelRequest
from baton.observe import events as ev
from baton.patterns.bus import Bus, BusMessage, handler_schema, message_id
from baton.stores.memory import MemoryStore
from baton.testing import Fault, Reply, Rule, ScriptedModel, json_reply
from test_pattern_support import agent, calls, prompt, requests_of, steps


def publish(*messages: tuple[str, str, Any], final: str | None = None) -> Reply:
    return json_reply({"messages": [{"type": t, "recipient": r, "payload": p} for t, r, p in messages],
                       "final": final})


def payload_of(req: ModelRequest) -> str:
    m = re.search(r"payload:\n(.*?)\n\nYou may publish", prompt(req), re.S)
    assert m, prompt(req)
    return m.group(1)


def msg_id_of(req: ModelRequest) -> str:
    m = re.search(r"message_id: (\w+)", prompt(req))
    assert m
    return m.group(1)


def newsroom_rules() -> list[Rule]:
    return [
        Rule(r"^You are planner", reply=publish(("question", "", "what about batteries?"))),
        Rule(r"^You are researcher", reply=publish(("finding", "writer", "R: cells are cheaper"))),
        Rule(r"^You are analyst", reply=publish(("finding", "", "A: demand is up"))),
        Rule(r"^You are writer", reply=lambda req: publish(("report", "", f"report on {payload_of(req)}"))),
    ]


def newsroom(**extra_agents: Any) -> Bus:
    agents: dict[str, Any] = {"planner": agent("planner"), "researcher": agent("researcher"),
                              "analyst": agent("analyst"), "writer": agent("writer"), **extra_agents}
    subs = {"planner": ["task"], "researcher": ["question"], "analyst": ["question"], "writer": ["finding"]}
    subs.update({n: ["finding"] for n in extra_agents})
    return Bus(agents, subs, start={"type": "task", "to": "planner"}, terminal=["report"])


async def test_bus_delivers_by_subscription_and_ends_on_a_terminal_message() -> None:
    model, sink, store = ScriptedModel(newsroom_rules()), EventLog(), MemoryStore()
    result = await baton.run(newsroom(), "battery market", store=store, model=model, sinks=[sink])
    assert result.status == "succeeded"
    # Both findings reach the writer in the same wave; the first in publication order wins.
    assert result.output == "report on R: cells are cheaper"
    assert calls(model) == {"planner": 1, "researcher": 1, "analyst": 1, "writer": 2}
    assert payload_of(requests_of(model, "planner")[0]) == "battery market"  # start payload = the run input
    assert "- finding: writer" in prompt(requests_of(model, "planner")[0])
    assert "(ends the run; its payload is the result)" in prompt(requests_of(model, "planner")[0])
    assert requests_of(model, "writer")[0].tools[-1].input_schema == handler_schema(
        ["task", "question", "finding", "report"], ["planner", "researcher", "analyst", "writer"])
    events = sink.of(ev.BUS_MESSAGE)
    published = [(e["type"], e["sender"], e["recipient"], e["depth"]) for e in events if e["status"] == "published"]
    assert published == [("task", "user", "planner", 0), ("question", "planner", "", 1),
                         ("finding", "researcher", "writer", 2), ("finding", "analyst", "", 2),
                         ("report", "writer", "", 3), ("report", "writer", "", 3)]
    by_id = {e["message_id"]: e for e in events if e["status"] == "published"}
    question = next(e for e in by_id.values() if e["type"] == "question")
    assert question["parent_message_id"] == message_id(None, "user", 0)
    assert question["message_id"] == message_id(question["parent_message_id"], "planner", 0)
    handled = Counter(e["handler"] for e in events if e["status"] == "handled")
    assert handled == {"planner": 1, "researcher": 1, "analyst": 1, "writer": 2}
    replayed = await baton.replay(result.run_id, newsroom(), store=store)
    assert replayed.output == result.output


async def test_bus_exactly_once_per_subscriber_across_crashes_and_resumes() -> None:
    collected: Counter[str] = Counter()
    crash = {"armed": True}

    async def collector(ctx: baton.RunContext, msg: BusMessage) -> list[dict[str, Any]]:
        collected[msg.message_id] += 1
        if crash["armed"]:
            crash["armed"] = False
            raise RuntimeError("collector crashed")
        return []

    # The analyst fails once (first run), then the Python collector crashes once (second run).
    model = ScriptedModel([Rule(r"^You are analyst", fault=Fault.status(400), times=1), *newsroom_rules()])
    store, bus = MemoryStore(), newsroom(collector=collector)
    first = await baton.run(bus, "battery market", store=store, model=model)
    assert first.status == "failed" and "analyst failed handling message" in first.error["message"]
    assert calls(model) == {"planner": 1, "researcher": 1, "analyst": 1}  # the researcher's wave-mate finished
    second = await baton.resume(first.run_id, bus, store=store, model=model)
    assert second.status == "failed" and "collector failed handling message" in second.error["message"]
    third = await baton.resume(first.run_id, bus, store=store, model=model)
    assert third.status == "succeeded" and third.output == "report on R: cells are cheaper"
    # Every (message, subscriber) pair was handled once; only failed attempts ran twice.
    per_pair = Counter((r.system, msg_id_of(r)) for r in model.requests)
    assert sorted(per_pair.values()) == [1, 1, 1, 1, 2]  # the analyst's failed request + its retry
    assert calls(model) == {"planner": 1, "researcher": 1, "analyst": 2, "writer": 2}
    assert list(collected.values()) == [2]  # one crash, one successful handling, of one message
    handlings = Counter(s.name for s in await steps(store, first.run_id, "step") if s.name.startswith("bus:"))
    assert handlings == {"bus:planner": 1, "bus:researcher": 1, "bus:analyst": 1, "bus:writer": 2,
                         "bus:collector": 1}


async def test_bus_depth_guard_stops_a_ping_pong_loop_naming_the_chain() -> None:
    bus = Bus({"a": agent("a"), "b": agent("b")}, {"a": ["ping"], "b": ["pong"]}, start={"type": "ping"})
    model = ScriptedModel([Rule(r"^You are a", reply=publish(("pong", "", "p"))),
                           Rule(r"^You are b", reply=publish(("ping", "", "p")))])
    sink = EventLog()
    result = await baton.run(bus, "go", store=MemoryStore(), model=model, limits=baton.Limits(max_depth=3),
                             sinks=[sink])
    assert result.status == "failed" and result.error["type"] == "DepthExceeded"
    assert "user > a > b > a > b" in result.error["message"] and "max_depth 3" in result.error["message"]
    assert calls(model) == {"a": 2, "b": 2}  # messages at depth 0..3 were handled, depth 4 was not
    dropped = [e for e in sink.of(ev.BUS_MESSAGE) if e["status"] == "dropped"]
    assert len(dropped) == 1 and dropped[0]["depth"] == 4


async def test_bus_quiet_end_returns_finals_and_direct_messages_skip_subscriptions() -> None:
    async def echo(ctx: baton.RunContext, msg: BusMessage) -> dict[str, Any]:
        return {"messages": [{"type": "note", "recipient": "judge", "payload": f"echo {msg.payload}"}],
                "final": None}

    bus = Bus({"echo": echo, "judge": agent("judge"), "bystander": agent("bystander")},
              {"echo": ["task"], "bystander": ["note"]}, start={"type": "task", "payload": "hello"})
    model = ScriptedModel([Rule(r"^You are judge", reply=lambda req: publish(final=f"judged {payload_of(req)}"))])
    result = await baton.run(bus, "ignored input", store=MemoryStore(), model=model)
    assert result.status == "succeeded" and result.output == ["judged echo hello"]
    assert calls(model) == {"judge": 1}  # the bystander subscribes to note but the note was addressed


async def test_bus_max_messages_guard() -> None:
    bus = Bus({"a": agent("a"), "b": agent("b")}, {"a": ["ping"], "b": ["ping"]}, start={"type": "ping"},
              max_messages=5)
    model = ScriptedModel([Rule(r"^You are", reply=publish(("ping", "", 1), ("ping", "", 2)))])
    result = await baton.run(bus, "go", store=MemoryStore(), model=model, limits=baton.Limits(max_depth=50))
    assert result.status == "failed" and "more than 5 messages" in result.error["message"]


async def test_bus_rejects_a_bad_python_handler_reply() -> None:
    def bad(ctx: baton.RunContext, msg: BusMessage) -> Any:
        async def run() -> Any:
            return [{"type": "unheard-of", "payload": 1}]
        return run()

    bus = Bus({"bad": bad, "b": agent("b")}, {"bad": ["task"], "b": ["x"]}, start={"type": "task"})
    result = await baton.run(bus, "go", store=MemoryStore(), model=ScriptedModel())
    assert result.status == "failed" and "unknown type 'unheard-of'" in result.error["message"]


def test_bus_configuration_errors() -> None:
    a = agent("a")
    with pytest.raises(UsageError, match="unknown agent 'ghost'"):
        Bus({"a": a}, {"ghost": ["x"]}, start={"type": "x"})
    with pytest.raises(UsageError, match="nobody subscribes to the start type"):
        Bus({"a": a}, {"a": ["x"]}, start={"type": "y"})
    with pytest.raises(UsageError, match="start.to names unknown agent"):
        Bus({"a": a}, {"a": ["x"]}, start={"type": "x", "to": "b"})
    with pytest.raises(UsageError, match="unknown key"):
        Bus({"a": a}, {"a": ["x"]}, start={"type": "x", "from": "b"})
