"""The rate governor: one set of token buckets per model pool, shared by every agent in the process.

Anthropic limits requests, input tokens and output tokens per minute (RPM/ITPM/OTPM) per model
class, with token buckets that refill continuously and smooth bursts ("60 RPM may be enforced
as 1 request per second"). The governor mirrors that on the client side, so a wide fan-out
queues here instead of collecting 429s:

- Each limit is a bucket refilling at ``limit/60`` per second with a capacity of
  ``burst_s`` seconds of traffic. A call waits until every bucket it draws on has enough. A
  call larger than a bucket's capacity goes when the bucket is full and drives it negative
  (debt), so big calls are admitted eventually and the long-run rate still holds.
- Waiters are served high, then normal, then low priority, FIFO within a priority. Only the
  head waiter may take capacity (later small calls cannot starve an earlier big one). One
  dispatcher task per pool sleeps exactly until the head can go, and is woken early only when
  the queue head or the capacity changes: no polling, no thundering herd.
- ``settle`` corrects estimates with real usage, ``observe_headers`` learns limits and lowers
  levels from ``anthropic-ratelimit-*`` headers, ``penalize`` holds a whole model class after a
  429 until its retry-after has passed.

Not thread-safe: one event loop owns a governor. ``RedisRateGovernor`` (``ratelimit_redis``)
shares the buckets across processes.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from baton.errors import UsageError
from baton.models.base import model_family
from baton.runtime.protocols import Priority
from baton.settings import Settings, setting

logger = logging.getLogger(__name__)

_RANK: dict[str, int] = {"high": 0, "normal": 1, "low": 2}

DIMENSIONS = ("rpm", "itpm", "otpm")
"""Bucket names, in the order of a request's amounts (requests, input tokens, output tokens)."""
HEADER_NAMES = {"rpm": "requests", "itpm": "input-tokens", "otpm": "output-tokens"}
"""``anthropic-ratelimit-<name>-{limit,remaining,reset}`` for each bucket."""

DEFAULT_BURST_S = 1.0
_EPS_S = 1e-6  # a wait this short is no wait: avoids sleeping microseconds on float rounding

Amounts = tuple[float, float, float]
OnWait = Callable[[str, float, str], None]


@dataclass(frozen=True, slots=True)
class RateLimits(Settings):
    """Per-minute limits of one model (or model class); ``None`` = not limited."""

    section: ClassVar[str] = "rate_limits"
    what: ClassVar[str] = "rpm/itpm/otpm limits"

    rpm: float | None = setting(None, "number", exclusive_minimum=0)
    """Requests per minute."""
    itpm: float | None = setting(None, "number", exclusive_minimum=0)
    """Input tokens per minute (uncached input + cache writes; cache reads do not count)."""
    otpm: float | None = setting(None, "number", exclusive_minimum=0)
    """Output tokens per minute."""
    burst_s: float | None = setting(None, "number", exclusive_minimum=0)
    """Bucket capacity in seconds of traffic; ``None`` = the governor's default (1 s)."""

    def per_minute(self, dimension: str) -> float | None:
        value: float | None = getattr(self, dimension)
        return value


@dataclass(slots=True)
class _Bucket:
    rate: float
    """Units per second."""
    capacity: float
    level: float
    learned: bool = False
    """Limit taken from response headers rather than configured (later headers may change it)."""

    def set_limit(self, per_minute: float, burst_s: float, *, learned: bool) -> None:
        self.rate = per_minute / 60.0
        self.capacity = self.rate * burst_s
        self.level = min(self.level, self.capacity)
        self.learned = learned

    def wait_for(self, amount: float) -> float:
        if amount <= 0:
            return 0.0
        need = min(amount, self.capacity)  # oversized calls go when the bucket is full
        return 0.0 if self.level >= need else (need - self.level) / self.rate


@dataclass(order=True, slots=True)
class _Waiter:
    rank: int
    seq: int
    model: str = field(compare=False)
    amounts: Amounts = field(compare=False)
    future: asyncio.Future[None] = field(compare=False)


@dataclass(slots=True)
class _Pool:
    """The buckets of one limit pool plus its queue of waiting calls."""

    key: str
    updated: float
    buckets: dict[str, _Bucket] = field(default_factory=dict)
    queue: list[_Waiter] = field(default_factory=list)
    dispatcher: asyncio.Task[None] | None = None
    wake: asyncio.Event | None = None

    def refill(self, now: float) -> None:
        elapsed = max(0.0, now - self.updated)
        self.updated = max(self.updated, now)
        for bucket in self.buckets.values():
            bucket.level = min(bucket.capacity, bucket.level + elapsed * bucket.rate)

    def notify(self) -> None:
        if self.wake is not None:
            self.wake.set()


class RateGovernor:
    """Client-side RPM/ITPM/OTPM limiter for all model calls of one process."""

    def __init__(self, limits: Mapping[str, RateLimits | Mapping[str, Any]] | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 on_wait: OnWait | None = None, burst_s: float = DEFAULT_BURST_S) -> None:
        if not (isinstance(burst_s, int | float) and burst_s > 0):
            raise UsageError(f"burst_s must be a positive number of seconds, got {burst_s!r}")
        self._clock = clock
        self._sleep = sleep
        self._on_wait = on_wait
        self._burst_s = float(burst_s)
        self._limits: dict[str, RateLimits] = {}
        self._pools: dict[str, _Pool] = {}
        self._penalties: dict[str, float] = {}
        self._seq = itertools.count()
        for key, value in (limits or {}).items():
            self.set_limits(key, RateLimits.from_dict(value, where=f"rate_limits.{key}")
                            if not isinstance(value, RateLimits) else value)

    # -- configuration -------------------------------------------------------------------

    def set_limits(self, key: str, limits: RateLimits) -> None:
        """Limit an exact model id or a model class (``claude-sonnet``...); an exact id wins."""
        self._limits[key] = limits
        pool = self._pool(key)
        pool.refill(self._clock())
        burst = limits.burst_s or self._burst_s
        for dim in DIMENSIONS:
            per_minute = limits.per_minute(dim)
            bucket = pool.buckets.get(dim)
            if per_minute is None:
                if bucket is not None and not bucket.learned:
                    del pool.buckets[dim]
            elif bucket is None:
                rate = per_minute / 60.0
                pool.buckets[dim] = _Bucket(rate=rate, capacity=rate * burst, level=rate * burst)
            else:
                bucket.set_limit(per_minute, burst, learned=False)
        pool.notify()

    def limits(self) -> dict[str, dict[str, float]]:
        """The per-minute limits in force per pool, configured or learned from headers."""
        return {key: {dim: b.rate * 60.0 for dim, b in pool.buckets.items()}
                for key, pool in self._pools.items() if pool.buckets}

    def pool_key(self, model: str) -> str:
        """The pool a model draws on: its exact id if configured, else its model class."""
        return model if model in self._limits else model_family(model)

    # -- the hot path --------------------------------------------------------------------

    async def acquire(self, model: str, *, input_tokens: int, output_tokens: int,
                      priority: Priority = "normal") -> float:
        """Wait for capacity in every bucket of ``model``'s pool; return the seconds waited."""
        rank = _RANK.get(priority)
        if rank is None:
            raise UsageError(f"unknown rate-limit priority {priority!r}; expected high, normal or low")
        if input_tokens < 0 or output_tokens < 0:
            raise UsageError(f"token estimates must be >= 0, got input={input_tokens} output={output_tokens}")
        key = self.pool_key(model)
        pool = self._pools.get(key)
        start = self._clock()
        if (pool is None or (not pool.buckets and not pool.queue)) and self._penalty_wait(model, start) <= 0:
            return 0.0
        if pool is None:
            pool = self._pool(key)
        amounts: Amounts = (1.0, float(input_tokens), float(output_tokens))
        if not pool.queue and pool.dispatcher is None:
            took = self._take_now(pool, model, amounts, start)
            if took is None:  # the capacity lives elsewhere (Redis): one shielded round trip
                took = await self._attempt_shielded(pool, model, amounts)
            if took:
                return 0.0

        loop = asyncio.get_running_loop()
        waiter = _Waiter(rank, next(self._seq), model, amounts, loop.create_future())
        heapq.heappush(pool.queue, waiter)
        if pool.dispatcher is None:
            pool.dispatcher = loop.create_task(self._dispatch(pool), name=f"baton-ratelimit:{key}")
        elif pool.queue[0] is waiter:
            pool.notify()  # a new head: the dispatcher's sleep was computed for someone else
        try:
            await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                self._refund(pool, amounts)  # granted, but the caller is gone: give it back
            else:
                self._discard(pool, waiter)
            raise
        waited = max(0.0, self._clock() - start)
        if waited > 0 and self._on_wait is not None:
            try:
                self._on_wait(model, waited, priority)
            except Exception:  # an observer must never break the call path
                logger.exception("rate governor on_wait callback failed for %s", model)
        return waited

    def settle(self, model: str, *, estimated_input: int, actual_input: int, estimated_output: int,
               actual_output: int) -> None:
        """Give back (or charge) the difference between the estimate acquired and real usage."""
        pool = self._pools.get(self.pool_key(model))
        if pool is None or not pool.buckets:
            return
        deltas = {"itpm": float(estimated_input - actual_input), "otpm": float(estimated_output - actual_output)}
        self._adjust(pool, {dim: d for dim, d in deltas.items() if d and dim in pool.buckets})

    def observe_headers(self, model: str, headers: Mapping[str, str]) -> None:
        """Learn unconfigured limits and lower levels to what the server says is left."""
        lowered = {k.lower(): v for k, v in headers.items()}
        key = self.pool_key(model)
        pool = self._pools.get(key)
        lower: dict[str, float] = {}
        for dim, name in HEADER_NAMES.items():
            limit = _number(lowered.get(f"anthropic-ratelimit-{name}-limit"))
            remaining = _number(lowered.get(f"anthropic-ratelimit-{name}-remaining"))
            bucket = pool.buckets.get(dim) if pool is not None else None
            if limit is not None and limit > 0 and (bucket is None or bucket.learned):
                if pool is None:
                    pool = self._pool(key)
                pool.refill(self._clock())
                burst = (self._limits[key].burst_s if key in self._limits else None) or self._burst_s
                if bucket is None:
                    rate = limit / 60.0
                    bucket = pool.buckets[dim] = _Bucket(rate=rate, capacity=rate * burst, level=rate * burst,
                                                         learned=True)
                elif bucket.rate * 60.0 != limit:
                    bucket.set_limit(limit, burst, learned=True)
            if remaining is not None and remaining >= 0 and bucket is not None:
                lower[dim] = remaining
        if pool is not None and lower:
            self._lower(pool, lower)

    def penalize(self, model: str, retry_after_s: float) -> None:
        """After a 429: release nobody of this model class until ``retry_after_s`` has passed."""
        if not retry_after_s or retry_after_s <= 0 or not math.isfinite(retry_after_s):
            return
        cls = model_family(model)
        until = self._clock() + retry_after_s
        self._penalties[cls] = max(self._penalties.get(cls, until), until)

    def states(self) -> dict[str, dict[str, Any]]:
        """Bucket levels, capacities and queue lengths per pool (for metrics and ``baton show``)."""
        now = self._clock()
        out: dict[str, dict[str, Any]] = {}
        for key, pool in self._pools.items():
            pool.refill(now)
            out[key] = {"waiting": len(pool.queue),
                        **{dim: {"level": b.level, "capacity": b.capacity, "per_minute": b.rate * 60.0}
                           for dim, b in pool.buckets.items()}}
        return out

    async def aclose(self) -> None:
        """Release resources (none in-process; the Redis variant closes its connection)."""

    # -- internals (the Redis variant overrides the bucket operations) ---------------------

    def _pool(self, key: str) -> _Pool:
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _Pool(key=key, updated=self._clock())
        return pool

    def _penalty_wait(self, model: str, now: float) -> float:
        until = self._penalties.get(model_family(model))
        return 0.0 if until is None else max(0.0, until - now)

    def _local_wait(self, pool: _Pool, model: str, amounts: Amounts, now: float) -> float:
        pool.refill(now)
        wait = self._penalty_wait(model, now)
        for dim, amount in zip(DIMENSIONS, amounts, strict=True):
            bucket = pool.buckets.get(dim)
            if bucket is not None:
                wait = max(wait, bucket.wait_for(amount))
        return wait

    def _take(self, pool: _Pool, amounts: Amounts) -> None:
        for dim, amount in zip(DIMENSIONS, amounts, strict=True):
            bucket = pool.buckets.get(dim)
            if bucket is not None:
                bucket.level -= amount

    def _take_now(self, pool: _Pool, model: str, amounts: Amounts, now: float) -> bool | None:
        """Synchronous fast path: take the capacity if it is there now (None: ask ``_attempt``)."""
        if self._local_wait(pool, model, amounts, now) > _EPS_S:
            return False
        self._take(pool, amounts)
        return True

    async def _attempt(self, pool: _Pool, model: str, amounts: Amounts, *, queued: bool = False) -> float:
        """Take the capacity for ``amounts`` and return 0.0, or return the seconds to wait first.
        ``queued``: the caller is the head of the pool's queue (a shared store may reserve for it)."""
        wait = self._local_wait(pool, model, amounts, self._clock())
        if wait > _EPS_S:
            return wait
        self._take(pool, amounts)
        return 0.0

    async def _attempt_shielded(self, pool: _Pool, model: str, amounts: Amounts) -> bool:
        """``_attempt`` that cannot be cut in half: if the caller is cancelled meanwhile, a grant
        that still happens is given back."""
        attempt = asyncio.ensure_future(self._attempt(pool, model, amounts))
        try:
            wait = await asyncio.shield(attempt)
        except asyncio.CancelledError:
            def give_back(task: asyncio.Future[float]) -> None:
                if not task.cancelled() and task.exception() is None and task.result() <= _EPS_S:
                    self._refund(pool, amounts)

            attempt.add_done_callback(give_back)
            raise
        return wait <= _EPS_S

    def _adjust(self, pool: _Pool, deltas: Mapping[str, float]) -> None:
        pool.refill(self._clock())
        for dim, delta in deltas.items():
            bucket = pool.buckets.get(dim)
            if bucket is not None:
                bucket.level = min(bucket.capacity, bucket.level + delta)
        pool.notify()

    def _lower(self, pool: _Pool, levels: Mapping[str, float]) -> None:
        pool.refill(self._clock())
        for dim, level in levels.items():
            bucket = pool.buckets.get(dim)
            if bucket is not None:
                bucket.level = min(bucket.level, level)
        pool.notify()

    def _refund(self, pool: _Pool, amounts: Amounts) -> None:
        self._adjust(pool, {dim: amount for dim, amount in zip(DIMENSIONS, amounts, strict=True) if amount})

    def _discard(self, pool: _Pool, waiter: _Waiter) -> None:
        try:
            was_head = pool.queue[0] is waiter
            pool.queue.remove(waiter)
        except (IndexError, ValueError):
            return
        heapq.heapify(pool.queue)
        if was_head:
            pool.notify()

    async def _dispatch(self, pool: _Pool) -> None:
        """Release the pool's waiters in order, sleeping exactly until the head can go."""
        wake = pool.wake = asyncio.Event()
        try:
            while pool.queue:
                wake.clear()
                head = pool.queue[0]
                wait = await self._attempt(pool, head.model, head.amounts, queued=True)
                if head.future.done():  # cancelled while an asynchronous attempt ran
                    self._discard(pool, head)
                if wait > _EPS_S:
                    if not head.future.done():
                        await self._sleep_or_wake(wake, wait)
                    continue
                # The capacity is the pool's now. An asynchronous attempt (a shared store's
                # reservation) may have let a higher-priority waiter arrive: it goes first, and
                # the difference in amounts is settled with the store.
                winner = pool.queue[0] if pool.queue else None
                if winner is None:
                    self._refund(pool, head.amounts)
                    continue
                if winner is not head:
                    self._adjust(pool, {dim: took - needs for dim, took, needs
                                        in zip(DIMENSIONS, head.amounts, winner.amounts, strict=True)
                                        if took != needs})
                self._discard(pool, winner)
                winner.future.set_result(None)
        except asyncio.CancelledError:
            for waiter in pool.queue:
                waiter.future.cancel()
            pool.queue.clear()
            raise
        except Exception as exc:  # e.g. the shared store is down: fail the waiters, never hang them
            for waiter in pool.queue:
                if not waiter.future.done():
                    waiter.future.set_exception(exc)
            pool.queue.clear()
        finally:
            pool.dispatcher = None
            pool.wake = None

    async def _sleep_or_wake(self, wake: asyncio.Event, seconds: float) -> None:
        if wake.is_set():
            return
        sleeper = asyncio.ensure_future(self._sleep(seconds))
        waker = asyncio.ensure_future(wake.wait())
        try:
            await asyncio.wait((sleeper, waker), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
