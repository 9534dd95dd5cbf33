"""The store backends: the conformance suite on each, then what only a real backend shows
(files, servers, several processes, kill -9)."""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import os
import re
import signal
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from _services import PG_URL, REDIS_URL, require_postgres, require_redis
from baton.errors import RunNotFound, StoreError, UsageError
from baton.stores import open_store, using_store
from baton.stores.base import Owner, RunRecord, StepRecord, Store
from baton.stores.memory import MemoryStore
from baton.stores.sqlite import SQLiteStore, sqlite_path
from baton.testing.store_conformance import CHECKS, StoreConformance, check_store

DOCS = Path(__file__).resolve().parent.parent / "docs" / "stores.md"


def _with_query(url: str, extra: str) -> str:
    return url + ("&" if "?" in url else "?") + extra


@pytest.fixture
def pg_url() -> Iterator[Callable[[], str]]:
    """Makes URLs of fresh PostgreSQL schemas (dropped afterwards): tests never share tables."""
    require_postgres()
    import psycopg

    schemas: list[str] = []

    def new_url() -> str:
        schema = f"baton_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        schemas.append(schema)
        return _with_query(PG_URL, f"options=-csearch_path%3D{schema}")

    yield new_url
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        for schema in schemas:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def redis_url() -> Iterator[Callable[[], str]]:
    """Makes URLs with fresh random key prefixes on db 15; their keys are deleted afterwards."""
    require_redis()
    import redis

    prefixes: list[str] = []

    def new_url() -> str:
        prefix = f"baton-test-{uuid.uuid4().hex[:12]}:"
        prefixes.append(prefix)
        return _with_query(REDIS_URL, f"prefix={prefix}")

    yield new_url
    client = redis.Redis.from_url(REDIS_URL)
    for prefix in prefixes:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    client.close()


def _sqlite_exec(path: str, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    with closing(sqlite3.connect(path)) as conn:
        rows = conn.execute(sql, params).fetchall()
        conn.commit()
        return rows


def _pg_exec(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def _redis_client(store: Store) -> Any:
    import redis

    return redis.Redis.from_url(REDIS_URL)


# -- the conformance suite on every backend ---------------------------------------------


class TestMemoryConformance(StoreConformance):
    @pytest.fixture
    def store_factory(self) -> Callable[[], Store]:
        return MemoryStore


class TestSQLiteConformance(StoreConformance):
    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> Callable[[], Store]:
        counter = itertools.count()
        return lambda: SQLiteStore(f"sqlite:///{tmp_path}/conformance-{next(counter)}.db")

    def reopen(self, store: SQLiteStore) -> Store:
        return SQLiteStore(store.url)

    def corrupt_run(self, store: SQLiteStore, run_id: str) -> None:
        _sqlite_exec(store.path, "UPDATE runs SET data = ? WHERE run_id = ?", ('{"run_id": "trunc', run_id))

    def corrupt_step(self, store: SQLiteStore, run_id: str, key: str) -> None:
        _sqlite_exec(store.path, "UPDATE steps SET data = 'not json' WHERE run_id = ? AND key = ?", (run_id, key))


@pytest.mark.postgres
class TestPostgresConformance(StoreConformance):
    @pytest.fixture
    def store_factory(self, pg_url: Callable[[], str]) -> Callable[[], Store]:
        from baton.stores.postgres import PostgresStore

        return lambda: PostgresStore(pg_url())

    def reopen(self, store: Any) -> Store:
        from baton.stores.postgres import PostgresStore

        return PostgresStore(store.url)

    def corrupt_run(self, store: Any, run_id: str) -> None:
        # json columns only hold valid JSON: corrupt means "valid JSON, not a run record".
        _pg_exec(store.url, "UPDATE baton_runs SET data = '[\"not\", \"a\", \"run\"]' WHERE run_id = %s", (run_id,))

    def corrupt_step(self, store: Any, run_id: str, key: str) -> None:
        _pg_exec(store.url, "UPDATE baton_steps SET data = '{\"key\": 1}' WHERE run_id = %s AND key = %s",
                 (run_id, key))


@pytest.mark.redis
class TestRedisConformance(StoreConformance):
    @pytest.fixture
    def store_factory(self, redis_url: Callable[[], str]) -> Callable[[], Store]:
        from baton.stores.redis import RedisStore

        return lambda: RedisStore(redis_url())

    def reopen(self, store: Any) -> Store:
        from baton.stores.redis import RedisStore

        return RedisStore(store.url)

    def corrupt_run(self, store: Any, run_id: str) -> None:
        _redis_client(store).hset(f"{store.prefix}run:{run_id}", "data", '{"run_id": "trunc')

    def corrupt_step(self, store: Any, run_id: str, key: str) -> None:
        _redis_client(store).hset(f"{store.prefix}steps:{run_id}", key, "not json")


async def test_check_store_function_runs_every_applicable_check(tmp_path: Path) -> None:
    counter = itertools.count()
    ran = await check_store(lambda: SQLiteStore(f"sqlite:///{tmp_path}/fn-{next(counter)}.db"),
                            reopen=lambda s: SQLiteStore(s.url))
    assert ran == [name for name in CHECKS if name not in ("corrupt_run", "corrupt_step")]


async def test_check_store_reports_the_failing_check() -> None:
    class ForgetfulStore(MemoryStore):
        """Loses the audit trail: the suite must say which check caught it."""

        async def transitions(self, run_id: str) -> list[Any]:
            return []

    with pytest.raises(AssertionError, match="'duplicate_run_id' failed: audit trail"):
        await check_store(ForgetfulStore)


# -- SQLite ------------------------------------------------------------------------------


def test_sqlite_url_forms(tmp_path: Path) -> None:
    assert sqlite_path("sqlite:///.baton/baton.db") == ".baton/baton.db"
    assert sqlite_path("sqlite:////var/lib/baton.db") == "/var/lib/baton.db"
    assert sqlite_path("sqlite:///:memory:") == ":memory:"
    assert sqlite_path("sqlite:///~/x.db") == str(Path.home() / "x.db")
    for bad in ("sqlite:///", "postgresql://x/y", "sqlite:"):
        with pytest.raises(UsageError, match="sqlite"):
            sqlite_path(bad)
    assert isinstance(open_store(f"sqlite:///{tmp_path}/a.db"), SQLiteStore)


async def test_sqlite_default_url_creates_the_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BATON_STORE", raising=False)
    store = open_store()
    assert isinstance(store, SQLiteStore)
    await store.create_run(RunRecord("r1", "yaml:w.yaml", {"q": 1}))  # opens on first use
    await store.close()
    assert (tmp_path / ".baton" / "baton.db").is_file()
    assert _sqlite_exec(str(tmp_path / ".baton" / "baton.db"), "SELECT run_id FROM runs") == [("r1",)]


async def test_sqlite_in_memory() -> None:
    store = SQLiteStore("sqlite:///:memory:")
    await store.open()
    await store.create_run(RunRecord("m1", "py:mod:fn", ["a"]))
    await store.put_steps([StepRecord("m1", "0", "tool", "t", "completed", result=1)])
    assert (await store.get_run("m1")).input == ["a"]
    assert [s.result for s in await store.load_steps("m1")] == [1]
    await store.close()


async def test_sqlite_unopenable_paths_name_the_path(tmp_path: Path) -> None:
    a_dir = tmp_path / "is-a-directory.db"
    a_dir.mkdir()
    with pytest.raises(StoreError, match=re.escape(str(a_dir))):
        await SQLiteStore(f"sqlite:///{a_dir}").open()
    a_file = tmp_path / "plain-file"
    a_file.write_text("x")
    under_file = a_file / "sub" / "baton.db"
    with pytest.raises(StoreError, match=re.escape(str(under_file))):
        await SQLiteStore(f"sqlite:///{under_file}").open()
    not_a_db = tmp_path / "garbage.db"
    not_a_db.write_bytes(b"this is not a database file" * 100)
    with pytest.raises(StoreError, match=re.escape(str(not_a_db))):
        await SQLiteStore(f"sqlite:///{not_a_db}").open()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores file permissions")
async def test_sqlite_permission_denied_names_the_path(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    path = locked / "baton.db"
    with pytest.raises(StoreError, match=re.escape(str(path))):
        await SQLiteStore(f"sqlite:///{path}").open()


async def test_sqlite_settings_and_worker_thread(tmp_path: Path) -> None:
    store = SQLiteStore(f"sqlite:///{tmp_path}/s.db")
    await store.open()

    def probe(conn: sqlite3.Connection) -> tuple[Any, ...]:
        return (conn.execute("PRAGMA journal_mode").fetchone()[0], conn.execute("PRAGMA synchronous").fetchone()[0],
                conn.execute("PRAGMA busy_timeout").fetchone()[0], threading.current_thread().name,
                threading.get_ident())

    first, second = await store._run(probe), await store._run(probe)
    assert first[:3] == ("wal", 1, 30_000)  # synchronous 1 = NORMAL
    assert first[3].startswith("baton-sqlite") and first[4] == second[4] != threading.get_ident()
    await store.close()


async def test_sqlite_rejects_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    _sqlite_exec(str(path), "PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="schema version 99"):
        await SQLiteStore(f"sqlite:///{path}").open()


async def test_sqlite_corrupt_audit_and_state_name_the_record(tmp_path: Path) -> None:
    store = SQLiteStore(f"sqlite:///{tmp_path}/c.db")
    await store.create_run(RunRecord("run-7", "w", None))
    await store.put_state("run-7", "plan", [1])
    _sqlite_exec(store.path, "UPDATE transitions SET detail = '{oops' WHERE run_id = 'run-7'")
    _sqlite_exec(store.path, "UPDATE state SET value = '[1,' WHERE namespace = 'run-7'")
    with pytest.raises(StoreError, match="run-7"):
        await store.transitions("run-7")
    with pytest.raises(StoreError, match="'plan'.*'run-7'"):
        await store.get_state("run-7", "plan")
    _sqlite_exec(store.path, "UPDATE runs SET owner = 'nope' WHERE run_id = 'run-7'")
    with pytest.raises(StoreError, match="run-7"):
        await store.get_run("run-7")
    await store.close()


async def test_sqlite_batch_of_1000_is_one_fast_transaction(tmp_path: Path) -> None:
    store = SQLiteStore(f"sqlite:///{tmp_path}/fast.db")
    await store.create_run(RunRecord("big", "w", None))
    steps = [StepRecord("big", f"{i:04d}", "tool", "search", "completed", result={"hits": ["x" * 100] * 3},
                        meta={"model": "m", "idempotency_key": f"big:{i}"}) for i in range(1000)]
    await store.put_steps(steps)  # warm up: page cache, statement cache
    started = time.perf_counter()
    await store.put_steps(steps)
    elapsed = time.perf_counter() - started
    changes = _sqlite_exec(store.path, "SELECT count(*), max(seq) - min(seq) FROM steps WHERE run_id = 'big'")
    await store.close()
    assert changes == [(1000, 999)]  # replaced in place: no new rows, order kept
    # Measured ~15 ms on a shared 2-core box; one commit per record would take seconds.
    assert elapsed < 1.0, f"1,000-record put_steps took {elapsed:.3f}s"


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_database_rolls_back_a_batch_that_fails_inside_the_transaction(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    store = await _open(backend, tmp_path, request)
    await store.create_run(RunRecord("rb", "w", None))
    await store.put_steps([StepRecord("rb", "0", "tool", "t", "completed", result="kept")])
    # kind=None encodes fine but violates NOT NULL on the second row: the database itself
    # must roll back the first row of the batch.
    bad = [StepRecord("rb", "1", "tool", "t", "completed"), StepRecord("rb", "2", None, "t", "completed")]  # type: ignore[arg-type]
    with pytest.raises(StoreError):
        await store.put_steps(bad)
    assert [s.key for s in await store.load_steps("rb")] == ["0"]
    await store.put_steps([StepRecord("rb", "1", "tool", "t", "completed")])  # the store still works
    assert [s.key for s in await store.load_steps("rb")] == ["0", "1"]
    await store.close()


# -- audit: steps_between and the transitions table (SQLite and PostgreSQL) ---------------


def _new_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A URL of fresh storage: a new file, PostgreSQL schema or Redis prefix."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path}/{uuid.uuid4().hex[:8]}.db"
    return str(request.getfixturevalue("pg_url" if backend == "postgres" else "redis_url")())


async def _open(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    store = open_store(_new_url(backend, tmp_path, request))
    await store.open()
    return store


def _audit_steps(t0: float) -> list[StepRecord]:
    s = functools.partial(StepRecord, kind="agent", status="completed")
    return [
        s("r1", "0/plan", name="planner", started_at=t0, ended_at=t0 + 10),
        s("r1", "1/write", name="writer", started_at=t0 + 5, ended_at=t0 + 30),
        s("r1", "2/search", kind="tool", name="search", started_at=t0 + 40, ended_at=t0 + 41),
        s("r1", "3/write", name="writer", status="started", started_at=t0 + 50),  # in flight at a crash
        s("r2", "0/write", name="writer", started_at=t0 + 20, ended_at=t0 + 25, meta={"model": "claude-x"}),
    ]


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_steps_between(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    store = await _open(backend, tmp_path, request)
    t0 = 1_748_961_120.0  # 2025-06-03 14:32:00 UTC
    await store.put_steps(_audit_steps(t0))

    def keys(steps: list[StepRecord]) -> list[tuple[str, str]]:
        return [(s.run_id, s.key) for s in steps]

    assert keys(await store.steps_between(t0 + 8, t0 + 12)) == [("r1", "0/plan"), ("r1", "1/write")]
    assert keys(await store.steps_between(t0, t0 + 3600, name="writer")) == [
        ("r1", "1/write"), ("r2", "0/write"), ("r1", "3/write")]
    assert keys(await store.steps_between(t0 + 41, t0 + 41)) == [("r1", "2/search")]  # bounds are inclusive
    assert keys(await store.steps_between(t0 + 51, t0 + 3600)) == []  # in-flight step = its start instant
    assert await store.steps_between(t0, t0 + 60, name="nobody") == []
    by_run = {s.run_id: s for s in await store.steps_between(t0 + 21, t0 + 22, name="writer")}
    assert sorted(by_run) == ["r1", "r2"]
    assert by_run["r2"].meta == {"model": "claude-x"} and by_run["r2"].ended_at == t0 + 25
    await store.close()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres),
                                     pytest.param("redis", marks=pytest.mark.redis)])
async def test_audit_rows_record_who(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    store = await _open(backend, tmp_path, request)
    run = RunRecord("audited", "w", None)
    await store.create_run(run)
    owner = Owner("worker-host-3", 4711, "tok", time.time() + 30)
    assert await store.claim_run("audited", owner, expected_token=None)
    run = await store.get_run("audited")
    run.status = "running"
    await store.update_run(run, transition="running", detail={"resumed": False})
    assert [(t.status, t.detail) for t in await store.transitions("audited")] == [
        ("pending", {"created": True}), ("running", {"resumed": False})]
    if backend == "sqlite":
        rows = _sqlite_exec(store.path, "SELECT status, owner_host, owner_pid FROM transitions ORDER BY seq")
    elif backend == "postgres":
        rows = _pg_exec(store.url, "SELECT status, owner_host, owner_pid FROM baton_transitions ORDER BY seq")
    else:
        raw = _redis_client(store).lrange(f"{store.prefix}transitions:audited", 0, -1)
        rows = [(d["status"], d["owner_host"], d["owner_pid"]) for d in map(json.loads, raw)]
    assert [tuple(r) for r in rows] == [("pending", None, None), ("running", "worker-host-3", 4711)]
    await store.close()


def _sql_blocks() -> list[str]:
    return re.findall(r"```sql\n(.*?)```", DOCS.read_text(), flags=re.S)


@pytest.mark.postgres
async def test_documented_postgres_queries_run(pg_url: Callable[[], str]) -> None:
    from baton.stores.postgres import PostgresStore

    url = pg_url()
    store = PostgresStore(url)
    t0 = datetime(2025, 6, 3, 14, 32, 10, tzinfo=UTC).timestamp()
    steps = _audit_steps(t0)
    steps.append(StepRecord("r3", "0/research", "agent", "researcher", "completed", result={"facts": ["a"]},
                            started_at=t0 + 5, ended_at=t0 + 90, cost_usd=0.02, meta={"model": "claude-y"}))
    steps.append(StepRecord("r3", "1/research", "agent", "researcher", "completed", started_at=t0 + 400,
                            ended_at=t0 + 401))
    await store.put_steps(steps)
    await store.create_run(RunRecord("r-20250603-0001", "w", None))
    await store.close()
    pg_blocks = [b for b in _sql_blocks() if "baton_" in b]
    assert len(pg_blocks) >= 3
    for block in pg_blocks:
        for statement in filter(str.strip, block.split(";")):
            _pg_exec(url, statement)  # every documented query is valid SQL on the real schema
    (audit,) = [b for b in pg_blocks if "baton:audit-query" in b]
    rows = _pg_exec(url, audit)
    assert [(r[0], r[1], r[6]) for r in rows] == [("r3", "0/research", "claude-y")]


async def test_documented_sqlite_query_runs(tmp_path: Path) -> None:
    store = SQLiteStore(f"sqlite:///{tmp_path}/docs.db")
    t0 = datetime(2025, 6, 3, 14, 32, 10, tzinfo=UTC).timestamp()
    await store.put_steps([StepRecord("r3", "0/research", "agent", "researcher", "completed",
                                      started_at=t0, ended_at=t0 + 5),
                           StepRecord("r3", "1/research", "agent", "researcher", "completed",
                                      started_at=t0 + 400, ended_at=t0 + 401)])
    await store.close()
    (block,) = [b for b in _sql_blocks() if "unixepoch" in b]
    rows = _sqlite_exec(store.path, block)
    assert rows == [("r3", "0/research", "completed", "2025-06-03 14:32:10")]


# -- PostgreSQL ---------------------------------------------------------------------------


@pytest.mark.postgres
async def test_postgres_unreachable_names_server_not_password() -> None:
    from baton.stores.postgres import PostgresStore

    store = PostgresStore("postgresql://baton:hunter2-secret@127.0.0.1:1/agents", connect_timeout=2)
    assert "hunter2-secret" not in store.url and "***" in store.url
    with pytest.raises(StoreError) as info:
        await store.open()
    message = str(info.value)
    assert "127.0.0.1:1/agents" in message and "hunter2-secret" not in message


@pytest.mark.postgres
async def test_postgres_reconnects_after_the_connection_dies(pg_url: Callable[[], str]) -> None:
    from baton.stores.postgres import PostgresStore

    app = f"baton-test-{uuid.uuid4().hex[:8]}"
    store = PostgresStore(_with_query(pg_url(), f"application_name={app}"))
    await store.create_run(RunRecord("survivor", "w", None))
    killed = _pg_exec(PG_URL, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                      (app,))
    assert killed == [(True,)]
    try:
        await store.get_run("survivor")
    except StoreError:
        pass  # the call that finds the dead connection may fail, clearly
    assert (await store.get_run("survivor")).run_id == "survivor"
    await store.close()


@pytest.mark.postgres
async def test_postgres_records_are_queryable_json(pg_url: Callable[[], str]) -> None:
    from baton.stores.postgres import PostgresStore

    url = pg_url()
    store = PostgresStore(url)
    await store.create_run(RunRecord("q", "w", {"topic": "naïve ✓", "n": 2}))
    await store.put_steps([StepRecord("q", "0", "model", "writer", "completed", meta={"model": "claude-z"})])
    await store.close()
    assert _pg_exec(url, "SELECT data->'input'->>'topic', (data::jsonb @> '{\"input\": {\"n\": 2}}') "
                         "FROM baton_runs WHERE run_id = 'q'") == [("naïve ✓", True)]
    assert _pg_exec(url, "SELECT data->'meta'->>'model' FROM baton_steps") == [("claude-z",)]


# -- Redis --------------------------------------------------------------------------------


@pytest.mark.redis
async def test_redis_unreachable_names_server_not_password() -> None:
    from baton.stores.redis import RedisStore

    store = RedisStore("redis://:hunter2-secret@127.0.0.1:1/3")
    assert "hunter2-secret" not in store.url
    with pytest.raises(StoreError) as info:
        await store.open()
    assert "127.0.0.1:1/3" in str(info.value) and "hunter2-secret" not in str(info.value)


@pytest.mark.redis
async def test_redis_prefix_key_layout_and_run_ttl(redis_url: Callable[[], str]) -> None:
    from baton.stores.redis import RedisStore

    url = redis_url()
    prefix = url.split("prefix=")[1]
    store = RedisStore(url, ttl_s=0.5)
    await store.create_run(RunRecord("short", "w", None))
    await store.put_steps([StepRecord("short", "0", "tool", "t", "completed")])
    await store.put_state("ns:with:colons", "k", 1)
    client = _redis_client(store)
    assert sorted(k.decode() for k in client.scan_iter(match=f"{prefix}*")) == sorted([
        f"{prefix}run:short", f"{prefix}runs", f"{prefix}steps:short", f"{prefix}steporder:short",
        f"{prefix}transitions:short", f"{prefix}done:short", f"{prefix}state:ns\\:with\\:colons:k"])
    for kind in ("run", "steps", "steporder", "transitions", "done"):
        assert 0 < client.pttl(f"{prefix}{kind}:short") <= 500
    assert client.pttl(f"{prefix}runs") == -1 and client.pttl(f"{prefix}state:ns\\:with\\:colons:k") == -1
    await asyncio.sleep(0.7)
    with pytest.raises(RunNotFound):
        await store.get_run("short")
    assert await store.list_runs() == []
    assert client.zcard(f"{prefix}runs") == 0  # the expired run left the index
    await store.close()
    assert RedisStore(_with_query(url, "ttl_s=7")).ttl_s == 7.0


@pytest.mark.redis
async def test_redis_without_ttl_keeps_keys(redis_url: Callable[[], str]) -> None:
    from baton.stores.redis import RedisStore

    store = RedisStore(redis_url())
    await store.create_run(RunRecord("kept", "w", None))
    assert _redis_client(store).pttl(f"{store.prefix}run:kept") == -1
    await store.close()


def test_urls_shown_in_errors_hide_passwords() -> None:
    from baton.stores._codec import redact_url

    assert redact_url("postgresql://u:p4ss@h:5432/db?sslmode=require") == "postgresql://u:***@h:5432/db?sslmode=require"
    assert redact_url("postgresql://u@h/db?password=zz&sslmode=require") == "postgresql://u@h/db?password=***&sslmode=require"
    assert redact_url("redis://:sec@h:1/0?prefix=a:") == "redis://:***@h:1/0?prefix=a:"
    assert redact_url("sqlite:///x.db") == "sqlite:///x.db"


def test_unknown_store_scheme_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="ftp"):
        open_store("ftp://x")


# -- several processes on one store ------------------------------------------------------

_CLAIMER = r"""
import asyncio, json, os, sys, time
from pathlib import Path
from baton.stores import open_store, using_store
from baton.stores.base import Owner, StepRecord

url, ids, token, ready, go = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], Path(sys.argv[4]), Path(sys.argv[5])

async def main():
    store = open_store(url)
    await store.open()
    ready.touch()
    while not go.exists():
        time.sleep(0.002)
    won = []
    for run_id in ids:
        owner = Owner("host", os.getpid(), token, time.time() + 60)
        if await store.claim_run(run_id, owner, expected_token=None):
            won.append(run_id)
        await store.put_steps([StepRecord(run_id, f"{token}/{i}", "tool", token, "completed") for i in range(3)])
    await store.close()
    print(json.dumps(won))

asyncio.run(main())
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres),
                                     pytest.param("redis", marks=pytest.mark.redis)])
async def test_two_processes_race_for_the_same_runs(backend: str, tmp_path: Path,
                                                    request: pytest.FixtureRequest) -> None:
    """Two OS processes claim the same 40 runs at the same moment: each run has exactly one
    winner, the stored owner is the winner, and both processes' writes all landed."""
    url = _new_url(backend, tmp_path, request)
    store = open_store(url)
    ids = [f"race-{i}" for i in range(40)]
    for run_id in ids:
        await store.create_run(RunRecord(run_id, "w", None))
    go = tmp_path / "go"
    procs = []
    for token in ("proc-a", "proc-b"):
        ready = tmp_path / f"ready-{token}"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _CLAIMER, url, json.dumps(ids), token, str(ready), str(go),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        procs.append((token, ready, proc))
    deadline = time.monotonic() + 60
    while not all(ready.exists() for _, ready, _ in procs):
        assert time.monotonic() < deadline, "worker processes did not start"
        for _, _, proc in procs:
            if proc.returncode is not None:
                _, err = await proc.communicate()
                raise AssertionError(f"worker exited early: {err.decode()}")
        await asyncio.sleep(0.01)
    go.touch()
    won: dict[str, list[str]] = {}
    for token, _, proc in procs:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        assert proc.returncode == 0, err.decode()
        won[token] = json.loads(out)
    assert set(won["proc-a"]).isdisjoint(won["proc-b"])
    assert sorted(won["proc-a"] + won["proc-b"]) == sorted(ids)
    for run_id in ids:
        winner = "proc-a" if run_id in won["proc-a"] else "proc-b"
        owner = (await store.get_run(run_id)).owner
        assert owner is not None and owner.token == winner
        assert sorted(s.key for s in await store.load_steps(run_id)) == sorted(
            f"{t}/{i}" for t in ("proc-a", "proc-b") for i in range(3))
    await store.close()


_BATCH_WRITER = r"""
import asyncio, sys
from baton.stores import open_store, using_store
from baton.stores.base import RunRecord, StepRecord

async def main():
    store = open_store(sys.argv[1])
    await store.open()
    await store.create_run(RunRecord("crash", "w", None))
    n = 0
    while True:
        await store.put_steps([StepRecord("crash", f"{n:05d}/{i:03d}", "tool", "t", "completed",
                                          result={"n": n, "pad": "x" * 300}) for i in range(200)])
        print(n, flush=True)
        n += 1

asyncio.run(main())
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres),
                                     pytest.param("redis", marks=pytest.mark.redis)])
async def test_kill_9_mid_batch_keeps_whole_batches(backend: str, tmp_path: Path,
                                                    request: pytest.FixtureRequest) -> None:
    """SIGKILL a process while it writes 200-record batches: every batch it reported is
    there, and every batch is either complete or absent."""
    url = _new_url(backend, tmp_path, request)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", _BATCH_WRITER, url,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    reported = -1
    while reported < 5:
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
        if not line:
            raise AssertionError(f"writer exited: {(await proc.stderr.read()).decode()}")
        reported = int(line)
    os.kill(proc.pid, signal.SIGKILL)
    await asyncio.wait_for(proc.wait(), timeout=30)
    assert proc.returncode == -signal.SIGKILL

    store = open_store(url)
    await store.open()
    steps = await store.load_steps("crash")
    await store.close()
    per_batch: dict[int, int] = {}
    for s in steps:
        per_batch[int(s.key.split("/")[0])] = per_batch.get(int(s.key.split("/")[0]), 0) + 1
    assert set(per_batch.values()) == {200}, "a batch was half written"
    assert sorted(per_batch) == list(range(len(per_batch))), "batches are not a prefix"
    assert len(per_batch) > reported, f"only {len(per_batch)} batches survive, {reported + 1} were reported"


async def test_using_store_closes_only_what_it_opened(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/borrowed.db"
    with pytest.raises(RunNotFound):
        async with using_store(url) as opened:  # a URL: opened here, closed however the block ends
            assert isinstance(opened, SQLiteStore) and opened._executor is not None
            await opened.get_run("missing")
    assert opened._executor is None
    mine = SQLiteStore(url)
    async with using_store(mine) as same:  # the caller's store: opened, left open for its owner
        assert same is mine
        await same.create_run(RunRecord(run_id="r1", workflow="py:m:f", input=None))
    try:
        assert mine._executor is not None
        assert (await mine.get_run("r1")).run_id == "r1"
    finally:
        await mine.close()
