"""Result cache: canonical keys, JSON-only values, TTL and corrupt entries on every backend."""

from __future__ import annotations

import logging
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from _services import REDIS_URL, require_redis
from baton.errors import StoreError, UsageError
from baton.runtime.cache import (
    MemoryResultCache,
    RedisResultCache,
    ResultCache,
    SQLiteResultCache,
    cache_key,
    open_cache,
)

BASE: dict[str, Any] = {
    "model": "claude-sonnet-4-6",
    "prompt_version": "writer@3",
    "messages": [{"role": "user", "content": [{"type": "text", "text": "Summarise Q3."}]}],
    "tools": [{"name": "search", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}],
    "output_schema": {"type": "object", "properties": {"summary": {"type": "string"}}},
    "temperature": 0,
    "max_tokens": 1024,
}

RESPONSE = {"content": [{"type": "text", "text": "Revenue grew 12%."}], "stop_reason": "end_turn",
            "usage": {"input_tokens": 120, "output_tokens": 9}, "model": "claude-sonnet-4-6"}


# -- keys ---------------------------------------------------------------------------------------


def test_key_is_a_sha256_hex_digest_and_stable() -> None:
    key = cache_key(**BASE)
    assert len(key) == 64 and int(key, 16) >= 0
    assert cache_key(**BASE) == key


def test_key_ignores_dict_order_and_int_float_temperature() -> None:
    reordered = {**BASE, "messages": [{"content": [{"text": "Summarise Q3.", "type": "text"}], "role": "user"}],
                 "output_schema": {"properties": {"summary": {"type": "string"}}, "type": "object"},
                 "temperature": 0.0}
    assert cache_key(**reordered) == cache_key(**BASE)


@pytest.mark.parametrize(("field", "value"), [
    ("model", "claude-opus-4-6"),
    ("prompt_version", "writer@4"),
    ("messages", [{"role": "user", "content": [{"type": "text", "text": "Summarise Q4."}]}]),
    ("tools", []),
    ("output_schema", None),
    ("temperature", 0.7),
    ("temperature", None),
    ("max_tokens", 2048),
])
def test_every_answer_shaping_part_changes_the_key(field: str, value: Any) -> None:
    assert cache_key(**{**BASE, field: value}) != cache_key(**BASE)


def test_key_parts_must_be_json() -> None:
    with pytest.raises(UsageError, match="JSON"):
        cache_key(**{**BASE, "messages": [{"role": "user", "content": object()}]})


# -- every backend ------------------------------------------------------------------------------


class TimeTravel:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[str, ResultCache]]:
    kind = request.param
    if kind == "memory":
        cache: ResultCache = MemoryResultCache()
    elif kind == "sqlite":
        cache = SQLiteResultCache(str(tmp_path / "sub" / "cache.db"))
    else:
        require_redis()
        cache = RedisResultCache(REDIS_URL, prefix=f"baton:test:cache:{uuid.uuid4().hex}:")
    yield kind, cache
    await cache.close()
    await cache.close()  # closing twice is safe


async def test_round_trip_and_miss(backend: tuple[str, ResultCache]) -> None:
    _, cache = backend
    assert isinstance(cache, ResultCache)
    key = cache_key(**BASE)
    assert await cache.get(key) is None
    await cache.put(key, RESPONSE)
    assert await cache.get(key) == RESPONSE
    await cache.put(key, {**RESPONSE, "stop_reason": "max_tokens"})  # overwrite
    got = await cache.get(key)
    assert got is not None and got["stop_reason"] == "max_tokens"


async def test_returned_values_are_copies(backend: tuple[str, ResultCache]) -> None:
    _, cache = backend
    await cache.put("k", {"content": [1, 2]})
    first = await cache.get("k")
    assert first is not None
    first["content"].append(3)
    assert await cache.get("k") == {"content": [1, 2]}


async def test_only_json_objects_are_stored(backend: tuple[str, ResultCache]) -> None:
    _, cache = backend
    with pytest.raises(UsageError, match="JSON"):
        await cache.put("k", {"when": object()})
    with pytest.raises(UsageError, match="JSON objects"):
        await cache.put("k", ["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="ttl_s"):
        await cache.put("k", {"a": 1}, ttl_s=0)
    assert await cache.get("k") is None


async def test_ttl_is_honoured_in_real_time(backend: tuple[str, ResultCache]) -> None:
    import asyncio

    _, cache = backend
    await cache.put("short", {"a": 1}, ttl_s=0.15)
    await cache.put("forever", {"b": 2})
    assert await cache.get("short") == {"a": 1}
    await asyncio.sleep(0.3)
    assert await cache.get("short") is None
    assert await cache.get("forever") == {"b": 2}


# -- TTL with a fake clock, corrupt entries -------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda clock, tmp: MemoryResultCache(clock=clock),
    lambda clock, tmp: SQLiteResultCache(str(tmp / "c.db"), clock=clock),
], ids=["memory", "sqlite"])
async def test_ttl_with_a_fake_clock(make: Callable[[TimeTravel, Path], ResultCache], tmp_path: Path) -> None:
    clock = TimeTravel()
    cache = make(clock, tmp_path)
    try:
        await cache.put("a", {"v": 1}, ttl_s=3600)
        clock.t += 3599
        assert await cache.get("a") == {"v": 1}
        clock.t += 1
        assert await cache.get("a") is None
        await cache.put("a", {"v": 2}, ttl_s=10)  # an expired key can be written again
        assert await cache.get("a") == {"v": 2}
    finally:
        await cache.close()


async def test_memory_cache_is_lru_bounded() -> None:
    cache = MemoryResultCache(max_entries=2)
    await cache.put("a", {"v": "a"})
    await cache.put("b", {"v": "b"})
    assert await cache.get("a") == {"v": "a"}  # a is now the most recently used
    await cache.put("c", {"v": "c"})
    assert len(cache) == 2
    assert await cache.get("b") is None and await cache.get("a") == {"v": "a"}


async def test_memory_corrupt_entry_is_a_miss_and_deleted(caplog: pytest.LogCaptureFixture) -> None:
    cache = MemoryResultCache()
    cache._entries["k" * 64] = (b'{"truncated": ', None)
    cache._entries["list"] = (b"[1, 2]", None)
    with caplog.at_level(logging.WARNING):
        assert await cache.get("k" * 64) is None
        assert await cache.get("list") is None
    assert len(cache) == 0
    assert "truncated" not in caplog.text  # the value never reaches the log


async def test_sqlite_corrupt_entry_is_a_miss_and_deleted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "cache.db"
    cache = SQLiteResultCache(str(path))
    await cache.put("good", {"ok": True})
    await cache.close()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO baton_result_cache (key, value, expires_at) VALUES (?, ?, NULL)",
                     ("bad", b"\x80\x04secret-pickle-bytes"))
        conn.execute("INSERT INTO baton_result_cache (key, value, expires_at) VALUES (?, ?, NULL)",
                     ("scalar", b"42"))
    cache = SQLiteResultCache(str(path))
    try:
        with caplog.at_level(logging.WARNING):
            assert await cache.get("bad") is None
            assert await cache.get("scalar") is None
        assert await cache.get("good") == {"ok": True}
    finally:
        await cache.close()
    with sqlite3.connect(path) as conn:
        keys = [r[0] for r in conn.execute("SELECT key FROM baton_result_cache ORDER BY key")]
    assert keys == ["good"]
    assert "secret-pickle-bytes" not in caplog.text and "corrupt" in caplog.text


async def test_sqlite_persists_across_instances_and_purges_expired_rows(tmp_path: Path) -> None:
    clock = TimeTravel()
    path = str(tmp_path / "c.db")
    cache = SQLiteResultCache(path, clock=clock)
    cache.PURGE_EVERY = 3  # type: ignore[misc]
    await cache.put("old1", {"v": 1}, ttl_s=1)
    await cache.put("keep", {"v": 2})
    clock.t += 5
    await cache.put("new", {"v": 3}, ttl_s=100)  # third put: purge expired rows
    await cache.close()
    with sqlite3.connect(path) as conn:
        assert sorted(r[0] for r in conn.execute("SELECT key FROM baton_result_cache")) == ["keep", "new"]
    again = SQLiteResultCache(path, clock=clock)
    try:
        assert await again.get("keep") == {"v": 2} and await again.get("new") == {"v": 3}
    finally:
        await again.close()


async def test_sqlite_errors_are_store_errors(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    cache = SQLiteResultCache(str(tmp_path / "dir.db"))
    with pytest.raises(StoreError, match="SQLite result cache"):
        await cache.get("k")
    await cache.close()


@pytest.mark.redis
@pytest.mark.usefixtures("needs_redis")
async def test_redis_corrupt_entry_and_native_expiry() -> None:
    import redis.asyncio as aioredis

    prefix = f"baton:test:cache:{uuid.uuid4().hex}:"
    cache = RedisResultCache(REDIS_URL, prefix=prefix)
    raw = aioredis.Redis.from_url(REDIS_URL)
    try:
        await raw.set(prefix + "bad", b"\x80not json")
        assert await cache.get("bad") is None
        assert await raw.exists(prefix + "bad") == 0
        await cache.put("ttl", {"v": 1}, ttl_s=30)
        assert 29_000 <= await raw.pttl(prefix + "ttl") <= 30_000
        await cache.put("forever", {"v": 1})
        assert await raw.pttl(prefix + "forever") == -1
        await raw.delete(prefix + "ttl", prefix + "forever")
    finally:
        await raw.aclose()
        await cache.close()


async def test_redis_unreachable_is_a_store_error() -> None:
    cache = RedisResultCache("redis://127.0.0.1:1/0")
    with pytest.raises(StoreError, match="Redis result cache"):
        await cache.get("k")
    await cache.close()


# -- open_cache -------------------------------------------------------------------------------


async def test_open_cache_by_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(open_cache("memory://"), MemoryResultCache)
    absolute = open_cache(f"sqlite:///{tmp_path}/abs.db")
    assert isinstance(absolute, SQLiteResultCache) and absolute.path == f"{tmp_path}/abs.db"
    monkeypatch.chdir(tmp_path)
    relative = open_cache("sqlite:///.baton/cache.db")
    assert isinstance(relative, SQLiteResultCache) and relative.path == ".baton/cache.db"
    await relative.put("k", {"v": 1})
    await relative.close()
    assert (tmp_path / ".baton" / "cache.db").exists()
    assert isinstance(open_cache("redis://127.0.0.1:6379/15"), RedisResultCache)
    for bad in ("nothing", "ftp://x", "sqlite:///"):
        with pytest.raises(UsageError):
            open_cache(bad)
