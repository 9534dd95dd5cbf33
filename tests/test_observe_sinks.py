"""The sinks read one known event sequence: JSONL lines, OTel spans, Prometheus samples, progress text."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry, generate_latest

from baton.errors import UsageError
from baton.observe import (
    EventStream,
    JSONLSink,
    MetricsSink,
    OTelSink,
    ProgressSink,
    configure_tracing,
    read_events,
    serve_metrics,
)
from baton.observe.events import Event

MODEL = "claude-sonnet-4-6"
RUN_ID = "run-7f3a"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
T0 = 1_700_000_000.0


class Script:
    """Builds a run's events with fixed ids and timestamps 0.1 s apart."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.t = T0

    def add(self, kind: str, span: str, parent: str | None, **data: Any) -> Event:
        self.t += 0.1
        event = Event(kind, RUN_ID, TRACE_ID, span, parent, data, ts=round(self.t, 3))
        self.events.append(event)
        return event


def usage(i: int, o: int, r: int = 0, w: int = 0) -> dict[str, int]:
    return {"input_tokens": i, "output_tokens": o, "cache_read_input_tokens": r, "cache_creation_input_tokens": w}


def scripted_run() -> list[Event]:
    """run -> researcher (chat error, retry, chat, tool, chat; nested fact_checker fails) -> step."""
    s = Script()
    s.add("run.start", "R", None, workflow="market-report", run_id=RUN_ID)
    s.add("agent.start", "A1", "R", agent="researcher", key="0", depth=1, input="Find facts about widgets")
    s.add("rate_limit.wait", "p1", "A1", model=MODEL, wait_s=0.5, priority=0)
    s.add("model.request", "M1", "A1", agent="researcher", model=MODEL, key="0/0", prompt_version="v1",
          attempt=1, max_tokens=1024, messages=[{"role": "user", "content": "Find facts about widgets"}])
    s.add("model.error", "M1", "A1", agent="researcher", model=MODEL, key="0/0", error_type="rate_limit_error",
          status=429, retryable=True, latency_s=0.05)
    s.add("retry", "p2", "A1", agent="researcher", target=MODEL, attempt=1, delay_s=1.0,
          error_type="rate_limit_error")
    s.add("breaker.change", "p3", "A1", target=MODEL, old="closed", new="half_open")
    s.add("model.request", "M2", "A1", agent="researcher", model=MODEL, key="0/0", prompt_version="v1",
          attempt=2, max_tokens=1024, messages=[{"role": "user", "content": "Find facts about widgets"}])
    s.add("model.response", "M2", "A1", agent="researcher", model=MODEL, key="0/0", prompt_version="v1",
          usage=usage(100, 20, 50, 10), cost_usd=0.001, latency_s=0.08, stop_reason="tool_use",
          request_id="req_011", output=[{"type": "tool_use", "name": "web_search", "input": {"q": "widgets"}}])
    s.add("tool.call", "T1", "A1", agent="researcher", tool="web_search", key="0/1.0", input={"q": "widgets"})
    s.add("tool.result", "T1", "A1", agent="researcher", tool="web_search", key="0/1.0", is_error=False,
          duration_s=0.09, output="Widgets are small.")
    s.add("tool.denied", "p4", "A1", agent="researcher", tool="delete_all")
    s.add("model.request", "M3", "A1", agent="researcher", model=MODEL, key="0/2", prompt_version="v1",
          attempt=1, max_tokens=1024, messages=[{"role": "user", "content": "..."}])
    s.add("model.response", "M3", "A1", agent="researcher", model=MODEL, key="0/2", prompt_version="v1",
          usage=usage(200, 50), cost_usd=0.002, latency_s=0.09, stop_reason="end_turn", request_id="req_012",
          output=[{"type": "text", "text": "Widgets are small."}])
    s.add("cache.hit", "p5", "A1", agent="researcher", model=MODEL, key="0/3")
    s.add("agent.start", "A2", "A1", agent="fact_checker", key="0/4", depth=2, input="Check: widgets are small")
    s.add("agent.end", "A2", "A1", agent="fact_checker", key="0/4", status="error", duration_s=0.1,
          error_type="ToolError")
    s.add("agent.end", "A1", "R", agent="researcher", key="0", status="ok", duration_s=1.5,
          usage=usage(300, 70, 50, 10), cost_usd=0.003, output="Widgets are small.")
    s.add("step.start", "S1", "R", name="publish", key="1")
    s.add("step.end", "S1", "R", name="publish", key="1", status="ok", duration_s=0.1)
    s.add("run.end", "R", None, status="succeeded", duration_s=2.0, usage=usage(300, 70, 50, 10),
          cost_usd=0.003, model_calls=2)
    return s.events


def emit_all(sinks: list[Any], events: list[Event]) -> None:
    stream = EventStream(sinks)
    for event in events:
        stream.emit(event)
    stream.close()


# --- JSONL -------------------------------------------------------------------------------------


def test_jsonl_has_every_event_with_its_ids(tmp_path: Path) -> None:
    events = scripted_run()
    path = tmp_path / "logs" / "run.jsonl"
    sink = JSONLSink(path)
    emit_all([sink], events)
    lines = path.read_bytes().splitlines()
    assert len(lines) == len(events) == sink.lines_written
    for event, line in zip(events, lines, strict=True):
        record = orjson.loads(line)
        assert (record["kind"], record["run_id"], record["trace_id"], record["span_id"], record["parent_id"],
                record["ts"]) == (event.kind, RUN_ID, TRACE_ID, event.span_id, event.parent_id, event.ts)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert list(read_events(path)) == [orjson.loads(line) for line in lines]


def test_jsonl_metadata_keeps_sizes_not_content(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    emit_all([JSONLSink(path)], scripted_run())
    records = list(read_events(path))
    request = next(r for r in records if r["kind"] == "model.request")
    assert "messages" not in request
    assert request["messages_count"] == 1
    assert request["messages_chars"] == len(orjson.dumps([{"role": "user", "content": "Find facts about widgets"}]))
    start = next(r for r in records if r["kind"] == "agent.start")
    assert "input" not in start and start["input_chars"] == len("Find facts about widgets")
    response = next(r for r in records if r["kind"] == "model.response")
    assert response["usage"] == usage(100, 20, 50, 10) and response["request_id"] == "req_011"
    assert b"widgets" not in path.read_bytes().lower()


def test_jsonl_full_capture_keeps_content(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    emit_all([JSONLSink(path, capture="full")], scripted_run())
    call = next(r for r in read_events(path) if r["kind"] == "tool.call")
    assert call["input"] == {"q": "widgets"}


def test_jsonl_lines_are_on_disk_before_close_and_appends(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    events = scripted_run()
    sink = JSONLSink(path)
    for event in events[:3]:
        sink.handle(event)
    # Another reader sees them at once: a crash here would still leave a useful log.
    assert [r["kind"] for r in read_events(path)] == ["run.start", "agent.start", "rate_limit.wait"]
    sink.close()
    second = JSONLSink(path)
    second.handle(events[3])
    second.close()
    second.handle(events[4])  # after close: ignored, not an error
    assert [r["span_id"] for r in read_events(path)] == ["R", "A1", "p1", "M1"]


def test_jsonl_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "killed.jsonl"
    child = (
        "import os, signal\n"
        "from baton.observe import JSONLSink\n"
        "from baton.observe.events import Event\n"
        f"sink = JSONLSink({str(path)!r})\n"
        "for i in range(3):\n"
        "    sink.handle(Event('agent.start', 'run-k', 't', f'A{i}', 'R', {'agent': 'a'}))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert [r["span_id"] for r in read_events(path)] == ["A0", "A1", "A2"]


def test_jsonl_in_a_loop_writes_each_iteration_in_one_write(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    events = scripted_run()

    async def emit() -> list[int]:
        sink = JSONLSink(path)
        seen = []
        for event in events[1:4]:  # one loop iteration: queued, nothing written yet
            sink.handle(event)
        seen.append(len(list(read_events(path))))
        await asyncio.sleep(0)  # the iteration ends: all three go out together
        seen.append(len(list(read_events(path))))
        sink.handle(events[4])
        sink.close()  # close works the queue through at once
        seen.append(len(list(read_events(path))))
        return seen

    assert asyncio.run(emit()) == [0, 3, 4]


def test_jsonl_in_a_loop_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "killed.jsonl"
    child = (
        "import asyncio, os, signal\n"
        "from baton.observe import JSONLSink\n"
        "from baton.observe.events import Event\n"
        "async def main():\n"
        f"    sink = JSONLSink({str(path)!r})\n"
        "    for i in range(3):\n"
        "        sink.handle(Event('agent.start', 'run-k', 't', f'A{i}', 'R', {'agent': 'a'}))\n"
        "        await asyncio.sleep(0)\n"
        "    sink.handle(Event('agent.start', 'run-k', 't', 'lost', 'R', {'agent': 'a'}))\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "asyncio.run(main())\n"
    )
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    # Everything emitted before the last await is on disk; the event of the killed iteration is not.
    assert [r["span_id"] for r in read_events(path)] == ["A0", "A1", "A2"]


def test_events_queued_on_a_loop_that_stopped_are_not_lost(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    events = scripted_run()
    sink = JSONLSink(path)
    loop = asyncio.new_event_loop()

    def emit_then_stop() -> None:
        sink.handle(events[0])
        sink.handle(events[1])
        loop.stop()  # the loop ends before the iteration's queue is worked through

    loop.call_soon(emit_then_stop)
    loop.run_forever()
    loop.close()
    assert path.read_bytes() == b""
    sink.handle(events[2])  # no loop now: the stranded events go first, in order
    assert [r["span_id"] for r in read_events(path)] == ["R", "A1", "p1"]
    sink.close()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full to simulate a full disk")
def test_jsonl_full_disk_warns_once_and_the_run_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    sink = JSONLSink("/dev/full")
    events = scripted_run()
    with caplog.at_level("WARNING", logger="baton.observe"):
        for event in events:
            sink.handle(event)
    sink.close()
    assert sink.lines_written == 0
    assert [r.getMessage() for r in caplog.records if "stopped" in r.getMessage()] == [
        "JSONL event log /dev/full stopped: [Errno 28] No space left on device"]


def test_jsonl_batched_writes_flush_on_run_end(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    events = scripted_run()
    sink = JSONLSink(path, flush_interval_s=3600)
    for event in events[:4]:
        sink.handle(event)
    assert path.read_bytes() == b""
    sink.handle(events[-1])  # run.end is written at once with everything before it
    assert len(list(read_events(path))) == 5
    sink.close()


def test_read_events_skips_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    path.write_bytes(b'{"kind":"run.start"}\n{"kind":"agent.st')
    assert list(read_events(path)) == [{"kind": "run.start"}]
    path.write_bytes(b'{"kind":"run.start"}\nnot json\n{"kind":"run.end"}\n')
    with pytest.raises(UsageError, match="run.jsonl:2"):
        list(read_events(path))


def test_jsonl_bad_path_is_a_usage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UsageError, match="cannot open JSONL log"):
        JSONLSink(blocker / "run.jsonl")
    with pytest.raises(UsageError, match="capture must be one of"):
        JSONLSink(tmp_path / "x.jsonl", capture="everything")  # type: ignore[arg-type]


# --- OpenTelemetry -----------------------------------------------------------------------------


def traced(capture: str = "metadata") -> tuple[OTelSink, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return OTelSink(provider, capture=capture), exporter  # type: ignore[arg-type]


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def test_otel_builds_the_span_tree_with_genai_attributes() -> None:
    sink, exporter = traced()
    emit_all([sink], scripted_run())
    spans = exporter.get_finished_spans()
    assert sorted(s.name for s in spans) == sorted([
        "invoke_workflow market-report", "invoke_agent researcher", "invoke_agent fact_checker",
        f"chat {MODEL}", f"chat {MODEL}", f"chat {MODEL}", "execute_tool web_search", "step publish"])
    (run,) = by_name(spans, "invoke_workflow market-report")
    (agent,) = by_name(spans, "invoke_agent researcher")
    (nested,) = by_name(spans, "invoke_agent fact_checker")
    (tool,) = by_name(spans, "execute_tool web_search")
    (step,) = by_name(spans, "step publish")
    failed, first, second = sorted(by_name(spans, f"chat {MODEL}"), key=lambda s: s.start_time or 0)
    assert {s.context.trace_id for s in spans} == {run.context.trace_id}

    assert parent_of(run) is None
    assert parent_of(agent) == run.context.span_id
    assert parent_of(step) == run.context.span_id
    assert parent_of(nested) == agent.context.span_id
    for child in (failed, first, second, tool):
        assert parent_of(child) == agent.context.span_id

    assert run.attributes is not None and agent.attributes is not None
    assert run.attributes["gen_ai.operation.name"] == "invoke_workflow"
    assert run.attributes["gen_ai.workflow.name"] == "market-report"
    assert run.attributes["baton.run_id"] == RUN_ID
    assert run.attributes["baton.status"] == "succeeded"
    assert run.status.status_code == StatusCode.UNSET
    assert agent.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert agent.attributes["gen_ai.agent.name"] == "researcher"
    assert agent.attributes["baton.step_key"] == "0"
    assert agent.attributes["baton.cost_usd"] == 0.003
    assert agent.attributes["gen_ai.usage.input_tokens"] == 360  # uncached + cache read + cache write
    assert agent.attributes["baton.input_chars"] == len("Find facts about widgets")
    assert "baton.agent.input" not in agent.attributes

    assert first.kind == SpanKind.CLIENT
    assert dict(first.attributes or {}) == {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic", "gen_ai.system": "anthropic",
        "gen_ai.request.model": MODEL, "gen_ai.agent.name": "researcher", "baton.step_key": "0/0",
        "baton.prompt_version": "v1", "gen_ai.request.max_tokens": 1024, "baton.attempt": 2,
        "baton.run_id": RUN_ID, "baton.messages_count": 1,
        "baton.messages_chars": len(orjson.dumps([{"role": "user", "content": "Find facts about widgets"}])),
        "gen_ai.usage.input_tokens": 160, "gen_ai.usage.output_tokens": 20,
        "gen_ai.usage.cache_read.input_tokens": 50, "gen_ai.usage.cache_creation.input_tokens": 10,
        "gen_ai.response.model": MODEL, "gen_ai.response.finish_reasons": ("tool_use",),
        "gen_ai.response.id": "req_011", "baton.request_id": "req_011", "baton.cost_usd": 0.001,
        "baton.output_chars": len(orjson.dumps(
            [{"type": "tool_use", "name": "web_search", "input": {"q": "widgets"}}])),
        "baton.output_count": 1,
    }
    assert first.status.status_code == StatusCode.UNSET
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.attributes is not None and failed.attributes["error.type"] == "rate_limit_error"
    assert failed.attributes["http.response.status_code"] == 429
    assert nested.status.status_code == StatusCode.ERROR and nested.status.description == "ToolError"

    assert tool.attributes is not None
    assert tool.attributes["gen_ai.operation.name"] == "execute_tool"
    assert tool.attributes["gen_ai.tool.name"] == "web_search"
    assert tool.attributes["gen_ai.tool.call.id"] == "0/1.0"
    assert "gen_ai.tool.call.arguments" not in tool.attributes

    # Span times are the events' times.
    assert run.start_time == pytest.approx((T0 + 0.1) * 1e9, abs=1e3)
    assert (tool.end_time or 0) - (tool.start_time or 0) == pytest.approx(0.1e9, abs=1e3)

    # Point events land on the agent span, in order.
    assert [e.name for e in agent.events] == ["rate_limit.wait", "retry", "breaker.change", "tool.denied",
                                              "cache.hit"]
    retry = agent.events[1]
    assert retry.attributes is not None and retry.attributes["target"] == MODEL
    assert retry.attributes["delay_s"] == 1.0


def test_otel_full_capture_adds_content_attributes() -> None:
    sink, exporter = traced("full")
    emit_all([sink], scripted_run())
    spans = exporter.get_finished_spans()
    (tool,) = by_name(spans, "execute_tool web_search")
    assert tool.attributes is not None
    assert orjson.loads(str(tool.attributes["gen_ai.tool.call.arguments"])) == {"q": "widgets"}
    assert tool.attributes["gen_ai.tool.call.result"] == "Widgets are small."
    chat = by_name(spans, f"chat {MODEL}")[0]
    assert chat.attributes is not None
    assert orjson.loads(str(chat.attributes["gen_ai.input.messages"]))[0]["role"] == "user"


def test_otel_run_nests_under_the_callers_current_span() -> None:
    sink, exporter = traced()
    provider_tracer = sink._tracer  # the same provider, so both spans are exported together
    with provider_tracer.start_as_current_span("POST /runs") as outer:
        emit_all([sink], scripted_run()[:1] + scripted_run()[-1:])
    spans = exporter.get_finished_spans()
    (run,) = by_name(spans, "invoke_workflow market-report")
    assert parent_of(run) == outer.get_span_context().span_id
    assert run.context.trace_id == outer.get_span_context().trace_id


def test_otel_orphan_events_do_not_crash() -> None:
    sink, exporter = traced()
    s = Script()
    s.add("retry", "x1", "nowhere", target=MODEL, attempt=1, delay_s=0.1, error_type="overloaded_error")
    s.add("tool.result", "T9", "gone", agent="a", tool="web_search", key="3", is_error=True, duration_s=0.25)
    s.add("agent.end", "A9", "gone", agent="a", key="3", status="ok", duration_s=2.0)
    s.add("model.request", "M9", "gone", agent="a", model=MODEL, key="4", attempt=1, max_tokens=10)
    for event in s.events:
        sink.handle(event)
    assert sink.dropped_events == 1
    tool_span, agent_span = exporter.get_finished_spans()
    assert tool_span.name == "execute_tool web_search" and tool_span.status.status_code == StatusCode.ERROR
    assert (tool_span.end_time or 0) - (tool_span.start_time or 0) == pytest.approx(0.25e9, abs=1e3)
    assert (agent_span.end_time or 0) - (agent_span.start_time or 0) == pytest.approx(2e9, abs=1e3)
    sink.close()  # the model call never ended: closed as incomplete
    (chat,) = by_name(exporter.get_finished_spans(), f"chat {MODEL}")
    assert chat.attributes is not None and chat.attributes["baton.incomplete"] is True


class _StartHook(SpanProcessor):
    """A processor that needs the live span at start: the sink must keep the SDK path for it."""

    def __init__(self) -> None:
        self.started = 0

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        self.started += 1


def _normalized(spans: tuple[ReadableSpan, ...]) -> list[tuple[Any, ...]]:
    """Everything about the spans except their random ids, parents named instead."""
    names = {s.context.span_id: s.name for s in spans}
    return sorted(((s.name, s.start_time, s.end_time, s.kind.name, s.status.status_code.name, s.status.description,
                    dict(s.attributes or {}), [(e.name, dict(e.attributes or {}), e.timestamp) for e in s.events],
                    names.get(s.parent.span_id) if s.parent else None) for s in spans), key=repr)


def test_otel_fast_spans_equal_the_sdk_path() -> None:
    fast, fast_exporter = traced()
    assert fast._fast is not None  # plain provider with a simple processor: spans built directly
    hook = _StartHook()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(hook)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    sdk = OTelSink(provider)
    assert sdk._fast is None
    emit_all([fast], scripted_run())
    emit_all([sdk], scripted_run())
    assert hook.started == 8
    assert _normalized(fast_exporter.get_finished_spans()) == _normalized(exporter.get_finished_spans())
    for sink in (fast, sdk):
        spans = (fast_exporter if sink is fast else exporter).get_finished_spans()
        assert len({s.context.trace_id for s in spans}) == 1


def test_otel_spans_carry_batons_ids() -> None:
    sink, exporter = traced()
    run, agent = "7f3a9c0b12d4e5f6", "0011223344556677"
    events = [Event("run.start", "run-ids", TRACE_ID, run, None, {"workflow": "w"}, ts=T0),
              Event("agent.start", "run-ids", TRACE_ID, agent, run, {"agent": "a", "key": "0"}, ts=T0 + 1),
              Event("agent.end", "run-ids", TRACE_ID, agent, run, {"agent": "a", "key": "0", "status": "ok"},
                    ts=T0 + 2),
              Event("run.end", "run-ids", TRACE_ID, run, None, {"status": "succeeded"}, ts=T0 + 3)]
    emit_all([sink], events)
    agent_span, run_span = exporter.get_finished_spans()
    assert run_span.context.trace_id == agent_span.context.trace_id == int(TRACE_ID, 16)
    assert (run_span.context.span_id, agent_span.context.span_id) == (int(run, 16), int(agent, 16))
    assert parent_of(agent_span) == int(run, 16)
    assert run_span.context.trace_flags.sampled


def test_otel_keeps_the_sdk_path_for_a_custom_sampler() -> None:
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, TraceIdRatioBased

    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=TraceIdRatioBased(0.5))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    assert OTelSink(provider)._fast is None
    off = TracerProvider(sampler=ALWAYS_OFF)
    off.add_span_processor(SimpleSpanProcessor(exporter))
    emit_all([OTelSink(off)], scripted_run())
    assert exporter.get_finished_spans() == ()  # the sampler said no, and was asked


def test_otel_ratio_sampling_keeps_whole_traces() -> None:
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    from baton.observe.events import new_id

    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.5)))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    sink = OTelSink(provider)
    assert sink._fast is not None  # ParentBased: the root is asked, children follow it
    traces = [new_id(16) for _ in range(40)]
    for trace_id in traces:
        run, agent = new_id(), new_id()
        emit_all([sink], [Event("run.start", f"run-{trace_id}", trace_id, run, None, {"workflow": "w"}),
                          Event("agent.start", f"run-{trace_id}", trace_id, agent, run, {"agent": "a"}),
                          Event("agent.end", f"run-{trace_id}", trace_id, agent, run, {"agent": "a", "status": "ok"}),
                          Event("run.end", f"run-{trace_id}", trace_id, run, None, {"status": "succeeded"})])
    ratio = TraceIdRatioBased(0.5)
    decisions = {t: ratio.should_sample(None, int(t, 16), "x").decision for t in traces}
    expected = {int(t, 16) for t, decision in decisions.items() if decision.name == "RECORD_AND_SAMPLE"}
    exported = [s.context.trace_id for s in exporter.get_finished_spans()]
    assert 0 < len(expected) < len(traces)
    assert sorted(exported) == sorted([t for t in expected for _ in range(2)])  # both spans of each kept trace


class _Recorder:
    """A batching sink that records what it is given; ``broken`` makes ``process`` raise."""

    def __init__(self, broken: bool = False) -> None:
        self.broken = broken
        self.kinds: list[str] = []
        self.batches = 0

    def handle(self, event: Event) -> None:
        raise AssertionError("a batching sink in a stream is never called at emit")

    def process(self, event: Event) -> None:
        if self.broken:
            raise RuntimeError("sink bug")
        self.kinds.append(event.kind)

    def batch_done(self) -> None:
        self.batches += 1

    def close(self) -> None:
        pass


async def test_stream_queues_once_per_iteration_and_a_broken_sink_stops_nothing(
        caplog: pytest.LogCaptureFixture) -> None:
    broken, kept = _Recorder(broken=True), _Recorder()
    stream = EventStream([broken, kept])
    events = scripted_run()[:3]
    for event in events:
        stream.emit(event)
    assert kept.kinds == []  # queued: worked through at the end of the iteration
    await asyncio.sleep(0)
    assert kept.kinds == [e.kind for e in events] and kept.batches == 1
    assert broken.batches == 1  # its batch still ends
    assert sum("sink bug" in (r.exc_text or "") or "failed on" in r.getMessage() for r in caplog.records) == 3
    for _ in range(70):  # more than the 64 that wait before the queue is worked through early
        stream.emit(events[1])
    assert len(kept.kinds) >= 3 + 64 and kept.batches >= 2
    stream.close()
    assert len(kept.kinds) == 3 + 70


async def test_sinks_in_a_loop_work_at_the_end_of_the_iteration(tmp_path: Path) -> None:
    otel, exporter = traced()
    metrics = MetricsSink()
    path = tmp_path / "run.jsonl"
    stream = EventStream([JSONLSink(path), otel, metrics])
    events = scripted_run()
    tracer = otel._tracer
    with tracer.start_as_current_span("POST /runs") as outer:
        stream.emit(events[0])  # run.start: nests under the request span current now...
    for event in events[1:-1]:
        stream.emit(event)
    assert path.read_bytes() == b""
    assert [s.name for s in exporter.get_finished_spans()] == ["POST /runs"]
    assert metrics.registry.get_sample_value("baton_model_calls_total", {"agent": "researcher", "model": MODEL}) \
        is None
    await asyncio.sleep(0)  # ...even though that span has ended before the batch runs
    assert len(list(read_events(path))) == len(events) - 1
    assert len(exporter.get_finished_spans()) == 1 + 7  # all but the run span, still open
    assert metrics.registry.get_sample_value("baton_model_calls_total", {"agent": "researcher", "model": MODEL}) == 2
    stream.emit(events[-1])
    stream.close()
    (run,) = by_name(exporter.get_finished_spans(), "invoke_workflow market-report")
    assert parent_of(run) == outer.get_span_context().span_id
    assert run.context.trace_id == outer.get_span_context().trace_id
    assert {s.context.trace_id for s in exporter.get_finished_spans()} == {run.context.trace_id}
    assert [r["kind"] for r in read_events(path)] == [e.kind for e in events]


def test_configure_tracing_choices(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert configure_tracing(None) is None
    with pytest.raises(UsageError, match="'otlp' or 'console'"):
        configure_tracing("jaeger")  # type: ignore[arg-type]
    provider = configure_tracing("console")
    assert provider is not None
    emit_all([OTelSink(provider)], scripted_run()[:1] + scripted_run()[-1:])
    provider.shutdown()
    out = capsys.readouterr()
    assert out.out == ""  # stdout stays free for --json
    assert '"name": "invoke_workflow market-report"' in out.err
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(UsageError, match=r"baton-agents\[otlp\]"):
        configure_tracing("otlp")


class _Collector(BaseHTTPRequestHandler):
    bodies: list[tuple[str, str, bytes]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.bodies.append((self.path, self.headers["Content-Type"], body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_configure_tracing_otlp_exports_to_a_collector(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as stock_encode
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from baton.observe import otlp

    encoded: list[int] = []
    baton_encode = otlp.encode_spans

    def counting_encode(spans: Any, encoded_as: Any = None) -> bytes:
        encoded.append(len(spans))
        return baton_encode(spans, encoded_as)

    monkeypatch.setattr(otlp, "encode_spans", counting_encode)
    _Collector.bodies = []
    server = HTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        provider = configure_tracing("otlp", endpoint=f"http://127.0.0.1:{server.server_port}",
                                     service_name="baton-test")
        assert provider is not None
        kept = InMemorySpanExporter()  # the same spans, to encode with the stock encoder
        provider.add_span_processor(SimpleSpanProcessor(kept))
        emit_all([OTelSink(provider)], scripted_run())
        provider.shutdown()
    finally:
        server.shutdown()
        server.server_close()
    assert _Collector.bodies, "the collector received nothing"
    assert sum(encoded) == 8  # baton's encoder made every body
    received = []
    for path, content_type, body in _Collector.bodies:
        assert path == "/v1/traces" and content_type == "application/x-protobuf"
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}["service.name"]
            assert service == "baton-test"
            received += [span for scope in resource_spans.scope_spans for span in scope.spans]
    assert len(received) == 8
    assert sorted(span.name for span in received) == sorted(s.name for s in _finished_names())
    # Field for field what the stock OTLP encoder makes of the same spans.
    expected = ExportTraceServiceRequest()
    expected.ParseFromString(stock_encode(kept.get_finished_spans()).SerializeToString())
    stock = [span for rs in expected.resource_spans for scope in rs.scope_spans for span in scope.spans]
    assert sorted(received, key=lambda span: span.span_id) == sorted(stock, key=lambda span: span.span_id)


def with_hex_ids(events: list[Event]) -> list[Event]:
    """The same events with valid span ids (the script's "R", "A1" get random ones), so two sinks agree."""
    ids: dict[str, str] = {}

    def hex_id(name: str | None) -> str | None:
        return None if name is None else ids.setdefault(name, f"{len(ids) + 1:016x}")

    return [Event(e.kind, e.run_id, e.trace_id, hex_id(e.span_id), hex_id(e.parent_id), e.data, ts=e.ts)  # type: ignore[arg-type]
            for e in events]


def _serve_collector() -> tuple[HTTPServer, str]:
    _Collector.bodies = []
    server = HTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"


def _received_spans() -> list[Any]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    spans = []
    for _, _, body in _Collector.bodies:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        spans += [span for rs in request.resource_spans for scope in rs.scope_spans for span in scope.spans]
    return sorted(spans, key=lambda span: span.span_id)


@pytest.mark.parametrize("capture", ["metadata", "full"])
def test_otlp_spans_encoded_as_they_end_equal_the_stock_encoding(capture: str) -> None:
    """configure_tracing("otlp") alone: the sink encodes each span as it ends, no ReadableSpan built."""
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as stock_encode
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.sdk.resources import Resource

    events = with_hex_ids(scripted_run())
    server, url = _serve_collector()
    try:
        provider = configure_tracing("otlp", endpoint=url, service_name="baton-test")
        assert provider is not None
        sink = OTelSink(provider, capture=capture)  # type: ignore[arg-type]
        assert sink._fast is not None and sink._fast._direct is not None
        emit_all([sink], events)
        provider.shutdown()
    finally:
        server.shutdown()
        server.server_close()
    received = _received_spans()
    assert len(received) == 8
    kept = InMemorySpanExporter()  # the same events through ReadableSpans and the stock encoder
    reference = TracerProvider(resource=Resource.create({"service.name": "baton-test"}), shutdown_on_exit=False)
    reference.add_span_processor(SimpleSpanProcessor(kept))
    emit_all([OTelSink(reference, capture=capture)], events)  # type: ignore[arg-type]
    expected = ExportTraceServiceRequest()
    expected.ParseFromString(stock_encode(kept.get_finished_spans()).SerializeToString())
    stock = [span for rs in expected.resource_spans for scope in rs.scope_spans for span in scope.spans]
    assert received == sorted(stock, key=lambda span: span.span_id)
    assert any(span.events for span in received) and any(span.status.code for span in received)


def test_otlp_a_processor_added_later_sees_every_span() -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    server, url = _serve_collector()
    try:
        provider = configure_tracing("otlp", endpoint=url)
        assert provider is not None
        sink = OTelSink(provider)
        kept = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(kept))  # after the sink chose to encode directly
        emit_all([sink], with_hex_ids(scripted_run()))
        provider.shutdown()
    finally:
        server.shutdown()
        server.server_close()
    assert len(kept.get_finished_spans()) == 8
    assert len(_received_spans()) == 8


def test_otlp_export_cuts_encoded_items_into_requests() -> None:
    from baton.observe.otlp import export_requests, span_count

    items: list[Any] = [(300, b"a"), (300, b"b"), "readable-span", (512, b"c"), (1, b"d")]
    requests = export_requests(items, max_spans=512)
    assert requests == [[(300, b"a")], [(300, b"b"), "readable-span"], [(512, b"c")], [(1, b"d")]]
    assert [span_count(r) for r in requests] == [300, 301, 512, 1]


def test_otlp_encoder_equals_the_stock_encoder() -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.common.trace_encoder")
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as stock_encode
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.sdk.resources import Resource

    from baton.observe.otlp import encode_spans

    exporter = InMemorySpanExporter()
    resource: dict[str, Any] = {"service.name": "svc", "n": 3, "f": 1.5, "ok": True, "tags": ("a", "b")}
    providers = [TracerProvider(resource=Resource.create(resource), shutdown_on_exit=False) for _ in range(2)]
    providers.append(TracerProvider(resource=Resource.create({"service.name": "other"}, schema_url="https://s/1"),
                                    shutdown_on_exit=False))
    for provider in providers:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    for capture in ("metadata", "full"):  # baton's own spans, built directly
        emit_all([OTelSink(providers[0], capture=capture)], scripted_run())  # type: ignore[arg-type]
    # Spans from other instrumentation sharing the provider: every attribute type, links, remote parents.
    remote = trace.SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=trace.TraceFlags(1),
                               trace_state=trace.TraceState([("vendor", "x"), ("k", "v")]))
    tracer = providers[1].get_tracer("other.lib", "1.2.3", schema_url="https://schema/1")
    with tracer.start_as_current_span("GET /x", context=trace.set_span_in_context(trace.NonRecordingSpan(remote)),
                                      kind=SpanKind.SERVER, links=[trace.Link(remote, {"why": "retry"})]) as span:
        span.set_attributes({"neg": -5, "big": 2**62, "ints": [1, -2, 3], "floats": [0.5, 2.0], "flags": [True],
                             "unicode": "héllo ✓", "empty": "", "t": True, "one": 1, "onef": 1.0,
                             "long": "x" * 300, "strs": ["a", "b"]})
        span.add_event("cache miss", {"key": "k1", "n": 2})
        span.set_status(trace.Status(trace.StatusCode.ERROR, "boom"))
    with providers[2].get_tracer("bare").start_as_current_span("plain"):
        pass
    spans = exporter.get_finished_spans()
    assert len(spans) == 18
    ours, stock = ExportTraceServiceRequest(), ExportTraceServiceRequest()
    ours.ParseFromString(encode_spans(spans))
    stock.ParseFromString(stock_encode(spans).SerializeToString())
    assert ours == stock
    assert len(ours.resource_spans) == 2  # the two equal resources share one entry, as in the stock encoder


def _finished_names() -> tuple[ReadableSpan, ...]:
    sink, exporter = traced()
    emit_all([sink], scripted_run())
    return exporter.get_finished_spans()


# --- Prometheus --------------------------------------------------------------------------------


def test_metrics_count_the_known_sequence() -> None:
    sink = MetricsSink()
    emit_all([sink], scripted_run())
    value = sink.registry.get_sample_value
    assert value("baton_agent_execution_seconds_count", {"agent": "researcher"}) == 1
    assert value("baton_agent_execution_seconds_sum", {"agent": "researcher"}) == 1.5
    assert value("baton_agent_execution_seconds_bucket", {"agent": "researcher", "le": "2.5"}) == 1
    assert value("baton_agent_execution_seconds_bucket", {"agent": "researcher", "le": "1.0"}) == 0
    assert value("baton_errors_total", {"agent": "researcher", "type": "rate_limit_error"}) == 1
    assert value("baton_errors_total", {"agent": "researcher", "type": "tool_denied"}) == 1
    assert value("baton_errors_total", {"agent": "fact_checker", "type": "ToolError"}) == 1
    assert value("baton_tool_calls_total", {"agent": "researcher", "tool": "web_search"}) == 1
    for kind, expected in (("input", 300), ("output", 70), ("cache_read", 50), ("cache_write", 10)):
        assert value("baton_tokens_total", {"agent": "researcher", "type": kind}) == expected
    assert value("baton_cost_usd_total", {"agent": "researcher", "model": MODEL}) == pytest.approx(0.003)
    assert value("baton_model_calls_total", {"agent": "researcher", "model": MODEL}) == 2
    assert value("baton_retries_total", {"target": MODEL}) == 1
    assert value("baton_rate_limit_wait_seconds_total", {"model": MODEL}) == 0.5
    assert value("baton_cache_hits_total", {"agent": "researcher"}) == 1
    assert value("baton_breaker_state", {"target": MODEL}) == 1
    assert value("baton_runs_total", {"status": "succeeded"}) == 1
    # Each sink has its own registry unless told otherwise.
    assert MetricsSink().registry.get_sample_value("baton_retries_total", {"target": MODEL}) is None


def test_metrics_sinks_can_share_a_registry() -> None:
    registry = CollectorRegistry()
    for _ in range(2):  # e.g. one sink per run in a long-lived server
        emit_all([MetricsSink(registry)], scripted_run())
    assert registry.get_sample_value("baton_model_calls_total", {"agent": "researcher", "model": MODEL}) == 4
    assert registry.get_sample_value("baton_runs_total", {"status": "succeeded"}) == 2


def test_metrics_breaker_gauge_follows_changes() -> None:
    registry = CollectorRegistry()
    sink = MetricsSink(registry)
    s = Script()
    for old, new in (("closed", "open"), ("open", "half_open"), ("half_open", "closed"), ("closed", "open")):
        s.add("breaker.change", "b", None, target="tool:web_search", old=old, new=new)
        sink.handle(s.events[-1])
        expected = {"closed": 0, "half_open": 1, "open": 2}[new]
        assert registry.get_sample_value("baton_breaker_state", {"target": "tool:web_search"}) == expected


def test_metrics_labels_follow_newly_registered_secrets() -> None:
    from baton.observe.redact import clear_secrets, register_secret

    sink = MetricsSink()
    s = Script()
    response = s.add("model.response", "M1", "A1", agent="svc-acme-internal", model=MODEL, usage=usage(10, 1),
                     cost_usd=0.001)
    sink.handle(response)
    try:
        register_secret("acme-internal")  # the label children cached for this agent must not be reused
        sink.handle(s.add("model.response", "M2", "A1", agent="svc-acme-internal", model=MODEL, usage=usage(10, 1),
                          cost_usd=0.001))
        value = sink.registry.get_sample_value
        assert value("baton_model_calls_total", {"agent": "svc-acme-internal", "model": MODEL}) == 1
        assert value("baton_model_calls_total", {"agent": "svc-[REDACTED]", "model": MODEL}) == 1
        assert value("baton_tokens_total", {"agent": "svc-[REDACTED]", "type": "input"}) == 10
    finally:
        clear_secrets()


def test_serve_metrics_over_http() -> None:
    sink = MetricsSink()
    emit_all([sink], scripted_run())
    server = serve_metrics(0, sink.registry)
    try:
        with urllib.request.urlopen(server.url, timeout=5) as response:
            body = response.read().decode()
        assert 'baton_tool_calls_total{agent="researcher",tool="web_search"} 1.0' in body
        assert body == generate_latest(sink.registry).decode()
    finally:
        server.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(server.url, timeout=2)


# --- progress ----------------------------------------------------------------------------------


def test_progress_plain_lines() -> None:
    out = io.StringIO()
    sink = ProgressSink(out)
    assert sink.tty is False
    emit_all([sink], scripted_run())
    text = out.getvalue()
    lines = [line.split("] ", 1)[1] for line in text.splitlines()[:-1]]
    assert lines == [
        f"run {RUN_ID} started (market-report)",
        f"rate limit: waited 0.5s for {MODEL}",
        f"model {MODEL} error 429: rate_limit_error",
        f"retry {MODEL} attempt 2 in 1.0s (rate_limit_error)",
        f"breaker {MODEL}: closed -> half_open",
        "agent researcher asked for tool delete_all, which it was not given",
        "agent fact_checker failed after 0.10s: ToolError",
        "agent researcher done in 1.50s, 430 tokens, $0.0030",
    ]
    assert text.splitlines()[-1] == (
        f"run {RUN_ID} succeeded in 2.00s: 2 agent calls, 2 model calls, 1 tool calls, 430 tokens "
        "(in 300, out 70, cache read 50, cache write 10), $0.0030, 1 retries, 1 agent errors")
    assert "\r" not in text and "\x1b" not in text
    assert "widgets" not in text.lower()  # never content


def test_progress_on_a_closed_stream_does_not_break_the_run() -> None:
    out = io.StringIO()
    sink = ProgressSink(out, tty=False)
    out.close()
    for event in scripted_run():
        sink.handle(event)
    sink.close()
    assert sink.agents_done == 2


def test_progress_tty_redraws_a_throttled_status_line() -> None:
    out = io.StringIO()
    sink = ProgressSink(out, tty=True)
    events = scripted_run()
    sink.handle(events[0])
    sink.handle(events[1])
    # The second event came within the throttle window; the ticker draws it shortly after.
    deadline = time.monotonic() + 5
    while not out.getvalue().endswith("| 1 running (researcher) | 0 agents done | 0 steps | 0 tok | $0.0000"):
        assert time.monotonic() < deadline, out.getvalue()
        time.sleep(0.02)
    assert out.getvalue().startswith("\r\x1b[2Kbaton market-report ")
    started = time.monotonic()
    s = Script()
    for i in range(500):
        s.add("model.response", f"M{i}", "A1", agent="researcher", model=MODEL, usage=usage(10, 1), cost_usd=0.0)
        sink.handle(s.events[-1])
    elapsed = time.monotonic() - started
    redraws = out.getvalue().count("\r\x1b[2Kbaton")
    assert redraws <= 2 + int(elapsed / 0.1) + 1, (redraws, elapsed)
    for event in events[2:]:
        sink.handle(event)
    sink.close()
    text = out.getvalue()
    assert "\r\x1b[2K[" in text  # notable events are printed above the status line
    assert text.endswith("1 retries, 1 agent errors\n")
    assert "widgets" not in text.lower()
