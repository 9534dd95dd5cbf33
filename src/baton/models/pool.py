"""One HTTP connection pool per endpoint and event loop, shared by every model and run in the process.

Ten thousand runs in one process (what ``baton serve`` does) must not open ten thousand
sessions, nor fail because a connection is busy: a call that finds every connection in
use waits its turn in a FIFO queue, and its timeout starts only once it holds a
connection. The pool is keyed by everything that makes one session differ from another
(base URL, the headers it sends, the connection limit), so two adapters pointed at the
same endpoint with the same key share it, and a different key never sees another's
session.

Lifetime: each adapter takes a lease on first use in a loop and returns it in
``aclose``; the session closes with the last lease. A pool made on a loop that has
ended is abandoned (its connections belong to that loop) and a fresh one is opened.
"""

from __future__ import annotations

import asyncio
import hashlib
import weakref
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

__all__ = ["ConnectionPool", "PoolStats", "abandon_pool", "lease_pool", "pool_stats", "release_pool"]


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of one pool: what is in use and what waits (for benchmarks, metrics, tests)."""

    base_url: str
    limit: int
    in_use: int
    waiting: int
    peak_waiting: int
    queued_total: int
    """Calls that found every connection busy and waited, since the pool opened."""
    leases: int


class ConnectionPool:
    """An aiohttp session plus a FIFO of at most ``limit`` calls holding a connection."""

    def __init__(self, key: str, base_url: str, headers: Mapping[str, str], limit: int) -> None:
        self.key = key
        self.base_url = base_url
        self.limit = limit
        connector = aiohttp.TCPConnector(limit=limit, ttl_dns_cache=300)
        self.session = aiohttp.ClientSession(connector=connector, headers=dict(headers),
                                             skip_auto_headers=("accept-encoding",))
        self.in_use = 0
        self.peak_waiting = 0
        self.queued_total = 0
        self.leases = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    def slot(self) -> _Slot:
        """``async with pool.slot() as session``: hold one connection's worth of the pool for the
        block; waits (never fails) while all are busy."""
        return _Slot(self)

    async def _wait(self) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.queued_total += 1
        if len(self._waiters) > self.peak_waiting:
            self.peak_waiting = len(self._waiters)
        try:
            await waiter  # a releasing call hands its slot over (``in_use`` stays counted)
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # handed a slot, then cancelled: pass it on
                self._release()
            raise

    def _release(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():  # cancelled waiters are skipped here, not searched for when they leave
                waiter.set_result(None)
                return
        self.in_use -= 1

    def stats(self) -> PoolStats:
        return PoolStats(self.base_url, self.limit, self.in_use, self.waiting, self.peak_waiting,
                         self.queued_total, self.leases)

    async def close(self) -> None:
        if not self.session.closed:
            await self.session.close()


class _Slot:
    """The async context manager of ``ConnectionPool.slot`` (a class: cheaper than a generator per call)."""

    __slots__ = ("pool",)

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    async def __aenter__(self) -> aiohttp.ClientSession:
        pool = self.pool
        if pool.in_use < pool.limit and not pool._waiters:
            pool.in_use += 1
        else:
            await pool._wait()
        return pool.session

    async def __aexit__(self, *exc_info: object) -> None:
        self.pool._release()


_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, ConnectionPool]] = weakref.WeakKeyDictionary()


def pool_key(base_url: str, headers: Mapping[str, str], limit: int) -> str:
    """What makes two sessions different, hashed (the headers carry the credential)."""
    digest = hashlib.blake2b(digest_size=16)
    for part in (base_url, str(limit), *(f"{k.lower()}:{v}" for k, v in sorted(headers.items()))):
        digest.update(part.encode("utf-8", "surrogatepass") + b"\x00")
    return digest.hexdigest()


def lease_pool(base_url: str, headers: Mapping[str, str], limit: int) -> ConnectionPool:
    """The running loop's pool for this endpoint (opened on first use), with one more lease on it.

    Give the lease back with ``release_pool`` (adapters do it in ``aclose``)."""
    loop = asyncio.get_running_loop()
    key = pool_key(base_url, headers, limit)
    pools = _pools.setdefault(loop, {})
    pool = pools.get(key)
    if pool is None or pool.session.closed:
        pool = pools[key] = ConnectionPool(key, base_url, headers, limit)
    pool.leases += 1
    return pool


async def release_pool(pool: ConnectionPool) -> None:
    """Give back a lease; the last one closes the session (when its loop still runs)."""
    pool.leases -= 1
    if pool.leases > 0:
        return
    for loop, pools in list(_pools.items()):
        if pools.get(pool.key) is pool:
            del pools[pool.key]
            if not pools:
                del _pools[loop]
    await pool.close()


def abandon_pool(pool: ConnectionPool) -> None:
    """Drop a pool whose loop has ended: its connections cannot be awaited from another loop."""
    pool.leases -= 1
    if pool.leases <= 0 and not pool.session.closed:
        pool.session.detach()


def pool_stats() -> list[PoolStats]:
    """Every open pool of the running loop."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return []
    return [pool.stats() for pool in _pools.get(loop, {}).values()]
