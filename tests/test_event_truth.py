"""Events tell the truth: breaker changes, approval decisions and blackboard writes are
emitted where they happen, and a run keeps one trace across an interrupt and a resume.

Each run goes over HTTP to the fake Messages API; the JSONL file, the Prometheus registry and
the OpenTelemetry spans are read back as a user would.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest

import baton
from baton.models.anthropic import AnthropicModel
from baton.observe import JSONLSink, MetricsSink, OTelSink
from baton.observe.events import trace_id_for
from baton.observe.jsonl import read_events
from baton.observe.progress import ProgressSink
from baton.runtime.breaker import BreakerRegistry
from baton.runtime.engine import Engine, decide
from baton.runtime.ratelimit import RateGovernor
from baton.runtime.retry import RetryPolicy
from baton.stores.sqlite import SQLiteStore
from baton.testing import FakeAnthropicServer, text, tool_call

pytestmark = pytest.mark.timeout(60)
HAIKU = "claude-haiku-4-5"



class Sinks:
    """A JSONL file, a Prometheus registry, OpenTelemetry spans and a progress stream, for one run."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "events.jsonl"
        self.registry = CollectorRegistry()
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.progress = io.StringIO()
        self.sinks = [JSONLSink(self.path), MetricsSink(self.registry), OTelSink(provider),
                      ProgressSink(self.progress, tty=False)]

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in read_events(self.path) if e["kind"] == kind]

    def span_events(self, kind: str) -> list[dict[str, Any]]:
        return [dict(e.attributes or {}) for s in self.exporter.get_finished_spans() for e in s.events
                if e.name == kind]

    def metrics(self) -> str:
        return generate_latest(self.registry).decode()


def engine(model: AnthropicModel, store: Any, sinks: Sinks, **options: Any) -> Engine:
    return Engine(store=store, model=model, governor=RateGovernor(), sinks=sinks.sinks,
                  retry=RetryPolicy(max_attempts=1), **options)


# --- breaker.change ---------------------------------------------------------------------------------


async def test_breaker_changes_are_emitted_and_reach_every_sink(server: FakeAnthropicServer, model: AnthropicModel,
                                                                tmp_path: Path) -> None:
    @baton.tool
    def inventory(sku: str) -> str:
        """Stock of a product.

        Args:
            sku: product id
        """
        raise RuntimeError("inventory is down")

    server.add_rule(r"Error: ", reply=text("no stock data"))
    server.add_rule(reply=tool_call("inventory", {"sku": "A1"}))
    clock = [1000.0]
    breakers = BreakerRegistry(defaults={"failure_threshold": 2, "cooldown_s": 30.0}, clock=lambda: clock[0])
    clerk = baton.Agent("clerk", model=HAIKU, tools=[inventory])

    async def workflow(ctx: baton.RunContext, _: Any) -> None:
        for i in range(3):
            if i == 2:
                clock[0] += 31.0  # past the cooldown: the next call is a half-open probe (it fails)
            await ctx.call(clerk, f"order {i}")

    sinks = Sinks(tmp_path)
    result = await engine(model, SQLiteStore(f"sqlite:///{tmp_path}/runs.db"), sinks, breakers=breakers).run(workflow)
    assert result.status == "succeeded", result.error
    changes = [(e["target"], e["old"], e["new"]) for e in sinks.events("breaker.change")]
    assert changes == [("tool:inventory", "closed", "open"), ("tool:inventory", "open", "half_open"),
                       ("tool:inventory", "half_open", "open")]
    assert all(e["run_id"] == result.run_id for e in sinks.events("breaker.change"))
    assert 'baton_breaker_state{target="tool:inventory"} 2.0' in sinks.metrics()
    assert [(a["target"], a["new"]) for a in sinks.span_events("breaker.change")] == [
        ("tool:inventory", "open"), ("tool:inventory", "half_open"), ("tool:inventory", "open")]
    assert "breaker tool:inventory: closed -> open" in sinks.progress.getvalue()


# --- approval.decided ---------------------------------------------------------------------------------


async def test_an_approval_decision_is_emitted_when_the_run_takes_it(server: FakeAnthropicServer,
                                                                     model: AnthropicModel, tmp_path: Path) -> None:
    drafter = baton.Agent("drafter", model=HAIKU)

    async def announce(ctx: baton.RunContext, topic: str) -> dict[str, Any]:
        draft = await ctx.call(drafter, topic)
        decision = await ctx.approve("publish", {"draft": draft.output})
        return {"published": decision.approved}

    server.add_rule(reply=text("Launch on Monday."))
    store = SQLiteStore(f"sqlite:///{tmp_path}/runs.db")
    first = Sinks(tmp_path / "first")
    paused = await engine(model, store, first).run(announce, "launch")
    assert paused.status == "awaiting_approval"
    assert first.events("approval.requested") and not first.events("approval.decided")

    [step] = [e["step"] for e in first.events("approval.requested")]
    await decide(paused.run_id, step, approved=True, by="ana", store=store)
    second = Sinks(tmp_path)
    done = await engine(model, store, second).resume(paused.run_id, announce)
    assert done.status == "succeeded" and done.output == {"published": True}
    [decided] = second.events("approval.decided")
    assert (decided["step"], decided["name"], decided["approved"], decided["by"]) == (step, "publish", True, "ana")
    [attrs] = second.span_events("approval.decided")
    assert attrs["step"] == step and attrs["approved"] is True
    assert f"approval {step}: approved" in second.progress.getvalue()


# --- state.change -------------------------------------------------------------------------------------


async def test_blackboard_writes_are_emitted_once(server: FakeAnthropicServer, model: AnthropicModel,
                                                  tmp_path: Path) -> None:
    async def publish(ctx: baton.RunContext, _: Any) -> Any:
        await ctx.share("plan", {"steps": 3})
        await ctx.share("owner", "ana", ttl_s=60)
        return await ctx.shared("plan")

    sinks = Sinks(tmp_path)
    store = SQLiteStore(f"sqlite:///{tmp_path}/runs.db")
    result = await engine(model, store, sinks).run(publish)
    assert result.status == "succeeded" and result.output == {"steps": 3}
    changes = [(e["key"], e["op"], e["ttl_s"]) for e in sinks.events("state.change")]
    assert changes == [("plan", "share", None), ("owner", "share", 60)]  # the read is not a change
    assert [a["key"] for a in sinks.span_events("state.change")] == ["plan", "owner"]


# --- one trace per run ----------------------------------------------------------------------------------


async def test_a_resumed_run_stays_in_its_trace(server: FakeAnthropicServer, model: AnthropicModel,
                                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def lookup(topic: str) -> str:
        """Look a topic up.

        Args:
            topic: the topic
        """
        if os.environ.get("TRACE_TEST_CALM") != "1":
            raise KeyboardInterrupt  # the run stops as interrupted
        return "facts"

    server.add_rule(r"facts", reply=text("done"))
    server.add_rule(reply=tool_call("lookup", {"topic": "x"}))
    agent = baton.Agent("researcher", model=HAIKU, tools=[baton.tool(lookup)])

    async def workflow(ctx: baton.RunContext, _: Any) -> str:
        return (await ctx.call(agent, "research")).text

    store = SQLiteStore(f"sqlite:///{tmp_path}/runs.db")
    sinks = Sinks(tmp_path)
    first = await engine(model, store, sinks).run(workflow, run_id="trace-run")
    assert first.status == "interrupted"
    monkeypatch.setenv("TRACE_TEST_CALM", "1")
    resumed_sinks = Sinks(tmp_path)  # the same JSONL file, appended to; a new span exporter
    resumed = await engine(model, store, resumed_sinks).resume("trace-run", workflow)
    assert resumed.status == "succeeded" and resumed.output == "done"

    events = list(read_events(sinks.path))
    starts = [e for e in events if e["kind"] == "run.start"]
    assert len(starts) == 2
    assert {e["trace_id"] for e in events} == {trace_id_for("trace-run")}
    spans = [*sinks.exporter.get_finished_spans(), *resumed_sinks.exporter.get_finished_spans()]
    runs = [s for s in spans if s.name.startswith("invoke_workflow")]
    assert len(runs) == 2
    assert {s.context.trace_id for s in spans} == {int(trace_id_for("trace-run"), 16)}
