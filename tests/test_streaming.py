"""Streaming: text deltas reach the caller as the fake Messages API sends them over SSE.

Runs go over HTTP to the fake server (which streams text in 32-character pieces) and keep
their journal in SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import baton
from baton.models.anthropic import AnthropicModel
from baton.observe import events as ev
from baton.observe.events import Event, EventStream
from baton.runtime.engine import RunResult
from baton.runtime.ratelimit import RateGovernor
from baton.runtime.retry import RetryPolicy
from baton.stores.sqlite import SQLiteStore
from baton.testing import FakeAnthropicServer, Fault, Rule, ScriptedModel, text, tool_call

pytestmark = pytest.mark.timeout(60)
HAIKU = "claude-haiku-4-5"
LONG_A = "Alpha writes a long answer. " * 12
LONG_B = "Beta summarises it at length, piece by piece. " * 8

writer = baton.Agent("writer", model=HAIKU, system="You are WRITER.")
editor = baton.Agent("editor", model=HAIKU, system="You are EDITOR.")


async def two_step(ctx: baton.RunContext, topic: str) -> str:
    draft = await ctx.call(writer, topic)
    final = await ctx.call(editor, draft.text)
    return final.text


@pytest.fixture
def server(server: FakeAnthropicServer) -> FakeAnthropicServer:
    """conftest's fake Messages API, answering the two agents with long texts."""
    server.add_rule("WRITER", reply=text(LONG_A))
    server.add_rule("EDITOR", reply=text(LONG_B))
    return server


def options(model: Any, tmp_path: Path) -> dict[str, Any]:
    return {"store": f"sqlite:///{tmp_path}/baton.db", "model": model, "governor": RateGovernor(),
            "retry": RetryPolicy(max_attempts=1)}


async def collect(items: AsyncIterator[Event | RunResult]) -> tuple[list[Event], RunResult]:
    events: list[Event] = []
    result: RunResult | None = None
    async for item in items:
        if isinstance(item, RunResult):
            result = item
        else:
            assert result is None, "nothing may follow the result"
            events.append(item)
    assert result is not None
    return events, result


def deltas_of(events: list[Event], agent: str) -> list[str]:
    return [e.data["text"] for e in events if e.kind == ev.TEXT_DELTA and e.data["agent"] == agent]


async def test_deltas_arrive_in_order_and_make_up_each_answer(model: AnthropicModel, server: FakeAnthropicServer,
                                                              tmp_path: Path) -> None:
    events, result = await collect(baton.stream(two_step, "batteries", **options(model, tmp_path)))
    assert result.status == "succeeded" and result.output == LONG_B
    a, b = deltas_of(events, "writer"), deltas_of(events, "editor")
    assert len(a) > 5 and len(b) > 5  # streamed in pieces, not one block at the end
    assert "".join(a) == LONG_A and "".join(b) == LONG_B
    kinds = [e.kind for e in events]
    # Each agent's deltas come between its request and its response, and the writer's all come first.
    first_b = next(i for i, e in enumerate(events) if e.kind == ev.TEXT_DELTA and e.data["agent"] == "editor")
    last_a = max(i for i, e in enumerate(events) if e.kind == ev.TEXT_DELTA and e.data["agent"] == "writer")
    responses = [i for i, k in enumerate(kinds) if k == ev.MODEL_RESPONSE]
    assert last_a < responses[0] < first_b < responses[1]
    assert kinds[0] == ev.RUN_START and kinds[-1] == ev.RUN_END
    assert all(r.stream for r in server.requests)  # the calls went over SSE
    # The journal keeps whole responses: one model step per agent call, no delta records.
    store = SQLiteStore(f"sqlite:///{tmp_path}/baton.db")
    await store.open()
    try:
        steps = await store.load_steps(result.run_id)
    finally:
        await store.close()
    model_steps = [s for s in steps if s.kind == "model"]
    assert len(model_steps) == 2
    assert model_steps[1].result["content"][0]["text"] == LONG_B


async def test_tool_input_streams_as_json_pieces(model: AnthropicModel, server: FakeAnthropicServer,
                                                 tmp_path: Path) -> None:
    server.rules.clear()
    big = {"query": "q" * 100, "limit": 7}
    server.add_rule("TOOLER", reply=tool_call("lookup", big), times=1)
    server.add_rule("TOOLER", reply=text("done"))

    @baton.tool
    def lookup(query: str, limit: int) -> str:
        """Look something up."""
        return "found"

    tooler = baton.Agent("tooler", model=HAIKU, system="You are TOOLER.", tools=[lookup])

    async def wf(ctx: baton.RunContext, q: str) -> str:
        return (await ctx.call(tooler, q)).text

    events, result = await collect(baton.stream(wf, "x", **options(model, tmp_path)))
    assert result.status == "succeeded"
    pieces = [e.data["text"] for e in events if e.kind == ev.TEXT_DELTA and e.data["type"] == "tool_input"]
    assert len(pieces) > 1
    import json

    assert json.loads("".join(pieces)) == big


async def test_leaving_the_stream_early_stops_the_run(model: AnthropicModel, server: FakeAnthropicServer,
                                                      tmp_path: Path) -> None:
    opts = options(model, tmp_path)
    run_id = "stream-cancelled"
    seen: list[str] = []
    async with contextlib.aclosing(baton.stream(two_step, "t", run_id=run_id, **opts)) as items:
        async for item in items:
            if isinstance(item, Event) and item.kind == ev.TEXT_DELTA:
                seen.append(item.data["text"])
                break
    assert seen
    store = SQLiteStore(f"sqlite:///{tmp_path}/baton.db")
    await store.open()
    try:
        record = await store.get_run(run_id)
    finally:
        await store.close()
    assert record.status == "interrupted" and record.owner is None  # not left running, resumable
    await asyncio.sleep(0.2)
    assert not server.requests_matching("EDITOR")  # the run went no further
    # It resumes to the same end.
    events, result = await collect(baton.stream_resume(run_id, two_step, **opts))
    assert result.status == "succeeded" and result.output == LONG_B


async def test_a_resumed_run_streams_only_the_steps_it_executes(model: AnthropicModel, server: FakeAnthropicServer,
                                                                tmp_path: Path) -> None:
    server.rules.clear()
    server.add_rule("WRITER", reply=text(LONG_A))
    server.add_rule("EDITOR", fault=Fault.status(400), times=1)  # the first run fails at the editor
    server.add_rule("EDITOR", reply=text(LONG_B))
    opts = options(model, tmp_path)
    events, first = await collect(baton.stream(two_step, "t", **opts))
    assert first.status == "failed"
    assert "".join(deltas_of(events, "writer")) == LONG_A
    events, result = await collect(baton.stream_resume(first.run_id, two_step, **opts))
    assert result.status == "succeeded" and result.output == LONG_B
    assert deltas_of(events, "writer") == []  # completed: replayed from the journal, not streamed again
    assert "".join(deltas_of(events, "editor")) == LONG_B
    assert any(e.kind == ev.STEP_REPLAYED for e in events)
    assert len(server.requests_matching("WRITER")) == 1


async def test_a_model_that_cannot_stream_gives_its_answer_as_one_delta(tmp_path: Path) -> None:
    scripted = ScriptedModel([Rule("WRITER", reply=text("first answer")), Rule("EDITOR", reply=text("second answer"))])
    events, result = await collect(baton.stream(two_step, "t", store=f"sqlite:///{tmp_path}/b.db", model=scripted))
    assert result.ok
    assert deltas_of(events, "writer") == ["first answer"]
    assert deltas_of(events, "editor") == ["second answer"]


async def test_no_listener_no_streaming(model: AnthropicModel, server: FakeAnthropicServer, tmp_path: Path) -> None:
    """Plain runs and sinks that did not ask for deltas get none, and the calls are not streamed."""
    got: list[Event] = []

    class Plain:
        def handle(self, event: Event) -> None:
            got.append(event)

        def close(self) -> None:
            return None

    result = await baton.run(two_step, "t", sinks=[Plain()], **options(model, tmp_path))
    assert result.ok
    assert got and not [e for e in got if e.kind == ev.TEXT_DELTA]
    assert not any(r.stream for r in server.requests)
    stream = EventStream([Plain()])
    assert not stream.wants_deltas
    stream.listen(got.append, deltas=True)
    assert stream.wants_deltas


async def test_a_plain_break_also_stops_the_run(model: AnthropicModel, server: FakeAnthropicServer,
                                                tmp_path: Path) -> None:
    """Without aclosing: the dropped iterator is closed by the event loop, which stops the run."""
    opts = options(model, tmp_path)
    async for item in baton.stream(two_step, "t", run_id="plain-break", **opts):
        if isinstance(item, Event) and item.kind == ev.TEXT_DELTA:
            break
    store = SQLiteStore(f"sqlite:///{tmp_path}/baton.db")
    await store.open()
    try:
        for _ in range(100):  # bounded: the loop closes the iterator within a few iterations
            record = await store.get_run("plain-break")
            if record.status != "running":
                break
            await asyncio.sleep(0.05)
    finally:
        await store.close()
    assert record.status == "interrupted" and record.owner is None
    assert not server.requests_matching("EDITOR")


def test_the_services_live_buffer_keeps_run_events_however_many_deltas_come() -> None:
    from baton.server.live import LiveEvents

    live = LiveEvents(per_run=5)
    assert live.wants_deltas

    def event(kind: str, **data: Any) -> Event:
        return Event(kind, "r1", "t", "s", None, data)

    live.handle(event(ev.RUN_START))
    live.handle(event(ev.MODEL_REQUEST, key="0/m0"))
    for i in range(20):
        live.handle(event(ev.TEXT_DELTA, key="0/m0", text=f"p{i}"))
    live.handle(event(ev.MODEL_RESPONSE, key="0/m0"))
    live.handle(event(ev.RUN_END, status="succeeded"))
    found, buf = live.since("r1", 0)
    kinds = [k for _, k, _ in found]
    assert kinds == [ev.RUN_START, ev.MODEL_REQUEST] + [ev.TEXT_DELTA] * 5 + [ev.MODEL_RESPONSE, ev.RUN_END]
    assert [d["text"] for _, k, d in found if k == ev.TEXT_DELTA] == ["p15", "p16", "p17", "p18", "p19"]
    assert [i for i, _, _ in found] == sorted(i for i, _, _ in found) and buf.ended
    assert [k for _, k, _ in live.since("r1", 23)[0]] == [ev.RUN_END]  # ids: 1, 2, deltas 3-22, 23, 24
