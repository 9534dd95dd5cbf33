"""RateGovernor (in-process) and RedisRateGovernor (shared): rates, priorities, corrections.

Most tests run on virtual time (a fake clock whose sleeps are timers the test fires), so the
arithmetic is exact; one test per governor runs in real time.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Awaitable
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _services import REDIS_URL
from baton.errors import StoreError, UsageError, WorkflowError
from baton.runtime.ratelimit import RateGovernor, RateLimits
from baton.runtime.ratelimit_redis import RedisRateGovernor

T = TypeVar("T")
SONNET = "claude-sonnet-4-6"


class VirtualTime:
    """A clock plus a sleep whose timers fire only when the test advances time."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self.now + max(0.0, seconds), next(self._seq), fut))
        await fut

    async def idle(self) -> None:
        for _ in range(60):
            await asyncio.sleep(0)

    def _fire_next(self) -> bool:
        while self._timers:
            deadline, _, fut = heapq.heappop(self._timers)
            if fut.done():
                continue
            self.now = max(self.now, deadline)
            fut.set_result(None)
            return True
        return False

    async def advance(self, seconds: float) -> None:
        target = self.now + seconds
        await self.idle()
        while True:
            live = [t for t in self._timers if not t[2].done()]
            if not live or min(live)[0] > target:
                break
            self._fire_next()
            await self.idle()
        self.now = target
        await self.idle()

    async def run(self, aw: Awaitable[T]) -> T:
        """Drive ``aw`` to completion, jumping from timer to timer."""
        task = asyncio.ensure_future(aw)
        while True:
            await self.idle()
            if task.done():
                return task.result()
            if not self._fire_next():
                raise AssertionError("deadlock: nothing runnable and no timer pending")

    def pending_timers(self) -> int:
        return sum(1 for t in self._timers if not t[2].done())


def governor(vt: VirtualTime, limits: dict[str, Any] | None = None, **kw: Any) -> RateGovernor:
    return RateGovernor(limits, clock=vt.clock, sleep=vt.sleep, **kw)


async def timed(vt: VirtualTime, gov: RateGovernor, log: list[tuple[str, float]], name: str, *,
                model: str = SONNET, inp: int = 0, out: int = 0, priority: Any = "normal") -> float:
    waited = await gov.acquire(model, input_tokens=inp, output_tokens=out, priority=priority)
    log.append((name, vt.now))
    return waited


# -- configuration ---------------------------------------------------------------------------


def test_rate_limits_from_dict() -> None:
    assert RateLimits.from_dict({"rpm": 4000, "itpm": 2_000_000, "otpm": 400_000}) == RateLimits(4000, 2e6, 4e5)
    with pytest.raises(WorkflowError) as info:
        RateLimits.from_dict({"rpm": 50, "tpm": 10}, where=f"rate_limits.{SONNET}")
    assert info.value.field == f"rate_limits.{SONNET}.tpm" and "unknown key 'tpm'" in str(info.value)
    with pytest.raises(WorkflowError) as info2:
        RateLimits.from_dict({"rpm": 0})
    assert info2.value.field == "rate_limits.rpm"
    with pytest.raises(WorkflowError):
        RateLimits.from_dict({"itpm": "lots"})
    with pytest.raises(WorkflowError):
        RateLimits.from_dict("rpm=5")  # type: ignore[arg-type]


async def test_bad_priority_and_negative_tokens_are_usage_errors() -> None:
    gov = RateGovernor({SONNET: RateLimits(rpm=60)})
    with pytest.raises(UsageError, match="priority 'urgent'"):
        await gov.acquire(SONNET, input_tokens=1, output_tokens=1, priority="urgent")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match=">= 0"):
        await gov.acquire(SONNET, input_tokens=-1, output_tokens=1)


def test_unlimited_acquire_returns_without_suspending() -> None:
    gov = RateGovernor()
    coro = gov.acquire("claude-opus-4-6", input_tokens=10**6, output_tokens=10**5)
    with pytest.raises(StopIteration) as info:
        coro.send(None)  # completes on the first step: no await, no event loop needed
    assert info.value.value == 0.0


def test_exact_model_id_wins_over_model_class() -> None:
    gov = RateGovernor({"claude-sonnet": {"rpm": 60}, "claude-sonnet-4-6": {"rpm": 600}})
    assert gov.pool_key("claude-sonnet-4-6") == "claude-sonnet-4-6"
    assert gov.pool_key("claude-sonnet-4-5-20250929") == "claude-sonnet"
    assert gov.pool_key("claude-opus-4-6") == "claude-opus"
    assert gov.limits() == {"claude-sonnet": {"rpm": 60.0}, "claude-sonnet-4-6": {"rpm": 600.0}}


# -- throughput --------------------------------------------------------------------------------


async def test_requests_are_smoothed_to_the_configured_rate() -> None:
    vt = VirtualTime()
    gov = governor(vt, {SONNET: RateLimits(rpm=600)})  # 10/s, burst 1 s = 10
    log: list[tuple[str, float]] = []
    await vt.run(asyncio.gather(*(timed(vt, gov, log, f"r{i}") for i in range(100))))
    times = [t for _, t in log]
    assert times == sorted(times)
    for k, t in enumerate(times):
        assert t == pytest.approx(max(0.0, (k - 9) * 0.1), abs=1e-6)
    # in any window of length w at most burst + rate * w calls started
    for start in (0.0, 2.5, 5.0):
        assert sum(1 for t in times if start <= t <= start + 3.0) <= 10 + 10 * 3.0 + 1e-9
    # the dispatcher slept exactly until the next grant: no polling
    assert len(vt.sleeps) == 90


async def test_burst_setting_sizes_the_bucket() -> None:
    vt = VirtualTime()
    gov = governor(vt, {SONNET: RateLimits(rpm=600, burst_s=0.5)})
    log: list[tuple[str, float]] = []
    await vt.run(asyncio.gather(*(timed(vt, gov, log, f"r{i}") for i in range(20))))
    times = [t for _, t in log]
    assert times.count(0.0) == 5 and times[-1] == pytest.approx(1.5)


async def test_oversized_calls_go_when_the_bucket_is_full_and_leave_debt() -> None:
    vt = VirtualTime()
    gov = governor(vt, {SONNET: RateLimits(itpm=60_000)})  # 1000 tokens/s, capacity 1000
    log: list[tuple[str, float]] = []
    await vt.run(asyncio.gather(*(timed(vt, gov, log, f"r{i}", inp=5000) for i in range(5))))
    assert [t for _, t in log] == pytest.approx([0.0, 5.0, 10.0, 15.0, 20.0])  # 5000 tokens / 1000 per s


async def test_a_call_waits_for_every_bucket() -> None:
    vt = VirtualTime()
    gov = governor(vt, {SONNET: RateLimits(rpm=60, itpm=60_000, otpm=6_000)})
    log: list[tuple[str, float]] = []
    # requests: 1/s; input: 500 of 1000/s; output: 300 of 100/s -> output dominates after the burst
    await vt.run(asyncio.gather(*(timed(vt, gov, log, f"r{i}", inp=500, out=300) for i in range(4))))
    assert [t for _, t in log] == pytest.approx([0.0, 3.0, 6.0, 9.0])


async def test_model_classes_have_independent_pools() -> None:
    vt = VirtualTime()
    gov = governor(vt, {"claude-sonnet": RateLimits(rpm=60), "claude-opus": RateLimits(rpm=60)})
    log: list[tuple[str, float]] = []
    await vt.run(asyncio.gather(timed(vt, gov, log, "s1", model="claude-sonnet-4-6"),
                                timed(vt, gov, log, "s2", model="claude-sonnet-4-5"),
                                timed(vt, gov, log, "o1", model="claude-opus-4-6"),
                                timed(vt, gov, log, "h1", model="claude-haiku-4-5")))
    assert dict(log) == {"s1": 0.0, "s2": pytest.approx(1.0), "o1": 0.0, "h1": 0.0}


@settings(max_examples=50, deadline=None)
@given(calls=st.lists(st.tuples(st.floats(0, 3), st.integers(0, 4000), st.sampled_from(["high", "normal", "low"])),
                      min_size=1, max_size=15))
def test_no_window_ever_exceeds_burst_plus_rate(calls: list[tuple[float, int, str]]) -> None:
    """Property: tokens granted in any window <= capacity + rate * window (+ one oversized call's debt)."""
    rate, capacity = 1000.0, 1000.0  # itpm 60k, burst 1 s

    async def scenario() -> list[tuple[float, int]]:
        vt = VirtualTime()
        gov = governor(vt, {SONNET: RateLimits(itpm=60_000)})
        grants: list[tuple[float, int]] = []

        async def one(at: float, tokens: int, priority: Any) -> None:
            await vt.sleep(at)
            await gov.acquire(SONNET, input_tokens=tokens, output_tokens=0, priority=priority)
            grants.append((vt.now, tokens))

        await vt.run(asyncio.gather(*(one(*c) for c in calls)))
        return grants

    grants = sorted(asyncio.run(scenario()))
    assert len(grants) == len(calls)
    overshoot = max(0.0, max(tokens for _, tokens in grants) - capacity)
    for i, (t1, _) in enumerate(grants):
        for j in range(i, len(grants)):
            t2 = grants[j][0]
            taken = sum(tokens for _, tokens in grants[i:j + 1])
            assert taken <= capacity + rate * (t2 - t1) + overshoot + 1e-6


# -- ordering ----------------------------------------------------------------------------------


async def test_priorities_reorder_and_fifo_holds_within_a_priority() -> None:
    vt = VirtualTime()
    gov = governor(vt, {SONNET: RateLimits(rpm=60)})
    await gov.acquire(SONNET, input_tokens=0, output_tokens=0)  # drain the one-request bucket
    log: list[tuple[str, float]] = []
    order = [("low1", "low"), ("normal1", "normal"), ("high1", "high"), ("normal2", "normal"),
             ("low2", "low"), ("high2", "high")]
    await vt.run(asyncio.gather(*(timed(vt, gov, log, n, priority=p) for n, p in order)))
    assert [n for n, _ in log] == ["high1", "high2", "normal1", "normal2", "low1", "low2"]
    assert [t for _, t in log] == pytest.approx([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])


async def test_a_later_high_priority_call_overtakes_a_sleeping_head() -> None:
    vt = VirtualTime()
    gov = governor(vt, {SONNET: RateLimits(rpm=60)})
    await gov.acquire(SONNET, input_tokens=0, output_tokens=0)
    log: list[tuple[str, float]] = []
    normal = asyncio.ensure_future(timed(vt, gov, log, "normal"))
    await vt.advance(0.5)
    high = asyncio.ensure_future(timed(vt, gov, log, "high", priority="high"))
    await vt.run(asyncio.gather(normal, high))
    assert log == [("high", pytest.approx(1.0)), ("normal", pytest.approx(2.0))]


async def test_small_late_calls_do_not_starve_an_earlier_big_one() -> None:
    vt = VirtualTime()
    gov = governor(vt, {SONNET: RateLimits(itpm=60_000)})  # 1000/s, capacity 1000
    await gov.acquire(SONNET, input_tokens=1000, output_tokens=0)
    log: list[tuple[str, float]] = []
    big = asyncio.ensure_future(timed(vt, gov, log, "big", inp=5000))
    smalls = []
    for i in range(5):
        await vt.advance(0.1)
        smalls.append(asyncio.ensure_future(timed(vt, gov, log, f"small{i}", inp=10)))
    await vt.run(asyncio.gather(big, *smalls))
    assert log[0] == ("big", pytest.approx(1.0))  # waited for a full bucket despite the small ones
    assert [n for n, _ in log[1:]] == [f"small{i}" for i in range(5)]
    assert log[1][1] == pytest.approx(5.01)  # the debt of 4000 tokens had to be repaid first


async def test_on_wait_reports_waits_only() -> None:
    vt = VirtualTime()
    waits: list[tuple[str, float, str]] = []
    gov = governor(vt, {SONNET: RateLimits(rpm=60)}, on_wait=lambda m, s, p: waits.append((m, s, p)))
    first = await gov.acquire(SONNET, input_tokens=1, output_tokens=1)
    second = await vt.run(gov.acquire(SONNET, input_tokens=1, output_tokens=1, priority="low"))
    assert (first, second) == (0.0, pytest.approx(1.0))
    assert waits == [(SONNET, pytest.approx(1.0), "low")]


# -- cancellation ------------------------------------------------------------------------------


async def test_cancelling_the_head_lets_the_next_waiter_go_on_time() -> None:
    vt = VirtualTime()
    gov = governor(vt, {SONNET: RateLimits(rpm=60)})
    await gov.acquire(SONNET, input_tokens=0, output_tokens=0)
    log: list[tuple[str, float]] = []
    a = asyncio.ensure_future(timed(vt, gov, log, "a"))
    b = asyncio.ensure_future(timed(vt, gov, log, "b"))
    await vt.advance(0.5)
    a.cancel()
    await vt.run(b)
    assert a.cancelled()
    assert log == [("b", pytest.approx(1.0))]  # took a's slot, not the one after it
    assert gov.states()[SONNET]["waiting"] == 0


async def test_cancelling_every_waiter_leaves_no_queue_and_no_leak() -> None:
    vt = VirtualTime()
    gov = governor(vt, {SONNET: RateLimits(rpm=60)})
    await gov.acquire(SONNET, input_tokens=0, output_tokens=0)
    tasks = [asyncio.ensure_future(gov.acquire(SONNET, input_tokens=0, output_tokens=0)) for _ in range(5)]
    await vt.advance(0.2)
    for t in tasks:
        t.cancel()
    await vt.idle()
    assert all(t.cancelled() for t in tasks)
    assert gov.states()[SONNET]["waiting"] == 0
    await vt.advance(0.8)
    assert await gov.acquire(SONNET, input_tokens=0, output_tokens=0) == 0.0  # the refilled slot is intact


async def test_a_grant_whose_caller_was_cancelled_is_given_back() -> None:
    vt = VirtualTime()
    gov = governor(vt, {SONNET: RateLimits(rpm=60, itpm=60_000)})
    await gov.acquire(SONNET, input_tokens=1000, output_tokens=0)
    a = asyncio.ensure_future(gov.acquire(SONNET, input_tokens=1000, output_tokens=0))
    await vt.idle()
    assert gov.states()[SONNET]["waiting"] == 1
    vt._fire_next()  # t = 1.0: the dispatcher wakes and grants a ...
    for _ in range(60):  # step the loop only until the grant is made, not until a resumes
        if not gov.states()[SONNET]["waiting"]:
            break
        await asyncio.sleep(0)
    assert not a.done()
    a.cancel()  # ... but a is cancelled before it could use the grant
    await vt.idle()
    assert a.cancelled()
    assert vt.now == 1.0
    assert await gov.acquire(SONNET, input_tokens=1000, output_tokens=0) == 0.0  # capacity came back


async def test_a_failing_backend_fails_the_waiters_instead_of_hanging_them() -> None:
    class FlakyGovernor(RateGovernor):
        """Injects a shared-store outage on the dispatcher's second attempt."""

        attempts = 0

        async def _attempt(self, pool: Any, model: str, amounts: Any, *, queued: bool = False) -> float:
            self.attempts += 1
            if self.attempts == 2:
                raise StoreError("shared limiter unreachable")
            return await super()._attempt(pool, model, amounts, queued=queued)

    vt = VirtualTime()
    gov = FlakyGovernor({SONNET: RateLimits(rpm=60)}, clock=vt.clock, sleep=vt.sleep)
    await gov.acquire(SONNET, input_tokens=0, output_tokens=0)
    tasks = [asyncio.ensure_future(gov.acquire(SONNET, input_tokens=0, output_tokens=0)) for _ in range(3)]
    await vt.advance(1.0)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, StoreError) for r in results)
    assert gov.states()[SONNET]["waiting"] == 0
    assert await vt.run(gov.acquire(SONNET, input_tokens=0, output_tokens=0)) == pytest.approx(0.0)


# -- corrections -------------------------------------------------------------------------------


async def test_settle_gives_back_and_charges_the_difference() -> None:
    vt = VirtualTime()
    gov = governor(vt, {SONNET: RateLimits(itpm=60_000, otpm=60_000)})  # 1000/s each
    await gov.acquire(SONNET, input_tokens=1000, output_tokens=1000)
    gov.settle(SONNET, estimated_input=1000, actual_input=200, estimated_output=1000, actual_output=1000)
    assert await gov.acquire(SONNET, input_tokens=800, output_tokens=0) == 0.0  # 800 given back
    # under-estimate: charged after the fact, so the next caller waits for the debt
    gov.settle(SONNET, estimated_input=800, actual_input=3800, estimated_output=0, actual_output=0)
    waited = await vt.run(gov.acquire(SONNET, input_tokens=1000, output_tokens=0))
    assert waited == pytest.approx(4.0)  # level -3000 -> +1000 at 1000/s


async def test_settle_wakes_a_waiter_early() -> None:
    vt = VirtualTime()
    gov = governor(vt, {SONNET: RateLimits(itpm=60_000)})
    await gov.acquire(SONNET, input_tokens=1000, output_tokens=0)
    task = asyncio.ensure_future(gov.acquire(SONNET, input_tokens=900, output_tokens=0))
    await vt.advance(0.1)
    gov.settle(SONNET, estimated_input=1000, actual_input=100, estimated_output=0, actual_output=0)
    await vt.idle()
    assert task.done() and task.result() == pytest.approx(0.1)


async def test_headers_teach_unconfigured_limits_and_never_override_configured_ones() -> None:
    vt = VirtualTime()
    gov = governor(vt, {"claude-opus": RateLimits(rpm=600)})
    gov.observe_headers("claude-sonnet-4-6", {
        "Anthropic-RateLimit-Requests-Limit": "60", "anthropic-ratelimit-requests-remaining": "59",
        "anthropic-ratelimit-input-tokens-limit": "30000", "anthropic-ratelimit-input-tokens-remaining": "30000",
        "anthropic-ratelimit-output-tokens-limit": "not-a-number", "request-id": "req_1"})
    gov.observe_headers("claude-opus-4-6", {"anthropic-ratelimit-requests-limit": "50"})
    assert gov.limits() == {"claude-opus": {"rpm": 600.0}, "claude-sonnet": {"rpm": 60.0, "itpm": 30000.0}}
    # learned: the sonnet pool now smooths to 1 request/s
    assert await gov.acquire("claude-sonnet-4-5", input_tokens=10, output_tokens=0) == 0.0
    assert await vt.run(gov.acquire("claude-sonnet-4-6", input_tokens=10, output_tokens=0)) == pytest.approx(1.0)
    # a learned limit follows later headers
    gov.observe_headers("claude-sonnet-4-6", {"anthropic-ratelimit-requests-limit": "120"})
    assert gov.limits()["claude-sonnet"]["rpm"] == 120.0


async def test_headers_lower_the_level_when_the_server_has_less_left() -> None:
    vt = VirtualTime()
    gov = governor(vt, {SONNET: RateLimits(rpm=600, itpm=60_000)})
    gov.observe_headers(SONNET, {"anthropic-ratelimit-input-tokens-remaining": "5000",  # more than our 1000
                                 "anthropic-ratelimit-requests-remaining": "10"})
    assert gov.states()[SONNET]["itpm"]["level"] == 1000.0  # never raised
    gov.observe_headers(SONNET, {"anthropic-ratelimit-input-tokens-remaining": "0"})  # others spent it
    assert gov.states()[SONNET]["itpm"]["level"] == 0.0
    waited = await vt.run(gov.acquire(SONNET, input_tokens=500, output_tokens=0))
    assert waited == pytest.approx(0.5)


async def test_penalize_holds_the_whole_model_class() -> None:
    vt = VirtualTime()
    gov = governor(vt)  # nothing configured: the hold must still apply
    gov.penalize("claude-sonnet-4-6", 5.0)
    gov.penalize("claude-sonnet-4-5", 2.0)  # never shortens a hold
    log: list[tuple[str, float]] = []
    await vt.run(asyncio.gather(timed(vt, gov, log, "s45", model="claude-sonnet-4-5"),
                                timed(vt, gov, log, "opus", model="claude-opus-4-6"),
                                timed(vt, gov, log, "s46", model="claude-sonnet-4-6", priority="high")))
    assert log == [("opus", 0.0), ("s46", pytest.approx(5.0)), ("s45", pytest.approx(5.0))]
    assert await gov.acquire("claude-sonnet-4-6", input_tokens=1, output_tokens=1) == 0.0


async def test_penalize_applies_to_configured_pools_too() -> None:
    vt = VirtualTime()
    gov = governor(vt, {SONNET: RateLimits(rpm=6000)})
    gov.penalize("claude-sonnet-4-5", 3.0)
    assert await vt.run(gov.acquire(SONNET, input_tokens=1, output_tokens=1)) == pytest.approx(3.0)


async def test_set_limits_at_runtime_keeps_levels_within_the_new_capacity() -> None:
    vt = VirtualTime()
    gov = governor(vt, {SONNET: RateLimits(rpm=600)})
    gov.set_limits(SONNET, RateLimits(rpm=60))
    assert gov.states()[SONNET]["rpm"]["level"] == 1.0
    gov.set_limits(SONNET, RateLimits(itpm=60_000))
    assert set(gov.states()[SONNET]) == {"waiting", "itpm"}


# -- real time ---------------------------------------------------------------------------------


async def test_real_time_throughput_matches_the_rate() -> None:
    gov = RateGovernor({SONNET: RateLimits(rpm=1200, burst_s=0.25)})  # 20/s, burst 5
    start = time.monotonic()
    stamps: list[float] = []

    async def one() -> None:
        await gov.acquire(SONNET, input_tokens=100, output_tokens=100)
        stamps.append(time.monotonic() - start)

    await asyncio.gather(*(one() for _ in range(15)))
    elapsed = time.monotonic() - start
    assert 0.45 <= elapsed <= 1.0  # (15 - 5) / 20 = 0.5 s
    assert sum(1 for s in stamps if s < 0.05) == 5


# -- Redis -------------------------------------------------------------------------------------

needs_redis = pytest.mark.usefixtures("needs_redis")


def _prefix() -> str:
    return f"baton:test:rl:{uuid.uuid4().hex}:"


async def _pump(gov: RateGovernor, until: float, workers: int = 3) -> list[float]:
    """Acquire as fast as the governor allows until ``until`` (monotonic); return grant times."""
    grants: list[float] = []

    async def worker() -> None:
        while True:
            await gov.acquire(SONNET, input_tokens=10, output_tokens=10)
            now = time.monotonic()
            if now >= until:
                return
            grants.append(now)

    await asyncio.gather(*(worker() for _ in range(workers)))
    return grants


@pytest.mark.redis
@needs_redis
async def test_redis_two_governors_share_one_limit() -> None:
    prefix = _prefix()
    limits = {SONNET: RateLimits(rpm=1200, burst_s=0.25)}  # 20/s, burst 5
    a = RedisRateGovernor(REDIS_URL, limits, key_prefix=prefix)
    b = RedisRateGovernor(REDIS_URL, limits, key_prefix=prefix)
    try:
        until = time.monotonic() + 1.0
        ga, gb = await asyncio.gather(_pump(a, until), _pump(b, until))
    finally:
        await a.aclose()
        await b.aclose()
    total = len(ga) + len(gb)
    assert total <= 5 + 20 * 1.0 + 1  # burst + rate * duration (+1 for the boundary)
    assert total >= 18  # and the limit is actually used, not starved
    assert len(ga) >= 3 and len(gb) >= 3


_CHILD = textwrap.dedent("""
    import asyncio, sys, time
    from baton.runtime.ratelimit import RateLimits
    from baton.runtime.ratelimit_redis import RedisRateGovernor

    async def main(url, prefix, start_at):
        gov = RedisRateGovernor(url, {"claude-sonnet-4-6": RateLimits(rpm=1200, burst_s=0.25)}, key_prefix=prefix)
        await asyncio.sleep(max(0.0, start_at - time.time()))
        end = time.monotonic() + 1.0
        count = 0
        async def worker():
            nonlocal count
            while True:
                await gov.acquire("claude-sonnet-4-6", input_tokens=10, output_tokens=10)
                if time.monotonic() >= end:
                    return
                count += 1
        await asyncio.gather(*(worker() for _ in range(3)))
        await gov.aclose()
        print(count)

    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
""")


@pytest.mark.redis
@needs_redis
def test_redis_two_processes_share_one_limit() -> None:
    prefix = _prefix()
    start_at = time.time() + 3.0  # both children start pumping at the same wall-clock instant
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(["src", os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, REDIS_URL, prefix, str(start_at)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    counts = []
    for p in procs:
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
        counts.append(int(out.strip()))
    assert sum(counts) <= 5 + 20 * 1.0 + 1
    # Used, not starved: 25 is the most the limit allows; a CPU-starved machine wakes the
    # children late and loses a few slots, so the floor leaves room for that.
    assert sum(counts) >= 12 and min(counts) >= 2


@pytest.mark.redis
@needs_redis
async def test_redis_penalize_settle_and_headers_are_shared() -> None:
    prefix = _prefix()
    limits = {SONNET: RateLimits(itpm=60_000)}  # 1000/s, capacity 1000
    a = RedisRateGovernor(REDIS_URL, limits, key_prefix=prefix)
    b = RedisRateGovernor(REDIS_URL, limits, key_prefix=prefix)
    try:
        # settle: a over-estimated; b can use what a gave back at once
        assert await a.acquire(SONNET, input_tokens=1000, output_tokens=0) == 0.0
        a.settle(SONNET, estimated_input=1000, actual_input=100, estimated_output=0, actual_output=0)
        await a.flush()
        assert await b.acquire(SONNET, input_tokens=800, output_tokens=0) < 0.05
        # headers seen by a lower the shared level: b must wait for 500 tokens at 1000/s
        a.observe_headers(SONNET, {"anthropic-ratelimit-input-tokens-remaining": "0"})
        await a.flush()
        t0 = time.monotonic()
        await b.acquire(SONNET, input_tokens=500, output_tokens=0)
        assert 0.4 <= time.monotonic() - t0 <= 0.9
        # a 429 seen by a holds b's calls of the same class
        a.penalize("claude-sonnet-4-5", 0.4)
        await a.flush()
        t0 = time.monotonic()
        await b.acquire(SONNET, input_tokens=1, output_tokens=0)
        assert 0.3 <= time.monotonic() - t0 <= 0.9
    finally:
        await a.aclose()
        await b.aclose()


@pytest.mark.redis
@needs_redis
async def test_redis_priorities_hold_within_a_process() -> None:
    prefix = _prefix()
    # 2/s, capacity 1: the first grant is 0.5 s away, so all three callers are queued by then
    # even on a loaded machine (the priority order is among callers that wait together).
    gov = RedisRateGovernor(REDIS_URL, {SONNET: RateLimits(rpm=120, burst_s=0.5)}, key_prefix=prefix)
    order: list[str] = []
    try:
        await gov.acquire(SONNET, input_tokens=0, output_tokens=0)

        async def one(name: str, priority: Any) -> None:
            await gov.acquire(SONNET, input_tokens=0, output_tokens=0, priority=priority)
            order.append(name)

        await asyncio.gather(one("low", "low"), one("normal", "normal"), one("high", "high"))
    finally:
        await gov.aclose()
    assert order == ["high", "normal", "low"]


async def test_redis_unreachable_fails_waiters_or_fails_open() -> None:
    url = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    closed = RedisRateGovernor(url, {SONNET: RateLimits(rpm=60)})
    with pytest.raises(StoreError, match="rate-limit Redis"):
        await closed.acquire(SONNET, input_tokens=1, output_tokens=1)
    await closed.aclose()
    lenient = RedisRateGovernor(url, {SONNET: RateLimits(rpm=60)}, fail_open=True)
    assert await lenient.acquire(SONNET, input_tokens=1, output_tokens=1) >= 0.0
    await lenient.aclose()


def test_redis_url_password_is_redacted_in_errors() -> None:
    from baton.runtime.ratelimit_redis import _redact

    assert _redact("redis://user:s3cret@host:6379/0") == "redis://user:***@host:6379/0"
    assert _redact("redis://:s3cret@host/0") == "redis://***@host/0"
    assert _redact("redis://host/0") == "redis://host/0"
