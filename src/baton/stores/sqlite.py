"""SQLite store: the embedded default (``sqlite:///.baton/baton.db``).

One file, shareable by several processes: WAL journal, ``synchronous=NORMAL`` (a
committed transaction survives a crash of the process; only an OS crash or power cut
can lose the last commits), a busy timeout, and write transactions that take the write
lock up front (``BEGIN IMMEDIATE``) so two writers queue instead of failing.

The async API runs every statement on one dedicated worker thread that owns the
connection, so calls are serialized in order and never block the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from baton.errors import StoreError, UsageError
from baton.stores._files import prepare_private_file, tighten
from baton.stores._sql import Dialect, Flow, Query, SqlStore, Statements, drive

T = TypeVar("T")

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 30_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id      TEXT PRIMARY KEY,
    workflow    TEXT NOT NULL,
    status      TEXT NOT NULL,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    owner_token TEXT,
    owner       TEXT,
    data        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_created_at ON runs (created_at);
CREATE TABLE IF NOT EXISTS steps (
    seq        INTEGER PRIMARY KEY,
    run_id     TEXT NOT NULL,
    key        TEXT NOT NULL,
    kind       TEXT NOT NULL,
    name       TEXT NOT NULL,
    status     TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at   REAL NOT NULL,
    cost_usd   REAL NOT NULL,
    data       TEXT NOT NULL,
    UNIQUE (run_id, key)
);
CREATE INDEX IF NOT EXISTS steps_started_at ON steps (started_at);
CREATE INDEX IF NOT EXISTS steps_name_started_at ON steps (name, started_at);
CREATE TABLE IF NOT EXISTS transitions (
    seq        INTEGER PRIMARY KEY,
    run_id     TEXT NOT NULL,
    status     TEXT NOT NULL,
    at         REAL NOT NULL,
    owner_host TEXT,
    owner_pid  INTEGER,
    detail     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS transitions_run ON transitions (run_id, seq);
CREATE TABLE IF NOT EXISTS state (
    namespace  TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    expires_at REAL,
    PRIMARY KEY (namespace, key)
);
"""

_UPSERT_STEP = """
INSERT INTO steps (run_id, key, kind, name, status, started_at, ended_at, cost_usd, data)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (run_id, key) DO UPDATE SET
    kind = excluded.kind, name = excluded.name, status = excluded.status,
    started_at = excluded.started_at, ended_at = excluded.ended_at,
    cost_usd = excluded.cost_usd, data = excluded.data
WHERE steps.status != 'completed'
"""

_STATEMENTS = Statements(Dialect(runs="runs", steps="steps", transitions="transitions", state="state", param="?"))


def sqlite_path(url: str) -> str:
    """The file path of a ``sqlite:///`` URL: ``sqlite:///rel.db``, ``sqlite:////abs.db``,
    ``sqlite:///:memory:``."""
    scheme, sep, rest = url.partition("://")
    if scheme != "sqlite" or not sep:
        raise UsageError(f"not a SQLite store URL: {url!r} (expected sqlite:///PATH)")
    path = rest[1:] if rest.startswith("/") else rest
    if not path:
        raise UsageError(f"SQLite store URL {url!r} names no file: use sqlite:///PATH, e.g. sqlite:///.baton/baton.db")
    return path if path == ":memory:" else os.path.expanduser(path)


class SQLiteStore(SqlStore):
    """``Store`` on one SQLite file. ``steps_between`` answers audit questions."""

    def __init__(self, url: str = "sqlite:///.baton/baton.db") -> None:
        self.url = url
        self.path = sqlite_path(url)
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # touched only on the worker thread
        self._open_lock = asyncio.Lock()
        self._sql = _STATEMENTS

    # -- plumbing ---------------------------------------------------------------------

    async def open(self) -> None:
        async with self._open_lock:
            if self._executor is not None:
                return
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="baton-sqlite")
            try:
                await asyncio.get_running_loop().run_in_executor(executor, self._connect)
            except BaseException:
                executor.shutdown(wait=False)
                raise
            self._executor = executor

    async def close(self) -> None:
        async with self._open_lock:
            executor, self._executor = self._executor, None
            if executor is None:
                return
            try:
                await asyncio.get_running_loop().run_in_executor(executor, self._disconnect)
            finally:
                executor.shutdown(wait=False)

    def _connect(self) -> None:
        if self.path != ":memory:":
            prepare_private_file(self.path, "SQLite store")  # 0600 file, 0700 folders we create
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                   check_same_thread=True)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite store {self.path!r}: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            if self.path != ":memory:":
                tighten(self.path)  # -wal/-shm left by an older version with looser modes
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"SQLite store {self.path!r} has schema version {version}, newer than this "
                                 f"baton understands ({SCHEMA_VERSION}): upgrade baton")
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute("DELETE FROM state WHERE expires_at IS NOT NULL AND expires_at < ?", (time.time(),))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot open SQLite store {self.path!r}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` on the worker thread, opening the store on first use."""
        if self._executor is None:
            await self.open()
        executor = self._executor
        if executor is None:  # closed concurrently
            raise StoreError(f"SQLite store {self.path!r} is closed")
        return await asyncio.get_running_loop().run_in_executor(executor, functools.partial(self._guarded, fn, *args))

    def _guarded(self, fn: Callable[..., T], *args: Any) -> T:
        conn = self._conn
        if conn is None:
            raise StoreError(f"SQLite store {self.path!r} is closed")
        try:
            return fn(conn, *args)
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store {self.path!r}: {exc}") from exc

    @staticmethod
    def _write_tx(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
        """One write transaction that holds the write lock from its first statement."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    async def _read(self, flow: Flow[T]) -> T:
        return await self._run(drive, flow)

    async def _write(self, flow: Flow[T], *, atomic: bool = True) -> T:
        # Every write takes the write lock up front, a single statement too: two writers queue.
        return await self._run(self._write_tx, functools.partial(drive, flow=flow))

    def _upsert_steps(self, rows: list[tuple[Any, ...]]) -> Query:
        return Query(_UPSERT_STEP, rows, many=True)
