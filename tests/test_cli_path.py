"""What keeps ``baton run`` as cheap per call as the library: the CLI's sinks say which event kinds
they take (the runtime builds nothing else for them) and write once per loop iteration."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import baton
from baton.models.anthropic import AnthropicModel
from baton.observe import events as ev
from baton.observe.events import Event, EventStream
from baton.observe.progress import ProgressSink, RunTally
from baton.runtime.engine import Engine
from baton.stores.memory import MemoryStore
from baton.testing import FakeAnthropicServer

agent = baton.Agent("worker", system="Answer in one word.", model="claude-haiku-4-5", max_tokens=16)


class CountingStream(io.StringIO):
    """A text stream that counts its writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


class KindRecorder:
    """A sink that takes only ``event_kinds`` and records what it gets."""

    def __init__(self, kinds: set[str] | None) -> None:
        if kinds is not None:
            self.event_kinds = frozenset(kinds)
        self.seen: list[str] = []

    def handle(self, event: Event) -> None:
        self.seen.append(event.kind)

    def close(self) -> None:
        pass


def test_the_cli_sinks_take_no_model_requests_and_a_listener_takes_everything() -> None:
    stream = EventStream([ProgressSink(io.StringIO(), tty=False), RunTally()])
    assert not stream.wants(ev.MODEL_REQUEST) and not stream.wants(ev.STEP_START)
    assert stream.wants(ev.AGENT_END) and stream.wants(ev.MODEL_RESPONSE) and stream.wants(ev.RETRY)
    stream.listen(lambda event: None)
    assert stream.wants(ev.MODEL_REQUEST)
    assert EventStream([KindRecorder(None)]).wants(ev.MODEL_REQUEST)  # a sink that does not say takes all
    assert not EventStream().wants(ev.AGENT_END)


async def test_a_run_emits_to_kind_filtered_sinks_only_what_they_take(server: FakeAnthropicServer,
                                                                      model: AnthropicModel) -> None:
    narrow, wide = KindRecorder({ev.MODEL_RESPONSE}), KindRecorder(None)

    async def workflow(ctx: baton.RunContext, text: str) -> list[str]:
        answers = await ctx.gather(*(ctx.call(agent, f"{text} {i}") for i in range(3)))
        return [a.text for a in answers]

    result = await Engine(store=MemoryStore(), model=model, sinks=[narrow]).run(workflow, "q")
    assert result.ok and narrow.seen == [ev.MODEL_RESPONSE] * 3
    result = await Engine(store=MemoryStore(), model=model, sinks=[narrow, wide]).run(workflow, "q")
    assert result.ok and wide.seen.count(ev.MODEL_REQUEST) == 3  # built again once a sink takes it
    assert narrow.seen == [ev.MODEL_RESPONSE] * 6


async def test_progress_writes_a_loop_iterations_lines_at_once() -> None:
    out = CountingStream()
    progress = ProgressSink(out, tty=False, summary=False)
    stream = EventStream([progress])
    for i in range(200):
        span = f"A{i}"
        stream.emit(Event(ev.AGENT_START, "run", "t", span, "R", {"agent": "worker"}))
        stream.emit(Event(ev.AGENT_END, "run", "t", span, "R", {"agent": "worker", "status": "ok",
                                                                "duration_s": 0.5}))
    await asyncio.sleep(0)  # the stream works its queue through at the end of the iteration
    lines = out.getvalue().splitlines()
    assert len(lines) == 200 and all(line.endswith("agent worker done in 0.50s") for line in lines)
    assert out.writes <= 400 // 64 + 1  # one write per worked-through batch, not one per line
    stream.close()
    assert progress.agents_done == 200


async def test_progress_redacts_names_where_it_shows_them() -> None:
    secret = "sk-ant-api03-" + "A" * 40
    out = io.StringIO()
    stream = EventStream([ProgressSink(out, tty=False, summary=False), tally := RunTally()])
    name: Any = f"agent-{secret}"
    stream.emit(Event(ev.AGENT_START, "run", "t", "A1", "R", {"agent": name}))
    stream.emit(Event(ev.AGENT_END, "run", "t", "A1", "R", {"agent": name, "status": "error",
                                                            "duration_s": 0.1, "error_type": "ToolError"}))
    await asyncio.sleep(0)
    stream.close()
    assert "failed after 0.10s: ToolError" in out.getvalue()
    assert secret not in out.getvalue() and all(secret not in n for n in tally.agents)


def test_tune_gc_raises_the_thresholds_and_never_lowers_one() -> None:
    import gc

    from baton.runtime.gcpolicy import THRESHOLDS, tune_gc

    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        assert tune_gc() == (700, 10, 10)
        assert gc.get_threshold() == THRESHOLDS
        gc.set_threshold(20_000, 5, 200)
        tune_gc()
        assert gc.get_threshold() == (20_000, THRESHOLDS[1], 200)
    finally:
        gc.set_threshold(*saved)
