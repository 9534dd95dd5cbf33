"""What the SQL stores share: every statement and every read/write flow, written once.

SQLite runs statements on one worker thread (synchronously), PostgreSQL on an async
connection, so a flow is written as a generator that yields ``Query`` objects and
receives their results (``drive`` and ``drive_async`` run it on either driver). A
backend supplies a ``Dialect`` (table names, casts, the few phrases that differ), its
own connection plumbing and the two runners ``_read`` and ``_write``; ``SqlStore``
supplies the ``Store`` methods.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from baton.errors import RunNotFound, UsageError
from baton.stores import _codec
from baton.stores.base import Owner, RunRecord, StepRecord, Transition, displaced, fence_of, last_per_key

T = TypeVar("T")
Fetch = Literal["one", "all", "count", "none"]


@dataclass(frozen=True, slots=True)
class Query:
    """One statement of a flow and what the flow wants back."""

    sql: str
    params: Sequence[Any] = ()
    fetch: Fetch = "none"
    many: bool = False
    """``params`` is a list of rows (``executemany``)."""
    binary: bool = False
    """Send the parameters in binary (PostgreSQL array parameters)."""


Flow = Generator[Query, Any, T]
"""A store operation: yields queries, receives each one's result, returns the answer."""


def drive(conn: Any, flow: Flow[T]) -> T:
    """Run ``flow`` on a synchronous DB-API connection (sqlite3)."""
    result: Any = None
    try:
        while True:
            query = flow.send(result)
            if query.many:
                cur = conn.executemany(query.sql, query.params)
            else:
                cur = conn.execute(query.sql, query.params)
            result = _result(query.fetch, cur.fetchone() if query.fetch == "one" else
                             cur.fetchall() if query.fetch == "all" else None, cur.rowcount)
    except StopIteration as done:
        answer: T = done.value
        return answer


async def drive_async(conn: Any, flow: Flow[T]) -> T:
    """Run ``flow`` on an async psycopg connection."""
    result: Any = None
    try:
        while True:
            query = flow.send(result)
            cur = await conn.execute(query.sql, query.params, binary=query.binary)
            rows = (await cur.fetchone() if query.fetch == "one" else
                    await cur.fetchall() if query.fetch == "all" else None)
            result = _result(query.fetch, rows, cur.rowcount)
    except StopIteration as done:
        answer: T = done.value
        return answer


def _result(fetch: Fetch, rows: Any, rowcount: int) -> Any:
    return rowcount if fetch == "count" else rows


@dataclass(frozen=True, slots=True)
class Dialect:
    """The phrases in which the SQL stores differ; every statement is formatted with these."""

    runs: str
    steps: str
    transitions: str
    state: str
    param: str
    """The placeholder: ``?`` or ``%s``."""
    json_in: str = ""
    """Appended to a JSON parameter (``::json``)."""
    text_out: str = ""
    """Appended to a JSON column read back as text (``::text``)."""
    same_as: str = "IS"
    """Null-safe equality."""
    text_param: str = ""
    """Appended to a text parameter compared null-safely (``::text``)."""
    newest_tiebreak: str = "rowid"
    """The column that orders runs created in the same instant."""
    bytewise: str = ""
    """Collation that orders keys by their bytes."""
    lock_row: str = ""
    """Appended to a SELECT that must lock the row until the transaction ends."""


class Statements:
    """Every statement of the shared flows, in one dialect."""

    def __init__(self, d: Dialect) -> None:
        def sql(text: str) -> str:
            return text.format(runs=d.runs, steps=d.steps, transitions=d.transitions, state=d.state,
                               j=d.json_in, t=d.text_out, same_as=d.same_as, tp=d.text_param,
                               tiebreak=d.newest_tiebreak, bytewise=d.bytewise, lock=d.lock_row,
                               p="{p}").replace("{p}", d.param)

        self.insert_run = sql(
            "INSERT INTO {runs} (run_id, workflow, status, created_at, updated_at, owner_token, owner, data)"
            " VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}{j}, {p}{j}) ON CONFLICT (run_id) DO NOTHING")
        self.insert_transition = sql(
            "INSERT INTO {transitions} (run_id, status, at, owner_host, owner_pid, detail)"
            " VALUES ({p}, {p}, {p}, {p}, {p}, {p}{j})")
        self.get_run = sql("SELECT data{t}, owner{t} FROM {runs} WHERE run_id = {p}")
        self.list_runs = sql("SELECT run_id, data{t}, owner{t} FROM {runs}"
                             " ORDER BY created_at DESC, {tiebreak} DESC LIMIT {p}")
        self.update_run = sql(
            "UPDATE {runs} SET workflow = {p}, status = {p}, created_at = {p}, updated_at = {p},"
            " owner_token = {p}, owner = {p}{j}, data = {p}{j} WHERE run_id = {p}")
        self.claim_run = sql("UPDATE {runs} SET owner_token = {p}, owner = {p}{j}"
                             " WHERE run_id = {p} AND owner_token {same_as} {p}{tp}")
        self.run_exists = sql("SELECT 1 FROM {runs} WHERE run_id = {p}")
        self.owner_of = sql("SELECT owner_token FROM {runs} WHERE run_id = {p}{lock}")
        self.load_steps = sql("SELECT key, data{t} FROM {steps} WHERE run_id = {p} ORDER BY seq")
        # Running at some moment of [start, end]; a step that never ended (in flight at a
        # crash) counts as the instant it started.
        self.steps_between = sql(
            "SELECT run_id, key, data{t} FROM {steps}"
            " WHERE started_at <= {p} AND (CASE WHEN ended_at > 0 THEN ended_at ELSE started_at END) >= {p}")
        self.by_name = sql(" AND name = {p}")
        self.transitions = sql("SELECT status, at, detail{t} FROM {transitions} WHERE run_id = {p} ORDER BY seq")
        self.put_state = sql(
            "INSERT INTO {state} (namespace, key, value, expires_at) VALUES ({p}, {p}, {p}{j}, {p})"
            " ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at")
        self.get_state = sql("SELECT value{t} FROM {state} WHERE namespace = {p} AND key = {p}"
                             " AND (expires_at IS NULL OR expires_at >= {p})")
        self.list_state = sql("SELECT key FROM {state} WHERE namespace = {p} AND substr(key, 1, {p}) = {p}"
                              " AND (expires_at IS NULL OR expires_at >= {p}) ORDER BY key{bytewise}")
        self.delete_state = sql("DELETE FROM {state} WHERE namespace = {p} AND key = {p} RETURNING expires_at")
        self.purge_state = sql("DELETE FROM {state} WHERE expires_at IS NOT NULL AND expires_at < {p}")


class SqlStore:
    """The ``Store`` methods of a SQL backend, over its ``_read``/``_write`` runners.

    A subclass sets ``url`` and ``_sql`` and implements ``_read(flow)``, ``_write(flow,
    atomic=...)`` (a write transaction: on SQLite it takes the write lock first; on
    PostgreSQL ``atomic=False`` lets a single statement run without one) and
    ``_upsert_steps(rows)`` (the batch insert differs most between the two).
    """

    url: str
    _sql: Statements

    async def _read(self, flow: Flow[T]) -> T:
        raise NotImplementedError

    async def _write(self, flow: Flow[T], *, atomic: bool = True) -> T:
        raise NotImplementedError

    def _upsert_steps(self, rows: list[tuple[Any, ...]]) -> Query:
        raise NotImplementedError

    def _not_found(self, run_id: str) -> RunNotFound:
        return RunNotFound(f"no run with id {run_id!r} in {self.url}")

    def _decode_run(self, run_id: str, data: str, owner: str | None, listing: bool = False) -> RunRecord:
        return _codec.decode_run(data, owner, run_id=run_id, where=self.url, listing=listing)

    def _decode_steps(self, rows: list[tuple[str, str, str]]) -> list[StepRecord]:
        return [_codec.decode_step(data, run_id=run_id, key=key, where=self.url) for run_id, key, data in rows]

    # -- runs -------------------------------------------------------------------------

    async def create_run(self, run: RunRecord) -> None:
        row = _codec.run_row(run, self.url, {"created": True})
        now = time.time()

        def flow() -> Flow[None]:
            created = yield Query(self._sql.insert_run, (run.run_id, run.workflow, run.status, run.created_at,
                                                         run.updated_at, row.token, row.owner, row.data), "count")
            if created == 0:
                raise UsageError(f"run {run.run_id!r} already exists in {self.url}")
            yield Query(self._sql.insert_transition, (run.run_id, run.status, now, row.host, row.pid, row.detail))

        await self._write(flow())

    async def get_run(self, run_id: str) -> RunRecord:
        row = await self._read(_one(Query(self._sql.get_run, (run_id,), "one")))
        if row is None:
            raise self._not_found(run_id)
        return self._decode_run(run_id, row[0], row[1])

    async def list_runs(self, limit: int = 50) -> list[RunRecord]:
        rows = await self._read(_one(Query(self._sql.list_runs, (limit,), "all")))
        return [self._decode_run(run_id, data, owner, listing=True) for run_id, data, owner in rows]

    async def update_run(self, run: RunRecord, *, transition: str | None = None,
                         detail: dict[str, Any] | None = None, owner_token: str | None = None) -> None:
        run.updated_at = time.time()
        row = _codec.run_row(run, self.url, detail or {})

        def flow() -> Flow[None]:
            if owner_token is not None:
                yield from self._check_owner(run.run_id, owner_token)
            updated = yield Query(self._sql.update_run, (run.workflow, run.status, run.created_at, run.updated_at,
                                                         row.token, row.owner, row.data, run.run_id), "count")
            if updated == 0:
                raise self._not_found(run.run_id)
            if transition:
                yield Query(self._sql.insert_transition,
                            (run.run_id, transition, run.updated_at, row.host, row.pid, row.detail))

        await self._write(flow())

    async def claim_run(self, run_id: str, owner: Owner, *, expected_token: str | None) -> bool:
        owner_json = _codec.encode_owner(owner, run_id, self.url)

        def flow() -> Flow[bool]:
            # The compare-and-set is one statement: SQLite's write lock, PostgreSQL's row lock
            # (a racing UPDATE re-checks the token after the winner commits) make it atomic.
            claimed = yield Query(self._sql.claim_run, (owner.token, owner_json, run_id, expected_token), "count")
            if claimed == 1:
                return True
            if (yield Query(self._sql.run_exists, (run_id,), "one")) is None:
                raise self._not_found(run_id)
            return False

        return await self._write(flow(), atomic=False)

    # -- steps ------------------------------------------------------------------------

    def _check_owner(self, run_id: str, owner_token: str) -> Flow[None]:
        """Inside a write transaction (the row or the file is locked): does ``owner_token`` still own the run?"""
        row = yield Query(self._sql.owner_of, (run_id,), "one")
        if row is None:
            raise self._not_found(run_id)
        if row[0] != owner_token:
            raise displaced(run_id)

    async def put_steps(self, steps: list[StepRecord], *, owner_token: str | None = None) -> None:
        if not steps:
            return
        fence = fence_of(steps, owner_token)
        # Encoded here, before anything is written: the batch is a snapshot of the records
        # as they are now, and a bad value fails the whole batch.
        upsert = self._upsert_steps([_codec.step_row(s, self.url) for s in last_per_key(steps)])

        def flow() -> Flow[None]:
            if fence is not None:
                yield from self._check_owner(*fence)
            yield upsert

        await self._write(flow(), atomic=fence is not None)

    async def load_steps(self, run_id: str) -> list[StepRecord]:
        rows = await self._read(_one(Query(self._sql.load_steps, (run_id,), "all")))
        return self._decode_steps([(run_id, key, data) for key, data in rows])

    async def steps_between(self, start_ts: float, end_ts: float, name: str | None = None) -> list[StepRecord]:
        """Steps of every run that were running at some moment in ``[start_ts, end_ts]``
        (epoch seconds), optionally only those of agent/tool/step ``name``; by start time."""
        sql = self._sql.steps_between + (self._sql.by_name if name is not None else "") + " ORDER BY started_at, seq"
        params: tuple[Any, ...] = (end_ts, start_ts) + ((name,) if name is not None else ())
        return self._decode_steps(await self._read(_one(Query(sql, params, "all"))))

    async def transitions(self, run_id: str) -> list[Transition]:
        rows = await self._read(_one(Query(self._sql.transitions, (run_id,), "all")))
        return [Transition(run_id, status, at, _codec.decode_detail(detail, run_id=run_id, where=self.url))
                for status, at, detail in rows]

    # -- shared state -----------------------------------------------------------------

    async def put_state(self, namespace: str, key: str, value: Any, ttl_s: float | None = None) -> None:
        data = _codec.encode_state(value, what=_codec.state_what(namespace, key, self.url))
        expires_at = time.time() + ttl_s if ttl_s else None
        await self._write(_one(Query(self._sql.put_state, (namespace, key, data, expires_at))), atomic=False)

    async def get_state(self, namespace: str, key: str) -> Any:
        row = await self._read(_one(Query(self._sql.get_state, (namespace, key, time.time()), "one")))
        if row is None:
            return None
        return _codec.decode_state(row[0], what=_codec.state_what(namespace, key, self.url))

    async def list_state(self, namespace: str, prefix: str = "") -> list[str]:
        query = Query(self._sql.list_state, (namespace, len(prefix), prefix, time.time()), "all")
        return [r[0] for r in await self._read(_one(query))]

    async def delete_state(self, namespace: str, key: str) -> bool:
        now = time.time()
        row = await self._write(_one(Query(self._sql.delete_state, (namespace, key), "one")), atomic=False)
        return row is not None and (row[0] is None or row[0] >= now)

    async def purge_expired_state(self) -> int:
        """Delete expired state rows (reads already ignore them); returns how many."""
        purged = await self._write(_one(Query(self._sql.purge_state, (time.time(),), "count")), atomic=False)
        return int(purged)


def _one(query: Query) -> Flow[Any]:
    """A flow of one statement, answering its result."""
    result = yield query
    return result
