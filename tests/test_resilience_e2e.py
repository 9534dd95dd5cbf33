"""Resilience end to end: real sockets to the fake Messages API, the whole call path, numbers asserted.

Retries (429 with retry-after, 529, 500, connection reset), the spend-limit 429 that
must not be retried, billing a retried call once, fallback models, tool circuit
breakers, per-call timeouts, prompt-cache warm-up, model routing and the result cache.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

import baton
from baton.messages import Usage
from baton.models.anthropic import AnthropicModel, usage_from_wire
from baton.models.pricing import cost_of
from baton.runtime.breaker import BreakerRegistry
from baton.runtime.cache import MemoryResultCache
from baton.runtime.engine import Engine
from baton.runtime.ratelimit import RateGovernor
from baton.runtime.retry import RetryPolicy
from baton.stores.memory import MemoryStore
from baton.testing import FakeAnthropicServer, Fault, text, tool_call

pytestmark = pytest.mark.timeout(30)

SONNET, OPUS, HAIKU = "claude-sonnet-4-6", "claude-opus-4-6", "claude-haiku-4-5"
QUICK = RetryPolicy(max_attempts=5, initial_delay_s=0.01, max_delay_s=0.02)



def engine(model: AnthropicModel, **options: Any) -> Engine:
    """An engine with its own governor and breakers, so no test leaks state into another."""
    options.setdefault("retry", QUICK)
    return Engine(store=MemoryStore(), model=model, governor=RateGovernor(),
                  breakers=options.pop("breakers", None) or BreakerRegistry(), **options)


def one_call(agent: baton.Agent, prompt: str = "hello") -> Any:
    async def workflow(ctx: baton.RunContext, _: Any) -> str:
        return (await ctx.call(agent, prompt)).text

    return workflow


def served_usage(server: FakeAnthropicServer) -> tuple[Usage, float]:
    """Usage and cost of the responses the server answered 200 (what a provider bills)."""
    total, usd = Usage(), 0.0
    for r in server.requests:
        if r.status == 200:
            assert r.usage is not None and r.body is not None
            u = usage_from_wire(r.usage)
            total.add(u)
            usd += cost_of(r.body["model"], u) or 0.0
    return total, usd


writer = baton.Agent("writer", system="You write.", model=SONNET, max_tokens=64)


# --- retries ------------------------------------------------------------------------------


async def test_429_is_retried_no_earlier_than_retry_after(server: FakeAnthropicServer,
                                                          model: AnthropicModel) -> None:
    server.add_rule(times=2, fault=Fault.rate_limit(retry_after_s=0.3))
    result = await engine(model).run(one_call(writer))
    assert result.ok and result.output == "ok"
    reqs = server.requests
    assert [r.status for r in reqs] == [429, 429, 200]
    for before, after in zip(reqs, reqs[1:], strict=False):
        assert before.time_end is not None
        gap = after.time_start - before.time_end
        assert 0.29 <= gap < 1.5, gap  # the jittered backoff is 10-20 ms; retry-after is the floor


async def test_529_500_and_connection_reset_are_retried_and_billed_once(server: FakeAnthropicServer,
                                                                        model: AnthropicModel) -> None:
    for fault in (Fault.overloaded(), Fault.server_error(), Fault.connection_reset()):
        server.add_rule(times=1, fault=fault)
    result = await engine(model).run(one_call(writer))
    assert result.ok
    reqs = server.requests
    assert [r.fault for r in reqs] == ["status", "status", "connection_reset", None]
    assert [r.status for r in reqs] == [529, 500, None, 200]
    billed, usd = served_usage(server)
    # Only the final response is usage: the report equals it exactly, counted once.
    assert result.model_calls == 1
    assert result.usage == billed and billed.input_tokens > 0 and billed.output_tokens > 0
    assert result.cost_usd == pytest.approx(usd, rel=1e-12) and usd > 0


async def test_spend_limit_429_is_not_retried(server: FakeAnthropicServer, model: AnthropicModel) -> None:
    server.add_rule(fault=Fault.spend_limit())
    result = await engine(model).run(one_call(writer))
    assert result.status == "failed"
    assert result.error is not None and "usage limits" in result.error["message"]
    assert len(server.requests) == 1  # a retry could never succeed before next month
    assert result.model_calls == 0 and result.cost_usd == 0.0


async def test_retries_stop_after_max_attempts(server: FakeAnthropicServer, model: AnthropicModel) -> None:
    server.add_rule(fault=Fault.server_error())
    result = await engine(model, retry=RetryPolicy(max_attempts=3, initial_delay_s=0.01, max_delay_s=0.01),
                          breakers=BreakerRegistry(defaults={"failure_threshold": 10})).run(one_call(writer))
    assert result.status == "failed" and len(server.requests) == 3
    assert result.error is not None and "500" in result.error["message"]


# --- fallback models ------------------------------------------------------------------------


async def test_fallback_model_on_repeated_overload(server: FakeAnthropicServer, model: AnthropicModel) -> None:
    server.add_rule(model=OPUS, fault=Fault.overloaded())
    strategist = baton.Agent("strategist", system="You plan.", model=OPUS, max_tokens=64,
                             fallback_models=[SONNET])
    result = await engine(model, retry=RetryPolicy(max_attempts=2, initial_delay_s=0.01, max_delay_s=0.01)).run(
        one_call(strategist))
    assert result.ok and result.output == "ok"
    assert [(r.body or {}).get("model") for r in server.requests] == [OPUS, OPUS, SONNET]
    assert [r.status for r in server.requests] == [529, 529, 200]
    billed, usd = served_usage(server)
    assert result.usage == billed
    assert result.cost_usd == pytest.approx(cost_of(SONNET, billed), rel=1e-12) == pytest.approx(usd)


# --- circuit breaker on a tool ----------------------------------------------------------------


async def test_tool_breaker_trips_fails_fast_and_probes_after_cooldown(server: FakeAnthropicServer,
                                                                       model: AnthropicModel) -> None:
    reached: list[str] = []

    @baton.tool
    def inventory(sku: str) -> str:
        """Look up stock.

        Args:
            sku: the product id
        """
        reached.append(sku)
        raise RuntimeError("inventory service is down")

    # Turn 1 asks for the tool; once a tool result (an error) is in the prompt, answer.
    server.add_rule(r"Error: ", reply=text("could not check stock"))
    server.add_rule(reply=tool_call("inventory", {"sku": "A1"}))
    clock = [1000.0]
    breakers = BreakerRegistry(defaults={"failure_threshold": 3, "cooldown_s": 30.0}, clock=lambda: clock[0])
    clerk = baton.Agent("clerk", system="You check stock.", model=SONNET, tools=[inventory], max_tokens=64)
    reached_after: list[int] = []

    async def workflow(ctx: baton.RunContext, _: Any) -> list[str]:
        out = []
        for i in range(7):
            if i == 5:
                clock[0] += 31.0  # past the cooldown: the next call is the half-open probe
            out.append((await ctx.call(clerk, f"order {i}")).text)
            reached_after.append(len(reached))
        return out

    result = await engine(model, breakers=breakers).run(workflow)
    assert result.ok
    # Calls 1-3 reach the tool and trip the breaker; 4-5 fail fast; 6 is the probe (fails,
    # reopens); 7 fails fast again.
    assert reached_after == [1, 2, 3, 3, 3, 4, 4]
    assert breakers.get("tool:inventory").state == "open"
    results = [r.text for r in server.requests if "tool_result" in str((r.body or {}).get("messages"))]
    assert sum("circuit open" in t for t in results) == 3
    assert sum("inventory service is down" in t for t in results) == 4


# --- timeouts ---------------------------------------------------------------------------------


async def test_stalled_call_is_abandoned_at_timeout_and_retried(server: FakeAnthropicServer,
                                                               model: AnthropicModel) -> None:
    server.add_rule(times=1, fault=Fault.stall(10))
    impatient = writer.with_(name="impatient", timeout_s=0.3)
    t0 = time.monotonic()
    result = await engine(model).run(one_call(impatient))
    elapsed = time.monotonic() - t0
    assert result.ok and result.output == "ok"
    assert len(server.requests) == 2 and server.requests[1].status == 200
    assert 0.3 <= elapsed < 2.0, elapsed


async def test_a_call_that_always_stalls_fails_per_policy_and_never_hangs(server: FakeAnthropicServer,
                                                                         model: AnthropicModel) -> None:
    server.add_rule(fault=Fault.stall(10))
    impatient = writer.with_(name="impatient", timeout_s=0.2)
    t0 = time.monotonic()
    result = await engine(model, retry=RetryPolicy(max_attempts=3, initial_delay_s=0.01, max_delay_s=0.01)).run(
        one_call(impatient))
    elapsed = time.monotonic() - t0
    assert result.status == "failed"
    assert result.error is not None and result.error["type"] == "ProviderTimeout"
    assert len(server.requests) == 3
    assert 0.6 <= elapsed < 3.0, elapsed


async def test_timeouts_are_not_retried_when_the_policy_says_so(server: FakeAnthropicServer,
                                                                model: AnthropicModel) -> None:
    server.add_rule(fault=Fault.stall(10))
    impatient = writer.with_(name="impatient", timeout_s=0.2)
    policy = RetryPolicy(max_attempts=5, initial_delay_s=0.01, retry_timeouts=False)
    result = await engine(model, retry=policy).run(one_call(impatient))
    assert result.status == "failed" and len(server.requests) == 1


# --- prompt-cache warm-up -----------------------------------------------------------------------


async def test_prompt_cache_warm_up_sends_one_writer_then_readers() -> None:
    context = "The attached report covers widget sales in detail. " * 160  # ~2,000 fake tokens
    async with FakeAnthropicServer(cache_min_tokens=1024, default_latency_s=0.15) as server:
        model = AnthropicModel(api_key="sk-test", base_url=server.url)
        analyst = baton.Agent("analyst", system=context, model=SONNET, max_tokens=64, cache_prompt=True)

        async def workflow(ctx: baton.RunContext, _: Any) -> int:
            return len(await ctx.gather(*(ctx.call(analyst, f"question {i}") for i in range(6))))

        try:
            result = await engine(model).run(workflow, limits=baton.Limits(concurrency=16))
        finally:
            await model.aclose()
        assert result.ok
        reqs = sorted(server.requests, key=lambda r: r.time_start)
        first, rest = reqs[0], reqs[1:]
        assert first.time_end is not None and len(rest) == 5
        assert all(r.time_start >= first.time_end for r in rest)  # the first went alone
        assert first.usage is not None and first.usage["cache_creation_input_tokens"] >= 1024
        prefix = first.usage["cache_creation_input_tokens"]
        assert all(r.usage is not None and r.usage["cache_read_input_tokens"] == prefix
                   and r.usage["cache_creation_input_tokens"] == 0 for r in rest)
        billed, usd = served_usage(server)
        assert result.usage.cache_read_input_tokens == 5 * prefix == billed.cache_read_input_tokens
        assert result.usage.cache_creation_input_tokens == prefix
        assert result.cost_usd == pytest.approx(usd, rel=1e-12)


# --- model routing -------------------------------------------------------------------------------


async def test_auto_model_routes_classification_to_haiku_and_synthesis_to_opus(
        server: FakeAnthropicServer, model: AnthropicModel) -> None:
    classifier = baton.Agent("classifier", system="Label the ticket.", model="auto", task_type="classification")
    synthesizer = baton.Agent("synthesizer", system="Write the report.", model="auto", task_type="synthesis")

    async def workflow(ctx: baton.RunContext, _: Any) -> str:
        label = await ctx.call(classifier, "my invoice is wrong")
        return (await ctx.call(synthesizer, f"summarise: {label.text}")).text

    result = await engine(model).run(workflow)
    assert result.ok
    assert [(r.body or {}).get("model") for r in server.requests] == [HAIKU, OPUS]
    haiku_usd, opus_usd = (cost_of(m, usage_from_wire(r.usage)) for m, r in zip((HAIKU, OPUS), server.requests,
                                                                                   strict=True))
    assert haiku_usd is not None and opus_usd is not None and opus_usd > haiku_usd
    assert result.cost_usd == pytest.approx(haiku_usd + opus_usd, rel=1e-12)


# --- result cache ----------------------------------------------------------------------------------


async def test_identical_second_run_is_served_from_the_result_cache(server: FakeAnthropicServer,
                                                                    model: AnthropicModel) -> None:
    server.add_rule(reply=text("a cached answer"))
    cache = MemoryResultCache()
    deterministic = writer.with_(name="deterministic", temperature=0)
    first = await engine(model, cache=cache).run(one_call(deterministic, "same question"))
    assert first.ok and len(server.requests) == 1
    second = await engine(model, cache=cache).run(one_call(deterministic, "same question"))
    assert second.ok and second.output == first.output == "a cached answer"
    assert len(server.requests) == 1  # no new request reached the server
    assert second.cost_usd == 0.0 and first.cost_usd > 0
    third = await engine(model, cache=cache).run(one_call(deterministic, "another question"))
    assert third.ok and len(server.requests) == 2  # a different prompt is a miss


# --- an open breaker sends calls to the fallback model ------------------------------------------------


async def test_an_open_breaker_sends_calls_straight_to_the_fallback(server: FakeAnthropicServer,
                                                                     model: AnthropicModel) -> None:
    server.add_rule(model=OPUS, fault=Fault.overloaded())
    strategist = baton.Agent("strategist", system="You plan.", model=OPUS, max_tokens=64, fallback_models=[SONNET])
    breakers = BreakerRegistry(defaults={"failure_threshold": 2, "cooldown_s": 600.0})

    async def workflow(ctx: baton.RunContext, _: Any) -> list[str]:
        return [(await ctx.call(strategist, f"plan {i}")).text for i in range(4)]

    result = await engine(model, retry=RetryPolicy(max_attempts=1), breakers=breakers).run(workflow)
    assert result.ok and result.output == ["ok"] * 4
    # Calls 1 and 2 try Opus (529) then fall back; the second failure opens Opus's breaker, so
    # calls 3 and 4 go to Sonnet without a request to Opus.
    assert [(r.body or {}).get("model") for r in server.requests] == [OPUS, SONNET, OPUS, SONNET, SONNET, SONNET]
    assert breakers.get(f"anthropic:{OPUS}").state == "open"
    assert breakers.get(f"anthropic:{SONNET}").state == "closed"


async def test_every_breaker_open_fails_fast_naming_each_model(server: FakeAnthropicServer,
                                                               model: AnthropicModel) -> None:
    server.add_rule(fault=Fault.overloaded())
    strategist = baton.Agent("strategist", system="You plan.", model=OPUS, max_tokens=64, fallback_models=[SONNET])
    breakers = BreakerRegistry(defaults={"failure_threshold": 1, "cooldown_s": 600.0})
    first = await engine(model, retry=RetryPolicy(max_attempts=1), breakers=breakers).run(one_call(strategist))
    assert first.status == "failed" and len(server.requests) == 2  # each model tried once; both breakers open
    second = await engine(model, retry=RetryPolicy(max_attempts=1), breakers=breakers).run(one_call(strategist))
    assert second.status == "failed" and len(server.requests) == 2  # nothing sent
    assert second.error is not None and second.error["type"] == "CircuitOpenError"
    assert second.error["message"] == (f"no model available for agent 'strategist': {OPUS}: circuit open; "
                                       f"{SONNET}: circuit open")
