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

from baton.errors import RunNotFound, StoreError, UsageError
from baton.stores import _codec
from baton.stores._files import prepare_private_file, tighten
from baton.stores.base import Owner, RunRecord, StepRecord, Transition, displaced, fence_of, last_per_key

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

# A step is "in" a window if it was running at some moment of it; a step that never
# ended (in flight at a crash) counts as the instant it started.
_STEPS_BETWEEN = """
SELECT run_id, key, data FROM steps
WHERE started_at <= ? AND (CASE WHEN ended_at > 0 THEN ended_at ELSE started_at END) >= ?
"""


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


class SQLiteStore:
    """``Store`` on one SQLite file. ``steps_between`` answers audit questions."""

    def __init__(self, url: str = "sqlite:///.baton/baton.db") -> None:
        self.url = url
        self.path = sqlite_path(url)
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # touched only on the worker thread
        self._open_lock = asyncio.Lock()

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
    def _write(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
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

    def _decode_run(self, run_id: str, data: str, owner: str | None, listing: bool = False) -> RunRecord:
        return _codec.decode_run(data, owner, run_id=run_id, where=self.url, listing=listing)

    # -- runs -------------------------------------------------------------------------

    async def create_run(self, run: RunRecord) -> None:
        row = _codec.run_row(run, self.url, {"created": True})
        now = time.time()

        def work(c: sqlite3.Connection) -> None:
            cur = c.execute(
                "INSERT INTO runs (run_id, workflow, status, created_at, updated_at, owner_token, owner, data)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id) DO NOTHING",
                (run.run_id, run.workflow, run.status, run.created_at, run.updated_at, row.token, row.owner, row.data))
            if cur.rowcount == 0:
                raise UsageError(f"run {run.run_id!r} already exists in {self.url}")
            c.execute("INSERT INTO transitions (run_id, status, at, owner_host, owner_pid, detail)"
                      " VALUES (?, ?, ?, ?, ?, ?)", (run.run_id, run.status, now, row.host, row.pid, row.detail))

        await self._run(self._write, work)

    async def get_run(self, run_id: str) -> RunRecord:
        def work(c: sqlite3.Connection) -> tuple[str, str | None] | None:
            row: tuple[str, str | None] | None = c.execute(
                "SELECT data, owner FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            return row

        row = await self._run(work)
        if row is None:
            raise RunNotFound(f"no run with id {run_id!r} in {self.url}")
        return self._decode_run(run_id, row[0], row[1])

    async def list_runs(self, limit: int = 50) -> list[RunRecord]:
        def work(c: sqlite3.Connection) -> list[tuple[str, str, str | None]]:
            return c.execute("SELECT run_id, data, owner FROM runs ORDER BY created_at DESC, rowid DESC LIMIT ?",
                             (limit,)).fetchall()

        return [self._decode_run(run_id, data, owner, listing=True) for run_id, data, owner in await self._run(work)]

    async def update_run(self, run: RunRecord, *, transition: str | None = None,
                         detail: dict[str, Any] | None = None, owner_token: str | None = None) -> None:
        run.updated_at = time.time()
        row = _codec.run_row(run, self.url, detail or {})

        def work(c: sqlite3.Connection) -> None:
            if owner_token is not None:
                self._check_owner(c, run.run_id, owner_token)
            cur = c.execute(
                "UPDATE runs SET workflow = ?, status = ?, created_at = ?, updated_at = ?, owner_token = ?,"
                " owner = ?, data = ? WHERE run_id = ?",
                (run.workflow, run.status, run.created_at, run.updated_at, row.token, row.owner, row.data, run.run_id))
            if cur.rowcount == 0:
                raise RunNotFound(f"no run with id {run.run_id!r} in {self.url}")
            if transition:
                c.execute("INSERT INTO transitions (run_id, status, at, owner_host, owner_pid, detail)"
                          " VALUES (?, ?, ?, ?, ?, ?)",
                          (run.run_id, transition, run.updated_at, row.host, row.pid, row.detail))

        await self._run(self._write, work)

    async def claim_run(self, run_id: str, owner: Owner, *, expected_token: str | None) -> bool:
        owner_json = _codec.encode_owner(owner, run_id, self.url)

        def work(c: sqlite3.Connection) -> bool:
            # The compare-and-set is one statement: SQLite's write lock makes it atomic
            # across every process sharing the file.
            cur = c.execute("UPDATE runs SET owner_token = ?, owner = ? WHERE run_id = ? AND owner_token IS ?",
                            (owner.token, owner_json, run_id, expected_token))
            if cur.rowcount == 1:
                return True
            if c.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
                raise RunNotFound(f"no run with id {run_id!r} in {self.url}")
            return False

        return await self._run(self._write, work)

    # -- steps ------------------------------------------------------------------------

    def _check_owner(self, c: sqlite3.Connection, run_id: str, owner_token: str) -> None:
        """Inside a write transaction (the write lock is held): is ``owner_token`` still the owner?"""
        row = c.execute("SELECT owner_token FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise RunNotFound(f"no run with id {run_id!r} in {self.url}")
        if row[0] != owner_token:
            raise displaced(run_id)

    async def put_steps(self, steps: list[StepRecord], *, owner_token: str | None = None) -> None:
        if not steps:
            return
        fence = fence_of(steps, owner_token)
        # Encode on the caller's thread: the batch is a snapshot of the records as they
        # are now, and a bad value fails the whole batch before anything is written.
        rows = [_codec.step_row(s, self.url) for s in last_per_key(steps)]

        def work(c: sqlite3.Connection) -> None:
            if fence is not None:
                self._check_owner(c, *fence)
            c.executemany(_UPSERT_STEP, rows)

        await self._run(self._write, work)

    async def load_steps(self, run_id: str) -> list[StepRecord]:
        def work(c: sqlite3.Connection) -> list[tuple[str, str]]:
            return c.execute("SELECT key, data FROM steps WHERE run_id = ? ORDER BY seq", (run_id,)).fetchall()

        return [_codec.decode_step(data, run_id=run_id, key=key, where=self.url)
                for key, data in await self._run(work)]

    async def steps_between(self, start_ts: float, end_ts: float, name: str | None = None) -> list[StepRecord]:
        """Steps of every run that were running at some moment in ``[start_ts, end_ts]``
        (epoch seconds), optionally only those of agent/tool/step ``name``; by start time."""
        sql = _STEPS_BETWEEN + (" AND name = ?" if name is not None else "") + " ORDER BY started_at, seq"
        params: tuple[Any, ...] = (end_ts, start_ts) + ((name,) if name is not None else ())

        def work(c: sqlite3.Connection) -> list[tuple[str, str, str]]:
            return c.execute(sql, params).fetchall()

        return [_codec.decode_step(data, run_id=run_id, key=key, where=self.url)
                for run_id, key, data in await self._run(work)]

    async def transitions(self, run_id: str) -> list[Transition]:
        def work(c: sqlite3.Connection) -> list[tuple[str, float, str]]:
            return c.execute("SELECT status, at, detail FROM transitions WHERE run_id = ? ORDER BY seq",
                             (run_id,)).fetchall()

        return [Transition(run_id, status, at, _codec.decode_detail(detail, run_id=run_id, where=self.url))
                for status, at, detail in await self._run(work)]

    # -- shared state -----------------------------------------------------------------

    async def put_state(self, namespace: str, key: str, value: Any, ttl_s: float | None = None) -> None:
        data = _codec.encode_state(value, what=_codec.state_what(namespace, key, self.url))
        expires_at = time.time() + ttl_s if ttl_s else None

        def work(c: sqlite3.Connection) -> None:
            c.execute("INSERT INTO state (namespace, key, value, expires_at) VALUES (?, ?, ?, ?)"
                      " ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value,"
                      " expires_at = excluded.expires_at", (namespace, key, data, expires_at))

        await self._run(self._write, work)

    async def get_state(self, namespace: str, key: str) -> Any:
        now = time.time()

        def work(c: sqlite3.Connection) -> str | None:
            row: tuple[str] | None = c.execute(
                "SELECT value FROM state WHERE namespace = ? AND key = ?"
                " AND (expires_at IS NULL OR expires_at >= ?)", (namespace, key, now)).fetchone()
            return row[0] if row else None

        data = await self._run(work)
        if data is None:
            return None
        return _codec.decode_state(data, what=_codec.state_what(namespace, key, self.url))

    async def list_state(self, namespace: str, prefix: str = "") -> list[str]:
        now = time.time()

        def work(c: sqlite3.Connection) -> list[str]:
            rows = c.execute("SELECT key FROM state WHERE namespace = ? AND substr(key, 1, ?) = ?"
                             " AND (expires_at IS NULL OR expires_at >= ?) ORDER BY key",
                             (namespace, len(prefix), prefix, now)).fetchall()
            return [r[0] for r in rows]

        return await self._run(work)

    async def delete_state(self, namespace: str, key: str) -> bool:
        now = time.time()

        def work(c: sqlite3.Connection) -> bool:
            cur = c.execute("DELETE FROM state WHERE namespace = ? AND key = ? RETURNING expires_at",
                            (namespace, key))
            row = cur.fetchone()
            return row is not None and (row[0] is None or row[0] >= now)

        return bool(await self._run(self._write, work))

    async def purge_expired_state(self) -> int:
        """Delete expired state rows (reads already ignore them); returns how many."""
        def work(c: sqlite3.Connection) -> int:
            return c.execute("DELETE FROM state WHERE expires_at IS NOT NULL AND expires_at < ?",
                             (time.time(),)).rowcount

        return await self._run(self._write, work)
