"""Runs in one process share one connection pool per endpoint and one breaker set; a call that finds
every connection busy waits its turn (its timeout starts when it gets one) instead of failing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import baton
from baton.errors import CircuitOpenError, ProviderTimeout
from baton.messages import Message, ModelRequest
from baton.models.anthropic import AnthropicModel
from baton.models.pool import pool_stats
from baton.models.resolve import close_models
from baton.runtime.engine import Engine
from baton.runtime.retry import RetryPolicy
from baton.stores.memory import MemoryStore
from baton.testing import FakeAnthropicServer, Fault

pytestmark = pytest.mark.timeout(120)
KEY = "sk-pool-test"
agent = baton.Agent("worker", system="Answer in one word.", model="claude-haiku-4-5", max_tokens=16)


def ask(prompt: str = "hello", **kw: Any) -> ModelRequest:
    return ModelRequest("claude-haiku-4-5", [Message.user(prompt)], **kw)


async def one_call(ctx: baton.RunContext, text: str) -> str:
    return (await ctx.call(agent, text)).text


# --- one pool per endpoint ---------------------------------------------------------------------


async def test_adapters_for_the_same_endpoint_share_one_pool(server: FakeAnthropicServer) -> None:
    a = AnthropicModel(api_key=KEY, base_url=server.url)
    b = AnthropicModel(api_key=KEY, base_url=server.url)
    other_key = AnthropicModel(api_key=KEY + "-other", base_url=server.url)
    try:
        await asyncio.gather(a.complete(ask()), b.complete(ask()), other_key.complete(ask()))
        assert a._pool() is b._pool()
        assert a._pool().session is b._pool().session
        assert other_key._pool() is not a._pool()  # another credential never rides on this session
        assert sorted(p.leases for p in pool_stats()) == [1, 2]
    finally:
        await asyncio.gather(a.aclose(), b.aclose(), other_key.aclose())
    assert pool_stats() == []


async def test_closing_one_adapter_leaves_the_shared_pool_to_the_others(server: FakeAnthropicServer) -> None:
    a = AnthropicModel(api_key=KEY, base_url=server.url)
    b = AnthropicModel(api_key=KEY, base_url=server.url)
    await a.complete(ask())
    await b.complete(ask())
    pool = a._pool()
    await a.aclose()
    assert not pool.session.closed and pool.leases == 1
    assert (await b.complete(ask())).text == "ok"
    await b.aclose()
    assert pool.session.closed  # the last lease closes the session
    await b.aclose()  # safe twice
    assert (await a.complete(ask())).text == "ok"  # a closed adapter opens a fresh pool when used again
    assert a._pool() is not pool
    await a.aclose()


async def test_many_runs_through_the_provider_share_one_pool(server: FakeAnthropicServer,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
    monkeypatch.delenv("BATON_PROVIDER", raising=False)
    server.add_rule(latency_s=0.3)
    seen: list[int] = []

    async def workflow(ctx: baton.RunContext, text: str) -> str:
        answer = (await ctx.call(agent, text)).text
        seen.append(len(pool_stats()))
        return answer

    store = MemoryStore()
    try:
        results = await asyncio.gather(*(baton.run(workflow, f"q{i}", store=store) for i in range(40)))
    finally:
        await close_models()
    assert [r.status for r in results] == ["succeeded"] * 40
    assert seen == [1] * 40  # every run's call went through the same pool
    assert server.max_concurrency == 40  # and they overlapped on the wire


# --- a busy pool is a queue, not a failure -----------------------------------------------------


async def test_calls_beyond_the_pool_wait_their_turn_and_all_succeed(server: FakeAnthropicServer) -> None:
    server.add_rule(latency_s=0.3)
    # Each call may take 1 s once sent; ten calls through two connections need 1.5 s in all,
    # and the connect timeout is far shorter than the wait: neither may fail a queued call.
    model = AnthropicModel(api_key=KEY, base_url=server.url, max_connections=2, timeout_s=1.0,
                           connect_timeout_s=0.05)
    try:
        answers = await asyncio.gather(*(model.complete(ask(f"q{i}")) for i in range(10)))
        stats = model._pool().stats()
    finally:
        await model.aclose()
    assert [a.text for a in answers] == ["ok"] * 10
    assert server.max_concurrency == 2
    assert stats.queued_total == 8 and stats.peak_waiting == 8
    assert stats.in_use == 0 and stats.waiting == 0


async def test_queued_runs_through_a_small_pool_all_succeed(server: FakeAnthropicServer) -> None:
    server.add_rule(latency_s=0.2)
    model = AnthropicModel(api_key=KEY, base_url=server.url, max_connections=3, connect_timeout_s=0.05)
    store = MemoryStore()
    try:
        results = await asyncio.gather(*(baton.run(one_call, f"q{i}", store=store, model=model) for i in range(15)))
    finally:
        await model.aclose()
    assert [r.status for r in results] == ["succeeded"] * 15
    assert server.max_concurrency == 3 and server.completed_count == 15


async def test_a_cancelled_waiter_gives_up_its_place_without_losing_a_slot(server: FakeAnthropicServer) -> None:
    server.add_rule(latency_s=0.3)
    model = AnthropicModel(api_key=KEY, base_url=server.url, max_connections=1)
    try:
        first = asyncio.ensure_future(model.complete(ask("first")))
        queued = [asyncio.ensure_future(model.complete(ask(f"queued {i}"))) for i in range(3)]
        await asyncio.sleep(0.1)
        pool = model._pool()
        assert pool.in_use == 1 and pool.waiting == 3
        queued[0].cancel()
        queued[1].cancel()
        await asyncio.sleep(0)
        assert (await first).text == "ok"
        assert (await queued[2]).text == "ok"
        assert all(q.cancelled() for q in queued[:2])
        assert pool.in_use == 0 and pool.waiting == 0
        assert (await model.complete(ask("after"))).text == "ok"  # the slot came back
    finally:
        await model.aclose()
    assert server.completed_count == 3


async def test_the_timeout_counts_from_sending_and_says_so(server: FakeAnthropicServer) -> None:
    server.add_rule(fault=Fault.stall(5))
    model = AnthropicModel(api_key=KEY, base_url=server.url, max_connections=1)
    try:
        with pytest.raises(ProviderTimeout, match=r"no response from .* within 0\.3s of sending the request"):
            await model.complete(ask(timeout_s=0.3))
    finally:
        await model.aclose()


# --- one breaker set for the runs through one endpoint -----------------------------------------


async def test_runs_through_one_adapter_share_their_breakers(server: FakeAnthropicServer) -> None:
    server.add_rule(fault=Fault.status(500))

    async def workflow(ctx: baton.RunContext, text: str) -> str:
        return (await ctx.call(agent, text)).text

    workflow.breaker = {"failure_threshold": 2, "failure_rate": 0.5, "cooldown_s": 600}  # type: ignore[attr-defined]
    model = AnthropicModel(api_key=KEY, base_url=server.url)
    retry = RetryPolicy(max_attempts=2, initial_delay_s=0.01, max_delay_s=0.01)
    store = MemoryStore()
    try:
        first = await Engine(store=store, model=model, retry=retry).run(workflow, "a")
        sent = len(server.requests)
        second = await Engine(store=store, model=model, retry=retry).run(workflow, "b")
        other = AnthropicModel(api_key=KEY, base_url=server.url)
        third = await Engine(store=store, model=other, retry=retry).run(workflow, "c")
        await other.aclose()
    finally:
        await model.aclose()
    assert first.status == "failed" and sent == 2
    # The second run, through the same adapter, finds the endpoint's breaker open: no request sent.
    assert second.status == "failed" and second.error is not None
    assert second.error["type"] == CircuitOpenError.__name__
    # Another adapter has breakers of its own.
    assert third.error is not None and third.error["type"] != CircuitOpenError.__name__
    assert len(server.requests) == sent + 2


def test_shared_breaker_sets_are_kept_per_owner_and_settings() -> None:
    from baton.runtime.breaker import shared_breakers

    a, b = AnthropicModel(api_key=KEY, base_url="http://127.0.0.1:9"), AnthropicModel(api_key=KEY, base_url="http://127.0.0.1:9")
    assert shared_breakers(a) is shared_breakers(a, {})
    assert shared_breakers(a) is not shared_breakers(b)
    assert shared_breakers(a, {"failure_threshold": 3}) is not shared_breakers(a)
    assert shared_breakers(("anthropic", "http://x")) is shared_breakers(("anthropic", "http://x"))
