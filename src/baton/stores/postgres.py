"""PostgreSQL store (``postgresql://user@host:port/db``): the production journal and audit trail.

Tables are prefixed ``baton_`` and created on first open (under an advisory lock, so
several workers may start at once). Records are kept as ``json`` columns, which store
the exact text baton wrote: key order (what a replayed step feeds the next prompt) and
every string, ``\\u0000`` included, round-trip unchanged; cast to ``jsonb`` in ad-hoc
queries when you need its operators. The columns an operator filters on (status,
times, step name, owner) are real columns with indexes; ``docs/stores.md`` has the
audit queries.

One connection, guarded by an asyncio lock, carries every statement; a broken
connection is replaced on the next call. Needs ``pip install 'baton-agents[postgres]'``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from baton.errors import RunNotFound, StoreError, UsageError
from baton.stores import _codec
from baton.stores.base import Owner, RunRecord, StepRecord, Transition, displaced, fence_of, last_per_key

if TYPE_CHECKING:
    import psycopg

CONNECT_TIMEOUT_S = 10
_SCHEMA_LOCK_ID = 0x6261746F6E  # "baton": serializes concurrent CREATE TABLE IF NOT EXISTS

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS baton_runs (
        run_id      TEXT PRIMARY KEY,
        workflow    TEXT NOT NULL,
        status      TEXT NOT NULL,
        created_at  DOUBLE PRECISION NOT NULL,
        updated_at  DOUBLE PRECISION NOT NULL,
        owner_token TEXT,
        owner       JSON,
        data        JSON NOT NULL,
        created_time TIMESTAMPTZ GENERATED ALWAYS AS (to_timestamp(created_at)) STORED
    )""",
    "CREATE INDEX IF NOT EXISTS baton_runs_created_at ON baton_runs (created_at DESC)",
    """CREATE TABLE IF NOT EXISTS baton_steps (
        seq        BIGINT GENERATED ALWAYS AS IDENTITY,
        run_id     TEXT NOT NULL,
        key        TEXT NOT NULL,
        kind       TEXT NOT NULL,
        name       TEXT NOT NULL,
        status     TEXT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        ended_at   DOUBLE PRECISION NOT NULL,
        cost_usd   DOUBLE PRECISION NOT NULL,
        data       JSON NOT NULL,
        started_time TIMESTAMPTZ GENERATED ALWAYS AS (to_timestamp(started_at)) STORED,
        ended_time   TIMESTAMPTZ GENERATED ALWAYS AS (to_timestamp(NULLIF(ended_at, 0))) STORED,
        PRIMARY KEY (run_id, key)
    )""",
    "CREATE INDEX IF NOT EXISTS baton_steps_run_seq ON baton_steps (run_id, seq)",
    "CREATE INDEX IF NOT EXISTS baton_steps_started_at ON baton_steps (started_at)",
    "CREATE INDEX IF NOT EXISTS baton_steps_name_started_at ON baton_steps (name, started_at)",
    """CREATE TABLE IF NOT EXISTS baton_transitions (
        seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        run_id     TEXT NOT NULL,
        status     TEXT NOT NULL,
        at         DOUBLE PRECISION NOT NULL,
        owner_host TEXT,
        owner_pid  INTEGER,
        detail     JSON NOT NULL,
        at_time    TIMESTAMPTZ GENERATED ALWAYS AS (to_timestamp(at)) STORED
    )""",
    "CREATE INDEX IF NOT EXISTS baton_transitions_run ON baton_transitions (run_id, seq)",
    "CREATE INDEX IF NOT EXISTS baton_transitions_at ON baton_transitions (at)",
    """CREATE TABLE IF NOT EXISTS baton_state (
        namespace  TEXT NOT NULL,
        key        TEXT NOT NULL,
        value      JSON NOT NULL,
        expires_at DOUBLE PRECISION,
        PRIMARY KEY (namespace, key)
    )""",
]

# One statement for a whole batch, rows in batch order (WITH ORDINALITY) so the identity
# ``seq`` follows insertion order. Scalars travel as arrays; the records travel as one
# JSON array, whose elements a ``json`` column keeps byte for byte. The batch must not
# repeat a key (ON CONFLICT cannot touch a row twice): ``put_steps`` keeps the last one.
_UPSERT_STEPS = """
INSERT INTO baton_steps (run_id, key, kind, name, status, started_at, ended_at, cost_usd, data)
SELECT run_id, key, kind, name, status, started_at, ended_at, cost_usd, data
FROM ROWS FROM (unnest(%s::text[]), unnest(%s::text[]), unnest(%s::text[]), unnest(%s::text[]),
                unnest(%s::text[]), unnest(%s::float8[]), unnest(%s::float8[]), unnest(%s::float8[]),
                json_array_elements(%s::json))
     WITH ORDINALITY AS batch (run_id, key, kind, name, status, started_at, ended_at, cost_usd, data, ord)
ORDER BY ord
ON CONFLICT (run_id, key) DO UPDATE SET
    kind = excluded.kind, name = excluded.name, status = excluded.status,
    started_at = excluded.started_at, ended_at = excluded.ended_at,
    cost_usd = excluded.cost_usd, data = excluded.data
WHERE baton_steps.status <> 'completed'
"""

_INSERT_TRANSITION = """
INSERT INTO baton_transitions (run_id, status, at, owner_host, owner_pid, detail)
VALUES (%s, %s, %s, %s, %s, %s::json)
"""

# Running at some moment of [start, end]; a step that never ended counts as its start.
_STEPS_BETWEEN = """
SELECT run_id, key, data::text FROM baton_steps
WHERE started_at <= %s AND (CASE WHEN ended_at > 0 THEN ended_at ELSE started_at END) >= %s
"""


def _import_psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:
        raise UsageError("the PostgreSQL store needs psycopg: pip install 'baton-agents[postgres]'") from exc
    return psycopg


def _server(url: str) -> str:
    """``host:port/db`` for messages: never the user's password."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        port = parts.port or 5432
    except ValueError:
        return _codec.redact_url(url)
    return f"{host}:{port}{parts.path or ''}"


class PostgresStore:
    """``Store`` on PostgreSQL. ``steps_between`` answers "what did agent X do at 14:32"."""

    def __init__(self, url: str, *, connect_timeout: float = CONNECT_TIMEOUT_S) -> None:
        self._dsn = url
        self.url = _codec.redact_url(url)
        self.server = _server(url)
        self._connect_timeout = connect_timeout
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._schema_ready = False
        self._lock = asyncio.Lock()
        self._password = self._password_of(url)

    @staticmethod
    def _password_of(url: str) -> str | None:
        try:
            parts = urlsplit(url)
        except ValueError:
            return None
        in_query = [v for k, v in parse_qsl(parts.query) if k.lower() == "password"]
        return parts.password or (in_query[0] if in_query else None)

    def _scrub(self, text: str) -> str:
        from baton.masking import mask_urls

        text = text.replace(self._password, "***") if self._password else text
        return mask_urls(text)  # a URL too malformed to parse still has its userinfo masked

    # -- plumbing ---------------------------------------------------------------------

    async def open(self) -> None:
        async with self._session():
            return None

    async def close(self) -> None:
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                await conn.close()

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        pg = _import_psycopg()
        kwargs: dict[str, Any] = {"autocommit": True}
        try:
            pg.conninfo.conninfo_to_dict(self._dsn)
        except pg.ProgrammingError as exc:  # unparseable: bad usage, not an unreachable server
            raise UsageError(f"malformed PostgreSQL store URL {self.url}: {self._scrub(str(exc)).strip()}") from exc
        if "connect_timeout" not in self._dsn:
            kwargs["connect_timeout"] = max(1, int(self._connect_timeout))
        try:
            conn: psycopg.AsyncConnection[Any] = await pg.AsyncConnection.connect(self._dsn, **kwargs)
        except pg.Error as exc:
            raise StoreError(f"cannot connect to PostgreSQL at {self.server}: {self._scrub(str(exc)).strip()}") from exc
        if not self._schema_ready:
            try:
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_ID,))
                    for statement in _SCHEMA:
                        await conn.execute(statement)
            except pg.Error as exc:
                await conn.close()
                raise StoreError(f"cannot create baton tables in PostgreSQL at {self.server}: "
                                 f"{self._scrub(str(exc)).strip()}") from exc
            self._schema_ready = True
        return conn

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """The connection, exclusively, (re)connecting if needed; psycopg errors become ``StoreError``."""
        pg = _import_psycopg()
        async with self._lock:
            conn = self._conn
            if conn is None or conn.closed or conn.broken:
                conn = self._conn = await self._connect()
            try:
                yield conn
            except pg.Error as exc:
                raise StoreError(f"PostgreSQL store at {self.server}: {self._scrub(str(exc)).strip()}") from exc
            except BaseException:
                # Cancelled mid-statement: the connection's state is unknown, start afresh next time.
                if conn.info.transaction_status != pg.pq.TransactionStatus.IDLE:
                    self._conn = None
                    with contextlib.suppress(Exception):
                        await conn.close()
                raise

    def _decode_run(self, run_id: str, data: str, owner: str | None, listing: bool = False) -> RunRecord:
        return _codec.decode_run(data, owner, run_id=run_id, where=self.url, listing=listing)

    # -- runs -------------------------------------------------------------------------

    async def create_run(self, run: RunRecord) -> None:
        row = _codec.run_row(run, self.url, {"created": True})
        async with self._session() as conn, conn.transaction():
            cur = await conn.execute(
                "INSERT INTO baton_runs (run_id, workflow, status, created_at, updated_at, owner_token, owner, data)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s::json, %s::json) ON CONFLICT (run_id) DO NOTHING",
                (run.run_id, run.workflow, run.status, run.created_at, run.updated_at, row.token, row.owner, row.data))
            if cur.rowcount == 0:
                raise UsageError(f"run {run.run_id!r} already exists in {self.url}")
            await conn.execute(_INSERT_TRANSITION, (run.run_id, run.status, time.time(), row.host, row.pid, row.detail))

    async def get_run(self, run_id: str) -> RunRecord:
        async with self._session() as conn:
            cur = await conn.execute("SELECT data::text, owner::text FROM baton_runs WHERE run_id = %s", (run_id,))
            row = await cur.fetchone()
        if row is None:
            raise RunNotFound(f"no run with id {run_id!r} in {self.url}")
        return self._decode_run(run_id, row[0], row[1])

    async def list_runs(self, limit: int = 50) -> list[RunRecord]:
        async with self._session() as conn:
            cur = await conn.execute("SELECT run_id, data::text, owner::text FROM baton_runs"
                                     " ORDER BY created_at DESC, run_id DESC LIMIT %s", (limit,))
            rows = await cur.fetchall()
        return [self._decode_run(run_id, data, owner, listing=True) for run_id, data, owner in rows]

    async def update_run(self, run: RunRecord, *, transition: str | None = None,
                         detail: dict[str, Any] | None = None, owner_token: str | None = None) -> None:
        run.updated_at = time.time()
        row = _codec.run_row(run, self.url, detail or {})
        async with self._session() as conn, conn.transaction():
            if owner_token is not None:
                await self._check_owner(conn, run.run_id, owner_token)
            cur = await conn.execute(
                "UPDATE baton_runs SET workflow = %s, status = %s, created_at = %s, updated_at = %s,"
                " owner_token = %s, owner = %s::json, data = %s::json WHERE run_id = %s",
                (run.workflow, run.status, run.created_at, run.updated_at, row.token, row.owner, row.data, run.run_id))
            if cur.rowcount == 0:
                raise RunNotFound(f"no run with id {run.run_id!r} in {self.url}")
            if transition:
                await conn.execute(_INSERT_TRANSITION, (run.run_id, transition, run.updated_at, row.host, row.pid, row.detail))

    async def claim_run(self, run_id: str, owner: Owner, *, expected_token: str | None) -> bool:
        owner_json = _codec.encode_owner(owner, run_id, self.url)
        async with self._session() as conn:
            # One statement: the row lock makes a racing UPDATE re-check the token after
            # the winner commits, so exactly one claimant sees rowcount 1.
            cur = await conn.execute(
                "UPDATE baton_runs SET owner_token = %s, owner = %s::json"
                " WHERE run_id = %s AND owner_token IS NOT DISTINCT FROM %s::text",
                (owner.token, owner_json, run_id, expected_token))
            if cur.rowcount == 1:
                return True
            cur = await conn.execute("SELECT 1 FROM baton_runs WHERE run_id = %s", (run_id,))
            exists = await cur.fetchone()
        if exists is None:
            raise RunNotFound(f"no run with id {run_id!r} in {self.url}")
        return False

    # -- steps ------------------------------------------------------------------------

    async def _check_owner(self, conn: psycopg.AsyncConnection[Any], run_id: str, owner_token: str) -> None:
        """Inside a transaction: lock the run row (a takeover's UPDATE waits for this transaction
        to end) and check that ``owner_token`` still owns it."""
        cur = await conn.execute("SELECT owner_token FROM baton_runs WHERE run_id = %s FOR UPDATE", (run_id,))
        row = await cur.fetchone()
        if row is None:
            raise RunNotFound(f"no run with id {run_id!r} in {self.url}")
        if row[0] != owner_token:
            raise displaced(run_id)

    async def put_steps(self, steps: list[StepRecord], *, owner_token: str | None = None) -> None:
        if not steps:
            return
        fence = fence_of(steps, owner_token)
        rows = [_codec.step_row(s, self.url) for s in last_per_key(steps)]
        columns: list[Any] = [list(column) for column in zip(*rows, strict=True)]
        columns[-1] = "[" + ",".join(columns[-1]) + "]"
        async with self._session() as conn:
            if fence is None:
                await conn.execute(_UPSERT_STEPS, columns, binary=True)
                return
            async with conn.transaction():
                await self._check_owner(conn, *fence)
                await conn.execute(_UPSERT_STEPS, columns, binary=True)

    async def load_steps(self, run_id: str) -> list[StepRecord]:
        async with self._session() as conn:
            cur = await conn.execute("SELECT key, data::text FROM baton_steps WHERE run_id = %s ORDER BY seq",
                                     (run_id,))
            rows = await cur.fetchall()
        return [_codec.decode_step(data, run_id=run_id, key=key, where=self.url) for key, data in rows]

    async def steps_between(self, start_ts: float, end_ts: float, name: str | None = None) -> list[StepRecord]:
        """Steps of every run that were running at some moment in ``[start_ts, end_ts]``
        (epoch seconds), optionally only those of agent/tool/step ``name``; by start time."""
        sql = _STEPS_BETWEEN + (" AND name = %s" if name is not None else "") + " ORDER BY started_at, seq"
        params: tuple[Any, ...] = (end_ts, start_ts) + ((name,) if name is not None else ())
        async with self._session() as conn:
            cur = await conn.execute(sql, params)
            rows = await cur.fetchall()
        return [_codec.decode_step(data, run_id=run_id, key=key, where=self.url) for run_id, key, data in rows]

    async def transitions(self, run_id: str) -> list[Transition]:
        async with self._session() as conn:
            cur = await conn.execute("SELECT status, at, detail::text FROM baton_transitions"
                                     " WHERE run_id = %s ORDER BY seq", (run_id,))
            rows = await cur.fetchall()
        return [Transition(run_id, status, at, _codec.decode_detail(detail, run_id=run_id, where=self.url))
                for status, at, detail in rows]

    # -- shared state -----------------------------------------------------------------

    async def put_state(self, namespace: str, key: str, value: Any, ttl_s: float | None = None) -> None:
        data = _codec.encode_state(value, what=_codec.state_what(namespace, key, self.url))
        expires_at = time.time() + ttl_s if ttl_s else None
        async with self._session() as conn:
            await conn.execute(
                "INSERT INTO baton_state (namespace, key, value, expires_at) VALUES (%s, %s, %s::json, %s)"
                " ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
                (namespace, key, data, expires_at))

    async def get_state(self, namespace: str, key: str) -> Any:
        async with self._session() as conn:
            cur = await conn.execute(
                "SELECT value::text FROM baton_state WHERE namespace = %s AND key = %s"
                " AND (expires_at IS NULL OR expires_at >= %s)", (namespace, key, time.time()))
            row = await cur.fetchone()
        if row is None:
            return None
        return _codec.decode_state(row[0], what=_codec.state_what(namespace, key, self.url))

    async def list_state(self, namespace: str, prefix: str = "") -> list[str]:
        async with self._session() as conn:
            cur = await conn.execute(
                "SELECT key FROM baton_state WHERE namespace = %s AND left(key, %s) = %s"
                " AND (expires_at IS NULL OR expires_at >= %s) ORDER BY key COLLATE \"C\"",
                (namespace, len(prefix), prefix, time.time()))
            return [r[0] for r in await cur.fetchall()]

    async def delete_state(self, namespace: str, key: str) -> bool:
        now = time.time()
        async with self._session() as conn:
            cur = await conn.execute("DELETE FROM baton_state WHERE namespace = %s AND key = %s RETURNING expires_at",
                                     (namespace, key))
            row = await cur.fetchone()
        return row is not None and (row[0] is None or row[0] >= now)

    async def purge_expired_state(self) -> int:
        """Delete expired state rows (reads already ignore them); returns how many."""
        async with self._session() as conn:
            cur = await conn.execute("DELETE FROM baton_state WHERE expires_at IS NOT NULL AND expires_at < %s",
                                     (time.time(),))
            return int(cur.rowcount)
