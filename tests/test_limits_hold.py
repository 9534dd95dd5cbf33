"""Limits hold against odd numbers (issue 13): NaN, infinite or negative limits, impossible
usage, retry-after beyond its cap, calls cancelled in flight, and budget reservations."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

import baton
from baton.errors import ProviderError, WorkflowError
from baton.messages import Usage
from baton.models.anthropic import AnthropicModel, usage_from_wire
from baton.models.pricing import cost_of, price_for
from baton.observe import events as ev
from baton.observe.events import Event
from baton.runtime.breaker import BreakerRegistry, BreakerSettings, CircuitBreaker
from baton.runtime.budget import Limits, estimate_tokens
from baton.runtime.engine import Engine
from baton.runtime.ratelimit import RateGovernor, RateLimits
from baton.runtime.retry import RetryPolicy
from baton.stores.memory import MemoryStore
from baton.testing import FakeAnthropicServer, Fault, text

pytestmark = pytest.mark.timeout(60)

HAIKU, OPUS = "claude-haiku-4-5", "claude-opus-4-6"
ROOT = Path(__file__).resolve().parents[1]
ODD = [math.nan, math.inf, -math.inf, -1]



def engine(model: AnthropicModel, **options: Any) -> Engine:
    options.setdefault("retry", RetryPolicy(max_attempts=3, initial_delay_s=0.01, max_delay_s=0.02))
    return Engine(store=MemoryStore(), model=model, governor=options.pop("governor", None) or RateGovernor(),
                  breakers=BreakerRegistry(), **options)


def served(server: FakeAnthropicServer) -> tuple[int, Usage, float]:
    """Responses the server answered 200, their usage and their price: what a provider bills."""
    n, total, usd = 0, Usage(), 0.0
    for r in server.requests:
        if r.status == 200 and r.usage is not None and r.body is not None:
            n += 1
            u = usage_from_wire(r.usage)
            total.add(u)
            usd += cost_of(r.body["model"], u) or 0.0
    return n, total, usd


class Events:
    def __init__(self) -> None:
        self.seen: list[Event] = []

    def handle(self, event: Event) -> None:
        self.seen.append(event)

    def close(self) -> None:
        pass

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e.data for e in self.seen if e.kind == kind]


# --- odd limits are refused everywhere they are read ------------------------------------------


@pytest.mark.parametrize("value", ODD)
@pytest.mark.parametrize("name", ["budget_usd", "budget_tokens", "budget_input_tokens", "budget_output_tokens",
                                  "max_model_calls", "timeout_s", "max_depth", "concurrency"])
def test_python_limits_refuse_nan_infinities_and_negatives(name: str, value: float) -> None:
    with pytest.raises(WorkflowError, match=f"limits.{name}: must be"):
        Limits(**{name: value})


@pytest.mark.parametrize(("cls", "name"), [(RetryPolicy, "max_retry_after_s"), (RetryPolicy, "max_delay_s"),
                                           (RateLimits, "burst_s"), (RateLimits, "rpm"),
                                           (BreakerSettings, "cooldown_s"), (BreakerSettings, "window_s")])
@pytest.mark.parametrize("value", ODD)
def test_other_settings_refuse_odd_numbers(cls: type, name: str, value: float) -> None:
    with pytest.raises(WorkflowError, match=f"{name}: must be"):
        cls(**{name: value})


def test_breaker_refuses_an_infinite_cooldown() -> None:
    with pytest.raises(WorkflowError, match="breaker w.cooldown_s"):
        CircuitBreaker("w", cooldown_s=math.inf)


@pytest.mark.parametrize("flag", ["--budget-usd nan", "--budget-usd inf", "--budget-usd -1", "--budget-tokens -5",
                                  "--budget-tokens 0", "--cache-ttl nan"])
def test_cli_flags_refuse_odd_limits_in_one_line(tmp_path: Path, flag: str) -> None:
    wf = tmp_path / "wf.yaml"
    wf.write_text("version: 1\nname: w\nagents:\n  a: {system: s}\nworkflow: {pattern: agent, agent: a}\n")
    name, value = flag.split()
    proc = subprocess.run([sys.executable, "-m", "baton", "run", str(wf), "--input", "x", name, value,
                           "--store", f"sqlite:///{tmp_path / 'r.db'}"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 2
    assert f"argument {name}: must be" in proc.stderr and value in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "r.db").exists()  # refused before anything was started


@pytest.mark.parametrize(("yaml_limits", "field"), [
    ("limits: {budget_usd: .nan}", "limits.budget_usd"),
    ("limits: {timeout_s: .inf}", "limits.timeout_s"),
    ("limits: {budget_usd: -1}", "limits.budget_usd"),
    ("retry: {max_retry_after_s: .inf}", "retry.max_retry_after_s"),
    ("rate_limits: {claude-haiku: {burst_s: .nan}}", "rate_limits.claude-haiku.burst_s"),
    ("breaker: {cooldown_s: .inf}", "breaker.cooldown_s"),
])
def test_yaml_limits_refuse_odd_numbers_naming_the_field(tmp_path: Path, yaml_limits: str, field: str) -> None:
    from baton.spec import load_workflow_file

    wf = tmp_path / "wf.yaml"
    wf.write_text(f"version: 1\nname: w\nagents:\n  a: {{system: s}}\nworkflow: {{pattern: agent, agent: a}}\n"
                  f"{yaml_limits}\n")
    with pytest.raises(WorkflowError) as info:
        load_workflow_file(wf)
    assert info.value.field == field and info.value.line == 6


async def test_resume_overrides_refuse_odd_limits() -> None:
    store = MemoryStore()

    async def wf(ctx: baton.RunContext, _: Any) -> str:
        raise RuntimeError("stop here")

    first = await baton.run(wf, None, store=store)
    for override in ({"budget_usd": math.nan}, {"budget_usd": -0.5}, {"budget_tokens": -1}, {"timeout_s": math.inf}):
        with pytest.raises(WorkflowError, match="must be"):
            await baton.resume(first.run_id, wf, store=store, **override)
    assert (await store.get_run(first.run_id)).status == "failed"  # nothing was changed


# --- one declaration per setting, and the YAML schema derives from it --------------------------


def _valid_value(cls: type, name: str) -> Any:
    from dataclasses import fields

    from baton.settings import bound_of

    bound = bound_of(next(f for f in fields(cls) if f.name == name))
    assert bound is not None
    if bound.kind == "boolean":
        return True
    if bound.maximum is not None:
        return bound.maximum
    low = bound.minimum if bound.minimum is not None else (bound.exclusive_minimum or 0) + 1
    return int(low) + 1 if bound.kind == "integer" else float(low) + 0.5


@pytest.mark.parametrize("cls", [Limits, RetryPolicy, RateLimits, BreakerSettings])
def test_every_dataclass_setting_is_accepted_by_the_yaml_schema(tmp_path: Path, cls: type) -> None:
    from dataclasses import fields

    import yaml

    from baton.spec import load_workflow_file

    for f in fields(cls):
        value = _valid_value(cls, f.name)
        section = {Limits: {"limits": {f.name: value}}, RetryPolicy: {"retry": {f.name: value}},
                   RateLimits: {"rate_limits": {HAIKU: {f.name: value}}},
                   BreakerSettings: {"breaker": {f.name: value}}}[cls]
        doc = {"version": 1, "name": "w", "agents": {"a": {"system": "s"}},
               "workflow": {"pattern": "agent", "agent": "a"}, **section}
        wf = tmp_path / f"{f.name}.yaml"
        wf.write_text(yaml.safe_dump(doc))
        built = load_workflow_file(wf)  # raises WorkflowError if the schema rejected the key
        got = {Limits: built.limits, RetryPolicy: built.retry, BreakerSettings: BreakerSettings(**built.breaker or {}),
               RateLimits: built.rate_limits.get(HAIKU)}[cls]
        assert getattr(got, f.name) == value, f.name


def test_schema_fragments_are_derived_from_the_dataclasses() -> None:
    from dataclasses import fields

    from baton.spec.schema import SCHEMA

    defs = SCHEMA["$defs"]
    for key, cls in (("limits", Limits), ("retry", RetryPolicy), ("rate_limit", RateLimits),
                     ("breaker", BreakerSettings)):
        assert set(defs[key]["properties"]) == {f.name for f in fields(cls)}, key
    committed = orjson.loads((ROOT / "schemas" / "workflow-v1.schema.json").read_bytes())
    assert "burst_s" in committed["$defs"]["rate_limit"]["properties"]


# --- impossible usage in a 200 answer is a provider error, never a credit ------------------------

writer = baton.Agent("writer", system="You write.", model=HAIKU, max_tokens=64)


def one_call(agent: baton.Agent = writer, prompt: str = "hello") -> Any:
    async def workflow(ctx: baton.RunContext, _: Any) -> str:
        return (await ctx.call(agent, prompt)).text

    return workflow


def _body_with_usage(**usage: Any) -> str:
    base = {"input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    return orjson.dumps({"id": "msg_odd", "type": "message", "role": "assistant", "model": HAIKU,
                         "content": [{"type": "text", "text": "cheap"}], "stop_reason": "end_turn",
                         "usage": {**base, **usage}}).decode()


@pytest.mark.parametrize("usage", [{"output_tokens": -1_000_000}, {"input_tokens": -5},
                                   {"cache_read_input_tokens": -3}, {"output_tokens": 1.5},
                                   {"input_tokens": "12"}, {"output_tokens": True},
                                   {"output_tokens": 10_000_000}, {"input_tokens": 10**15}])
async def test_impossible_usage_is_a_provider_error_not_a_credit(server: FakeAnthropicServer, model: AnthropicModel,
                                                                 usage: dict[str, Any]) -> None:
    server.add_rule(times=1, fault=Fault.status(200, body=_body_with_usage(**usage), content_type="application/json"))
    server.add_rule(reply=text("honest"))
    result = await engine(model).run(one_call())
    assert result.ok and result.output == "honest"  # retried like any provider error
    n, billed, usd = served(server)
    assert result.model_calls == n == 1
    assert result.usage == billed and result.cost_usd == pytest.approx(usd) and usd > 0


async def test_impossible_usage_that_persists_fails_clearly(server: FakeAnthropicServer,
                                                            model: AnthropicModel) -> None:
    server.add_rule(fault=Fault.status(200, body=_body_with_usage(output_tokens=-7), content_type="application/json"))
    result = await engine(model).run(one_call())
    assert result.status == "failed" and result.cost_usd == 0.0 and result.model_calls == 0
    assert result.error is not None and "impossible usage" in result.error["message"]
    assert "output_tokens" in result.error["message"]


def test_openai_compatible_usage_is_checked_too() -> None:
    from baton.models.openai_compat import parse_response

    answer = {"choices": [{"message": {"content": "x"}, "finish_reason": "stop"}]}
    ok = parse_response({**answer, "usage": {"prompt_tokens": 12, "completion_tokens": 3,
                                             "prompt_tokens_details": {"cached_tokens": 2}}}, "m")
    assert (ok.usage.input_tokens, ok.usage.cache_read_input_tokens, ok.usage.output_tokens) == (10, 2, 3)
    for usage in ({"prompt_tokens": -12}, {"completion_tokens": -3}, {"completion_tokens": 2.5},
                  {"prompt_tokens": "many"}, {"prompt_tokens": 1, "prompt_tokens_details": {"cached_tokens": 5}}):
        with pytest.raises(ProviderError, match="impossible usage") as info:
            parse_response({**answer, "usage": usage}, "m")
        assert info.value.error_type == "invalid_usage" and info.value.retryable


# --- retry-after is capped for every wait it causes ---------------------------------------------


@pytest.mark.parametrize("shared", [False, True])
async def test_a_huge_retry_after_never_stalls_past_its_cap(server: FakeAnthropicServer, model: AnthropicModel,
                                                            shared: bool) -> None:
    governor: RateGovernor
    if shared:
        from _services import REDIS_URL, redis_problem

        if redis_problem():
            pytest.skip(redis_problem() or "")
        from baton.runtime.ratelimit_redis import RedisRateGovernor

        governor = RedisRateGovernor(REDIS_URL, key_prefix=f"baton:test:rl:{time.time_ns()}:")
    else:
        governor = RateGovernor()
    server.add_rule(times=1, fault=Fault.rate_limit(retry_after_s=3600))
    sink = Events()
    eng = engine(model, governor=governor, sinks=[sink],
                 retry=RetryPolicy(max_attempts=3, initial_delay_s=0.01, max_retry_after_s=0.4))
    started = time.monotonic()
    try:
        result = await asyncio.wait_for(eng.run(one_call()), 20)  # unfixed: the governor holds for an hour
    finally:
        await governor.aclose()
    took = time.monotonic() - started
    assert result.ok and 0.4 <= took < 10
    (retry,) = sink.of(ev.RETRY)
    assert retry["delay_s"] == pytest.approx(0.4, abs=0.05)  # the wait the progress line shows ...
    waits = sum(d["wait_s"] for d in sink.of(ev.RATE_LIMIT_WAIT))
    assert retry["delay_s"] + waits <= 1.0  # ... is the real wait


def test_one_retry_after_parser_caps_non_finite_values() -> None:
    from baton.models._wire import parse_retry_after

    assert parse_retry_after({"retry-after": "3600"}) == 3600.0
    assert parse_retry_after({"retry-after-ms": "1500"}) == 1.5
    for odd in ("nan", "inf", "-inf", "garbage", ""):
        assert parse_retry_after({"retry-after": odd}) is None
        assert parse_retry_after({"retry-after-ms": odd}) is None
    policy = RetryPolicy(max_retry_after_s=2.0)
    assert policy.retry_after_wait(ProviderError("x", status=429, retry_after=3600)) == 2.0
    assert policy.retry_after_wait(ProviderError("x", status=429)) is None


# --- every response that arrived is billed, even when its caller was cancelled ------------------

cheap = baton.Agent("cheap", system="You answer briefly.", model=HAIKU, max_tokens=64)
dear = baton.Agent("dear", system="You think at length.", model=OPUS, max_tokens=8192)


async def test_calls_cancelled_in_flight_by_a_budget_trip_are_billed(server: FakeAnthropicServer,
                                                                     model: AnthropicModel) -> None:
    server.add_rule(match="briefly", reply=text("brief"), latency_s=1.0)

    async def later_dear(ctx: baton.RunContext) -> Any:
        await asyncio.sleep(0.3)  # the three cheap calls are on the wire by now
        return await ctx.call(dear, "think")  # its reservation trips the budget: the gather stops

    async def workflow(ctx: baton.RunContext, _: Any) -> Any:
        return await ctx.gather(*(ctx.call(cheap, f"q{i}") for i in range(3)), later_dear(ctx))

    store = MemoryStore()
    eng = Engine(store=store, model=model, governor=RateGovernor(), breakers=BreakerRegistry())
    result = await eng.run(workflow, limits=Limits(budget_usd=0.05))
    assert result.status == "budget_exceeded"
    n, billed, usd = served(server)
    assert n == 3  # the server answered all three ...
    assert result.model_calls == 3 and result.usage == billed  # ... and the run reports all three
    assert result.cost_usd == pytest.approx(usd) and usd > 0
    journaled = [s for s in await store.load_steps(result.run_id) if s.kind == "model"]
    assert len(journaled) == 3  # a resume replays them instead of paying again


# --- reservations: concurrent calls cannot overshoot a budget together ---------------------------

SYSTEM = "You summarise."
PROMPT = "x" * 2000
MAX_TOKENS = 1000


def _per_call() -> tuple[int, float]:
    """What one call reserves: estimated input tokens and USD (the budget tracker's own formula)."""
    est_in = estimate_tokens(len(SYSTEM) + len(PROMPT))
    price = price_for(HAIKU)
    assert price is not None
    return est_in, (est_in * price.input + MAX_TOKENS * price.output) / 1_000_000


@pytest.mark.parametrize("limit", ["budget_usd", "budget_tokens", "budget_input_tokens", "budget_output_tokens"])
async def test_a_concurrent_gather_sends_no_more_calls_than_the_budget_allows(
        server: FakeAnthropicServer, model: AnthropicModel, limit: str) -> None:
    server.add_rule(reply=text("summary"), latency_s=0.3)
    summariser = baton.Agent("summariser", system=SYSTEM, model=HAIKU, max_tokens=MAX_TOKENS)
    est_in, usd = _per_call()
    per_call = {"budget_usd": usd, "budget_tokens": est_in + MAX_TOKENS, "budget_input_tokens": est_in,
                "budget_output_tokens": MAX_TOKENS}[limit]
    allowed = 3
    budget = per_call * (allowed + 0.5)
    limits = Limits(**{limit: budget if limit == "budget_usd" else int(budget)})

    async def workflow(ctx: baton.RunContext, _: Any) -> Any:
        return await ctx.gather(*(ctx.call(summariser, PROMPT) for _ in range(10)))

    result = await engine(model).run(workflow, limits=limits)
    assert result.status == "budget_exceeded"
    n, _, _ = served(server)
    assert len(server.requests) == n == allowed  # unreserved, all ten would have gone out at once
    assert result.model_calls == allowed


async def test_a_timed_out_agent_stops_at_once_and_its_answer_is_still_billed(server: FakeAnthropicServer,
                                                                             model: AnthropicModel) -> None:
    from baton.errors import RunTimeout

    server.add_rule(reply=text("late"), latency_s=1.5)
    hasty = baton.Agent("hasty", system="You answer.", model=HAIKU, max_tokens=64, agent_timeout_s=0.3)
    gave_up_after: list[float] = []

    async def workflow(ctx: baton.RunContext, _: Any) -> str:
        started = time.monotonic()
        try:
            await ctx.call(hasty, "q")
        except RunTimeout:
            gave_up_after.append(time.monotonic() - started)
        return "moved on"

    result = await engine(model).run(workflow)
    assert result.ok and gave_up_after and gave_up_after[0] < 1.2  # not held until the answer came
    n, billed, usd = served(server)
    assert n == 1 and result.model_calls == 1 and result.usage == billed and result.cost_usd == pytest.approx(usd)
