"""Exact-match result cache for model calls: same request, same answer, no second bill.

The key is the SHA-256 of the canonical JSON (sorted keys) of everything that shapes the
answer: model, prompt version, messages, tools, output schema, temperature and max_tokens.
Values are JSON objects (orjson), never pickles. An entry that fails to decode is treated as
a miss and deleted. Backends, chosen by URL with ``open_cache``: ``memory://`` (per process,
LRU-bounded), ``sqlite:///path`` (one file, a worker thread like the stores), ``redis://...``
(shared, native expiry).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar, runtime_checkable

import orjson

from baton.errors import StoreError, StoreKeyError, UsageError
from baton.stores import _seal
from baton.stores._files import prepare_private_file, tighten

logger = logging.getLogger(__name__)

KEY_VERSION = 1
"""Bumped when the key recipe changes, so old entries simply stop matching."""

T = TypeVar("T")


def cache_key(*, model: str, prompt_version: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
              output_schema: dict[str, Any] | None, temperature: float | None, max_tokens: int) -> str:
    """SHA-256 hex digest of the canonical JSON of the request's answer-shaping parts."""
    material = {
        "v": KEY_VERSION,
        "model": model,
        "prompt_version": prompt_version,
        "messages": messages,
        "tools": tools,
        "output_schema": output_schema,
        "temperature": None if temperature is None else float(temperature),  # 0 and 0.0 are one key
        "max_tokens": int(max_tokens),
    }
    try:
        blob = orjson.dumps(material, option=orjson.OPT_SORT_KEYS)
    except TypeError as exc:
        raise UsageError(f"cache key parts must be JSON-serializable: {exc}") from exc
    return hashlib.sha256(blob).hexdigest()


@runtime_checkable
class ResultCache(Protocol):
    """Where cached model results live. Values are JSON objects."""

    async def get(self, key: str) -> dict[str, Any] | None:
        """The stored value, or None when missing, expired or corrupt."""
        ...

    async def put(self, key: str, value: dict[str, Any], ttl_s: float | None = None) -> None:
        """Store ``value``; ``ttl_s=None`` keeps it until evicted."""
        ...

    async def close(self) -> None:
        """Release connections and threads. Safe to call twice."""
        ...


def _encode(value: dict[str, Any]) -> bytes:
    if not isinstance(value, dict):
        raise UsageError(f"cache values must be JSON objects, got {type(value).__name__}")
    box = _seal.cipher()  # with BATON_STORE_KEY set, cached answers are encrypted like the journal
    try:
        return orjson.dumps(value if box is None else _seal.seal(value, box))
    except TypeError as exc:
        raise UsageError(f"cache value is not JSON-serializable: {exc}") from exc


def _decode(blob: bytes | str | None) -> dict[str, Any] | None:
    """The value, or None when the stored bytes are not a JSON object."""
    if blob is None:
        return None
    try:
        value = orjson.loads(blob)
    except orjson.JSONDecodeError:
        return None
    if _seal.is_sealed(value):
        try:
            value = _seal.unseal(value, what="a result cache entry")
        except StoreKeyError:  # sealed with another key (or none set): a miss, overwritten on put
            return None
    return value if isinstance(value, dict) else None


def _check_ttl(ttl_s: float | None) -> None:
    if ttl_s is not None and not (isinstance(ttl_s, int | float) and ttl_s > 0):
        raise UsageError(f"cache ttl_s must be a positive number of seconds or None, got {ttl_s!r}")


def _log_corrupt(backend: str, key: str) -> None:
    # The key is a hash, so it is safe to log; the value may hold prompts and is never logged.
    logger.warning("%s result cache: dropped corrupt entry %s", backend, key[:16])


class MemoryResultCache:
    """A per-process cache, bounded to ``max_entries`` (least recently used goes first)."""

    def __init__(self, *, max_entries: int | None = 10_000, clock: Callable[[], float] = time.time) -> None:
        self._entries: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()
        self._max = max_entries
        self._clock = clock

    async def get(self, key: str) -> dict[str, Any] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        blob, expires = entry
        if expires is not None and expires <= self._clock():
            del self._entries[key]
            return None
        value = _decode(blob)
        if value is None:
            del self._entries[key]
            _log_corrupt("memory", key)
            return None
        self._entries.move_to_end(key)
        return value

    async def put(self, key: str, value: dict[str, Any], ttl_s: float | None = None) -> None:
        _check_ttl(ttl_s)
        # Stored encoded: JSON-only by construction, and callers cannot mutate a cached entry.
        self._entries[key] = (_encode(value), None if ttl_s is None else self._clock() + ttl_s)
        self._entries.move_to_end(key)
        while self._max is not None and len(self._entries) > self._max:
            self._entries.popitem(last=False)

    async def close(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS baton_result_cache (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    expires_at REAL
)
"""


class SQLiteResultCache:
    """A cache in one SQLite file; every query runs on one worker thread, off the event loop."""

    PURGE_EVERY = 256
    """Expired rows are deleted in bulk after this many puts (reads skip them meanwhile)."""

    def __init__(self, path: str, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._puts = 0

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="baton-cache-sqlite")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._with_conn, fn)
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite result cache {self.path!r} failed: {exc}") from exc

    def _with_conn(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:  # created on the worker thread, used only there
            if self.path != ":memory:":  # cached answers are stored content: 0600 file, 0700 folders
                prepare_private_file(os.path.abspath(self.path), "SQLite result cache")
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA busy_timeout=30000")
                conn.execute(_SQLITE_SCHEMA)
                if self.path != ":memory:":
                    tighten(os.path.abspath(self.path))
            except sqlite3.Error:
                conn.close()
                raise
            self._conn = conn
        return fn(self._conn)

    async def get(self, key: str) -> dict[str, Any] | None:
        now = self._clock()

        def read(conn: sqlite3.Connection) -> tuple[dict[str, Any] | None, bool]:
            row = conn.execute("SELECT value, expires_at FROM baton_result_cache WHERE key = ?", (key,)).fetchone()
            if row is None:
                return None, False
            blob, expires = row
            if expires is not None and expires <= now:
                conn.execute("DELETE FROM baton_result_cache WHERE key = ? AND expires_at <= ?", (key, now))
                return None, False
            value = _decode(blob)
            if value is None:
                conn.execute("DELETE FROM baton_result_cache WHERE key = ?", (key,))
                return None, True
            return value, False

        value, corrupt = await self._call(read)
        if corrupt:
            _log_corrupt("sqlite", key)
        return value

    async def put(self, key: str, value: dict[str, Any], ttl_s: float | None = None) -> None:
        _check_ttl(ttl_s)
        blob = _encode(value)
        now = self._clock()
        expires = None if ttl_s is None else now + ttl_s
        self._puts += 1
        purge = self._puts % self.PURGE_EVERY == 0

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO baton_result_cache (key, value, expires_at) VALUES (?, ?, ?) "
                         "ON CONFLICT(key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
                         (key, blob, expires))
            if purge:
                conn.execute("DELETE FROM baton_result_cache WHERE expires_at IS NOT NULL AND expires_at <= ?",
                             (now,))

        await self._call(write)

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return

        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(executor, shut)
        executor.shutdown(wait=True)


class RedisResultCache:
    """A cache shared through Redis; expiry is Redis's own (``SET ... PX``)."""

    def __init__(self, url: str, *, prefix: str = "baton:cache:") -> None:
        self.url = url
        self.prefix = prefix
        self._client: Any = None

    def _redis(self) -> Any:
        if self._client is None:
            try:
                import redis.asyncio as aioredis
            except ImportError as exc:  # pragma: no cover - depends on the install
                raise StoreError("the Redis result cache needs redis: pip install 'baton-agents[redis]'") from exc
            self._client = aioredis.Redis.from_url(self.url)
        return self._client

    async def _do(self, op: Callable[[Any], Any]) -> Any:
        from redis.exceptions import RedisError

        try:
            return await op(self._redis())
        except (RedisError, OSError) as exc:
            raise StoreError(f"Redis result cache failed: {type(exc).__name__}: {exc}") from exc

    async def get(self, key: str) -> dict[str, Any] | None:
        full = self.prefix + key
        blob = await self._do(lambda r: r.get(full))
        if blob is None:
            return None
        value = _decode(blob)
        if value is None:
            await self._do(lambda r: r.delete(full))
            _log_corrupt("redis", key)
        return value

    async def put(self, key: str, value: dict[str, Any], ttl_s: float | None = None) -> None:
        _check_ttl(ttl_s)
        blob = _encode(value)
        px = None if ttl_s is None else max(1, round(ttl_s * 1000))
        await self._do(lambda r: r.set(self.prefix + key, blob, px=px))

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


def open_cache(url: str) -> ResultCache:
    """``memory://``, ``sqlite:///relative/path`` or ``sqlite:////absolute/path``, ``redis://...``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise UsageError(f"malformed cache URL {url!r}: expected memory://, sqlite:///PATH or redis://...")
    if scheme == "memory":
        return MemoryResultCache()
    if scheme == "sqlite":
        path = rest[1:] if rest.startswith("/") else rest
        if not path:
            raise UsageError(f"cache URL {url!r} names no file: use sqlite:///PATH")
        return SQLiteResultCache(path)
    if scheme in ("redis", "rediss", "unix"):
        return RedisResultCache(url)
    raise UsageError(f"unknown cache URL scheme {scheme!r} in {url!r}: use memory://, sqlite:///PATH or redis://...")
