"""A rate governor whose buckets live in Redis, shared by every process and machine using it.

Each bucket is a Redis hash ``{level, ts}``. One Lua script refills every bucket of a call by
the time elapsed on the Redis server's clock (``TIME``, one clock for all clients) and either
takes all the tokens or returns how long to wait; the client sleeps that long and tries again.
Scripts run atomically, so two processes can never both spend the same capacity.

What stays per process: priority order and FIFO (each process queues its own waiters and
only its head waiter asks Redis), and limits learned from headers. Across processes, a head
waiter that finds no capacity *reserves* it (the bucket goes into debt, GCRA-style) and sleeps
until its turn, so processes are served in the order they asked; polling instead would let
whichever process happens to ask a microsecond earlier win every time and starve the rest. Every process must be configured with the same
limits, since they travel with each script call. ``settle``, ``observe_headers`` and
``penalize`` update Redis in the background; ``aclose()`` waits for those updates.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

from baton.errors import StoreError
from baton.models.base import model_family
from baton.runtime.ratelimit import (
    _EPS_S,
    DEFAULT_BURST_S,
    DIMENSIONS,
    Amounts,
    OnWait,
    RateGovernor,
    RateLimits,
    _Pool,
)

logger = logging.getLogger(__name__)

# Every script starts with the server's clock; the bucket scripts share how a bucket refills
# since it was last written, and how it is written back (expiring once it would be full again).
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""
_BUCKETS = _NOW + """
local function refilled(key, rate, cap)
  local h = redis.call('HMGET', key, 'level', 'ts')
  if not h[1] then return cap end
  return math.min(cap, tonumber(h[1]) + math.max(0, now - tonumber(h[2])) * rate)
end
local function store(key, level, rate, cap)
  redis.call('HSET', key, 'level', string.format('%.6f', level), 'ts', string.format('%.6f', now))
  redis.call('PEXPIRE', key, string.format('%d', math.ceil(((cap - level) / rate + 1) * 1000)))
end
"""

# KEYS[1] = penalty key of the model class, KEYS[2..] = bucket hashes.
# ARGV = rate/s, capacity, amount per bucket, then eps, then reserve ("1"/"0"). Returns "0" when
# taken now, "R<secs>" when reserved for that many seconds from now, else the wait in seconds.
_ACQUIRE = _BUCKETS + """
local wait = 0
local held = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local penalized = held > now
if penalized then wait = held - now end
local levels = {}
for i = 2, #KEYS do
  local j = (i - 2) * 3
  local rate, cap, amt = tonumber(ARGV[j + 1]), tonumber(ARGV[j + 2]), tonumber(ARGV[j + 3])
  local level = refilled(KEYS[i], rate, cap)
  levels[i] = level
  if amt > 0 then
    local need = math.min(amt, cap)
    if level < need then wait = math.max(wait, (need - level) / rate) end
  end
end
local reserve = ARGV[#ARGV] == '1' and not penalized
if wait > tonumber(ARGV[#ARGV - 1]) and not reserve then return string.format('%.6f', wait) end
for i = 2, #KEYS do
  local j = (i - 2) * 3
  local rate, cap, amt = tonumber(ARGV[j + 1]), tonumber(ARGV[j + 2]), tonumber(ARGV[j + 3])
  store(KEYS[i], levels[i] - amt, rate, cap)
end
if wait > tonumber(ARGV[#ARGV - 1]) then return string.format('R%.6f', wait) end
return '0'
"""

# KEYS = bucket hashes; ARGV[1] = 'add' (settle/refund, capped at capacity) or 'lower'
# (server headers: never raise); then rate/s, capacity, value per bucket.
_ADJUST = _BUCKETS + """
for i = 1, #KEYS do
  local j = 1 + (i - 1) * 3
  local rate, cap, v = tonumber(ARGV[j + 1]), tonumber(ARGV[j + 2]), tonumber(ARGV[j + 3])
  local level = refilled(KEYS[i], rate, cap)
  if ARGV[1] == 'add' then level = math.min(cap, level + v) else level = math.min(level, v) end
  store(KEYS[i], level, rate, cap)
end
return 1
"""

# KEYS[1] = penalty key; ARGV[1] = seconds. Extends (never shortens) the hold on the class.
_PENALIZE = _NOW + """
local secs = tonumber(ARGV[1])
local held = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if now + secs > held then
  redis.call('SET', KEYS[1], string.format('%.6f', now + secs), 'PX', string.format('%d', math.ceil(secs * 1000) + 1000))
end
return 1
"""


class RedisRateGovernor(RateGovernor):
    """``RateGovernor`` with buckets and 429 holds in Redis (``pip install 'baton-agents[redis]'``)."""

    def __init__(self, url: str, limits: Mapping[str, RateLimits | Mapping[str, Any]] | None = None, *,
                 key_prefix: str = "baton:rl:", clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep, on_wait: OnWait | None = None,
                 burst_s: float = DEFAULT_BURST_S, fail_open: bool = False) -> None:
        """``fail_open=True`` lets calls through (with a warning) while Redis is unreachable;
        by default an unreachable Redis fails the waiting calls with ``StoreError``."""
        super().__init__(limits, clock=clock, sleep=sleep, on_wait=on_wait, burst_s=burst_s)
        self.url = url
        self.key_prefix = key_prefix
        self.fail_open = fail_open
        self._client: Any = None
        self._scripts: dict[str, Any] = {}
        self._background: set[asyncio.Task[None]] = set()

    # -- Redis plumbing ------------------------------------------------------------------

    def _script(self, name: str) -> Any:
        if self._client is None:
            try:
                import redis.asyncio as aioredis
            except ImportError as exc:  # pragma: no cover - depends on the install
                raise StoreError("the Redis rate governor needs redis: pip install 'baton-agents[redis]'") \
                    from exc
            self._client = aioredis.Redis.from_url(self.url)
            for key, source in (("acquire", _ACQUIRE), ("adjust", _ADJUST), ("penalize", _PENALIZE)):
                self._scripts[key] = self._client.register_script(source)
        return self._scripts[name]

    async def _run(self, name: str, keys: list[str], args: list[str]) -> Any:
        from redis.exceptions import RedisError

        try:
            return await self._script(name)(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise StoreError(f"rate-limit Redis at {_redact(self.url)} failed: {type(exc).__name__}: {exc}") \
                from exc

    def _bucket_key(self, pool: _Pool, dim: str) -> str:
        return f"{self.key_prefix}{pool.key}:{dim}"

    def _penalty_key(self, model: str) -> str:
        return f"{self.key_prefix}penalty:{model_family(model)}"

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            coro.close()
            logger.warning("rate governor: no running event loop, shared Redis state not updated")
            return
        task = loop.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _background_run(self, pool: _Pool | None, name: str, keys: list[str], args: list[str]) -> None:
        try:
            await self._run(name, keys, args)
        except StoreError as exc:
            logger.warning("rate governor: shared update %s lost: %s", name, exc)
        if pool is not None:
            pool.notify()

    # -- bucket operations on Redis ------------------------------------------------------

    def _take_now(self, pool: _Pool, model: str, amounts: Amounts, now: float) -> bool | None:
        if pool.buckets:
            return None  # capacity lives in Redis: ask the script
        return super()._take_now(pool, model, amounts, now)

    async def _attempt(self, pool: _Pool, model: str, amounts: Amounts, *, queued: bool = False) -> float:
        local = self._penalty_wait(model, self._clock())
        if local > _EPS_S:
            return local
        if not pool.buckets:
            return 0.0
        keys = [self._penalty_key(model)]
        args: list[str] = []
        for dim, amount in zip(DIMENSIONS, amounts, strict=True):
            bucket = pool.buckets.get(dim)
            if bucket is not None:
                keys.append(self._bucket_key(pool, dim))
                args += [repr(bucket.rate), repr(bucket.capacity), repr(amount)]
        args += [repr(_EPS_S), "1" if queued else "0"]  # only a queue's head reserves: keeps priorities
        try:
            reply = await self._run("acquire", keys, args)
        except StoreError:
            if not self.fail_open:
                raise
            logger.warning("rate governor: Redis unreachable, admitting a %s call unthrottled", pool.key)
            return 0.0
        text = reply.decode() if isinstance(reply, bytes) else str(reply)
        if text.startswith("R"):  # reserved: the capacity is ours once this wait is over
            await self._sleep(float(text[1:]))
            return 0.0
        wait = float(text)
        return wait if wait > _EPS_S else 0.0

    def _adjust(self, pool: _Pool, deltas: Mapping[str, float]) -> None:
        self._shared_update(pool, "add", deltas)

    def _lower(self, pool: _Pool, levels: Mapping[str, float]) -> None:
        self._shared_update(pool, "lower", levels)

    def _shared_update(self, pool: _Pool, mode: str, values: Mapping[str, float]) -> None:
        keys: list[str] = []
        args = [mode]
        for dim, value in values.items():
            bucket = pool.buckets.get(dim)
            if bucket is not None:
                keys.append(self._bucket_key(pool, dim))
                args += [repr(bucket.rate), repr(bucket.capacity), repr(float(value))]
        if keys:
            self._spawn(self._background_run(pool, "adjust", keys, args))

    def penalize(self, model: str, retry_after_s: float) -> None:
        super().penalize(model, retry_after_s)
        if retry_after_s and retry_after_s > 0 and math.isfinite(retry_after_s):
            self._spawn(self._background_run(None, "penalize", [self._penalty_key(model)], [repr(retry_after_s)]))

    async def flush(self) -> None:
        """Wait until background updates (settle, headers, penalize) have reached Redis."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    async def aclose(self) -> None:
        await self.flush()
        client, self._client = self._client, None
        self._scripts.clear()
        if client is not None:
            await client.aclose()


def _redact(url: str) -> str:
    """The URL without its password, for error messages."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at:
        return url
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user + ':***' if user else '***'}@{host}"
