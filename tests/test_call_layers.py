"""The call path's pieces, each on its own: the one retry loop, single attempt layers over a
bare ``RunServices``, and ``ModelCalls`` with a layer list of the caller's choosing."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import pytest

from _events import EventLog
from baton.context import RunContext
from baton.errors import BudgetExceeded, CircuitOpenError, ProviderError, ToolError
from baton.messages import Message, ModelRequest, ModelResponse
from baton.observe.events import EventStream
from baton.runtime.breaker import BreakerRegistry
from baton.runtime.budget import BudgetTracker, Limits
from baton.runtime.engine import Engine
from baton.runtime.layers import (
    AttemptLayer,
    BreakerLayer,
    BudgetLayer,
    GovernorLayer,
    ModelCall,
    default_layers,
)
from baton.runtime.model_calls import ModelCalls
from baton.runtime.ratelimit import RateGovernor
from baton.runtime.retry import RetryPolicy, retrying
from baton.runtime.runtime import Runtime
from baton.runtime.services import ModelBinding, RunServices
from baton.stores.memory import MemoryStore
from baton.testing import Rule, ScriptedModel, text

MODEL = "claude-haiku-4-5"


@dataclass
class Site:
    """A call site: what the runtime needs to know about an agent (``runtime.protocols.CallSite``)."""

    name: str = "writer"
    fallback_models: list[str] | None = None
    task_type: str | None = None
    retry: Any = None
    cache_prompt: bool = False
    prompt_version: str = "v1"
    batch: bool = False

    def __post_init__(self) -> None:
        self.fallback_models = self.fallback_models or []


@dataclass
class Scope:
    span_id: str = "parent"
    priority: str = "normal"
    state: Any = None


def services(limits: Limits | None = None, sink: EventLog | None = None, model: Any = None) -> RunServices:
    scripted = model or ScriptedModel([Rule(reply=text("hello"))])
    return RunServices("run1", None, BudgetTracker(limits or Limits()), EventStream([sink] if sink else []),
                       lambda model_id: ModelBinding(scripted, model_id, model_id), governor=RateGovernor())


def a_call(run: RunServices, *, site: Site | None = None) -> ModelCall:
    request = ModelRequest(model=MODEL, messages=[Message.user("hi")], max_tokens=100)
    return ModelCall(site or Site(), Scope(), "0/m0", request, run.bind_model(MODEL), MODEL,
                     run.breakers.get("scripted:" + MODEL), RetryPolicy(), 30, time.time(), None)


# --- the one retry loop ----------------------------------------------------------------------------


async def test_retrying_retries_what_it_is_told_to_and_reports_each_retry() -> None:
    seen: list[int] = []
    retries: list[tuple[int, float]] = []
    slept: list[float] = []

    async def attempt(n: int) -> str:
        seen.append(n)
        if n < 3:
            raise ToolError("flaky", tool="t")
        return "ok"

    async def sleep(s: float) -> None:
        slept.append(s)

    out = await retrying(attempt, lambda n, exc: 0.25 * n, retry_on=ToolError, sleep=sleep,
                         on_retry=lambda n, wait, exc: retries.append((n, wait)))
    assert out == "ok" and seen == [1, 2, 3]
    assert retries == [(1, 0.25), (2, 0.5)] and slept == [0.25, 0.5]


async def test_retrying_gives_up_when_the_delay_says_so_and_never_retries_other_errors() -> None:
    calls: list[int] = []

    async def failing(n: int) -> str:
        calls.append(n)
        raise ToolError("down", tool="t")

    async def no_sleep(s: float) -> None:
        raise AssertionError("must not sleep")

    with pytest.raises(ToolError):
        await retrying(failing, lambda n, exc: None, retry_on=ToolError, sleep=no_sleep, on_retry=lambda *a: None)
    assert calls == [1]

    async def buggy(n: int) -> str:
        calls.append(n)
        raise ValueError("a bug, not a tool failure")

    with pytest.raises(ValueError):
        await retrying(buggy, lambda n, exc: 0.0, retry_on=ToolError, sleep=no_sleep, on_retry=lambda *a: None)
    assert calls == [1, 1]


# --- single layers --------------------------------------------------------------------------------


async def test_budget_layer_reserves_releases_and_settles() -> None:
    run = services(Limits(max_model_calls=1))
    layer, call = BudgetLayer(run), a_call(run)
    await layer.enter(call)
    with pytest.raises(BudgetExceeded):  # the reservation counts against the limit while in flight
        await BudgetLayer(run).enter(a_call(run))
    layer.failed(call, ProviderError("overloaded", status=529, retryable=True))
    await layer.enter(call)  # released: room again
    response = await run.bind_model(MODEL).model.complete(call.wire)
    await layer.succeeded(call, response)
    assert run.budget.model_calls == 1 and call.cost is not None and call.cost > 0
    assert run.budget.cost_usd == pytest.approx(call.cost)


async def test_a_budget_stop_is_reported_as_a_budget_check_event() -> None:
    sink = EventLog()
    run = services(Limits(max_model_calls=1), sink)
    await BudgetLayer(run).enter(a_call(run))
    with pytest.raises(BudgetExceeded):
        await BudgetLayer(run).enter(a_call(run))
    checks = [e.data for e in sink.events if e.kind == "budget.check"]
    assert checks == [{"limit": "model_calls", "spent": 2, "allowed": 1, "ok": False}]


async def test_breaker_layer_fails_fast_when_open_and_counts_only_unhealthy_failures() -> None:
    run = services()
    run.breakers = BreakerRegistry(defaults={"failure_threshold": 1, "failure_rate": 0.1})
    layer, call = BreakerLayer(run), a_call(run)
    await layer.enter(call)
    layer.failed(call, ProviderError("bad request", status=400))  # the caller's fault: not counted
    assert call.breaker.state == "closed"
    await layer.enter(call)
    layer.failed(call, ProviderError("rate limited", status=429, retryable=True))  # the governor's business
    assert call.breaker.state == "closed"
    await layer.enter(call)
    layer.failed(call, ProviderError("overloaded", status=529, retryable=True))
    assert call.breaker.state == "open"
    with pytest.raises(CircuitOpenError):
        await layer.enter(call)


async def test_governor_layer_holds_the_model_for_a_429s_retry_after() -> None:
    run = services()
    budget, governor, call = BudgetLayer(run), GovernorLayer(run), a_call(run)
    await budget.enter(call)
    await governor.enter(call)
    governor.failed(call, ProviderError("slow down", status=429, retryable=True, retry_after=3.0))
    assert run.governor._penalty_wait(MODEL, time.monotonic()) == pytest.approx(3.0, abs=0.5)


# --- the layer list is the seam ----------------------------------------------------------------------


class Recorder(AttemptLayer):
    phase = "outer"

    def __init__(self, run: RunServices, log: list[str]) -> None:
        super().__init__(run)
        self.log = log

    async def enter(self, call: ModelCall) -> None:
        self.log.append(f"enter {call.attempt}")

    async def succeeded(self, call: ModelCall, response: ModelResponse) -> None:
        self.log.append("succeeded")

    def failed(self, call: ModelCall, exc: ProviderError) -> None:
        self.log.append(f"failed {exc.status}")

    def abandoned(self, call: ModelCall) -> None:
        self.log.append("abandoned")


async def test_model_calls_run_the_given_layers_through_retries_in_order() -> None:
    model = ScriptedModel([Rule(reply=text("hello"))])
    fails = [ProviderError("overloaded", status=529, retryable=True)]
    real = model.complete

    async def complete(request: ModelRequest, **kw: Any) -> ModelResponse:
        if fails:
            raise fails.pop()
        return await real(request)

    model.complete = complete  # type: ignore[method-assign]
    sink, log = EventLog(), []  # type: ignore[var-annotated]
    run = services(sink=sink, model=model)

    async def no_wait(s: float) -> None:
        pass

    run.sleep = no_wait
    calls = ModelCalls(run, [*default_layers(run), Recorder(run, log)])
    request = ModelRequest(model=MODEL, messages=[Message.user("hi")], max_tokens=100)
    response, cost = await calls.call(Scope(), Site(), "0/m0", request)
    assert response.text == "hello" and cost is not None
    assert log == ["enter 1", "failed 529", "enter 2", "succeeded"]
    assert sink.kinds() == ["model.request", "model.error", "retry", "model.request", "model.response"]
    assert run.budget.model_calls == 1  # the failed attempt's reservation was released, not billed


async def test_a_request_cancelled_on_the_wire_abandons_its_layers_when_it_fails_after_all() -> None:
    gate, on_the_wire = asyncio.Event(), asyncio.Event()
    model = ScriptedModel([Rule(reply=text("late"))])

    async def stuck(request: ModelRequest, **kw: Any) -> ModelResponse:
        on_the_wire.set()
        await gate.wait()
        raise ProviderError("never answered", status=500)

    model.complete = stuck  # type: ignore[method-assign]
    run, log = services(model=model), []  # type: ignore[var-annotated]
    calls = ModelCalls(run, [*default_layers(run), Recorder(run, log)])
    request = ModelRequest(model=MODEL, messages=[Message.user("hi")], max_tokens=100)
    task = asyncio.ensure_future(calls.call(Scope(), Site(), "0/m0", request))
    await asyncio.wait_for(on_the_wire.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log == ["enter 1"]  # adopted: the layers wait for the request's outcome
    gate.set()
    await calls.settle_in_flight()  # the adopted request failed: its layers are abandoned then
    assert log == ["enter 1", "abandoned"]
    assert run.budget.model_calls == 0


# --- the engine is given the context type it calls workflows with -----------------------------------


async def test_the_engine_calls_the_workflow_with_the_context_it_is_given() -> None:
    class Audited(RunContext):
        pass

    made: list[Runtime] = []

    def scope(runtime: Runtime, input: Any) -> Audited:
        made.append(runtime)
        return Audited(runtime, input=input)

    async def workflow(ctx: Any, input: Any) -> str:
        return f"{type(ctx).__name__}:{input}"

    model = ScriptedModel([Rule(reply=text("x"))])
    result = await Engine(store=MemoryStore(), model=model, scope=scope).run(workflow, "in")
    assert result.output == "Audited:in" and len(made) == 1
    default = await Engine(store=MemoryStore(), model=model).run(workflow, "in")
    assert default.output == "RunContext:in"
