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
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from baton.errors import StoreError, UsageError
from baton.stores import _codec
from baton.stores._sql import Dialect, Flow, Query, SqlStore, Statements, drive_async

if TYPE_CHECKING:
    import psycopg

T = TypeVar("T")

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

_STATEMENTS = Statements(Dialect(
    runs="baton_runs", steps="baton_steps", transitions="baton_transitions", state="baton_state", param="%s",
    json_in="::json", text_out="::text", same_as="IS NOT DISTINCT FROM", text_param="::text",
    newest_tiebreak="run_id", bytewise=' COLLATE "C"', lock_row=" FOR UPDATE"))


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


class PostgresStore(SqlStore):
    """``Store`` on PostgreSQL. ``steps_between`` answers "what did agent X do at 14:32"."""

    def __init__(self, url: str, *, connect_timeout: float = CONNECT_TIMEOUT_S) -> None:
        self._dsn = url
        self.url = _codec.redact_url(url)
        self.server = _server(url)
        self._connect_timeout = connect_timeout
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._schema_ready = False
        self._lock = asyncio.Lock()
        self._sql = _STATEMENTS
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

    async def _read(self, flow: Flow[T]) -> T:
        async with self._session() as conn:
            return await drive_async(conn, flow)

    async def _write(self, flow: Flow[T], *, atomic: bool = True) -> T:
        async with self._session() as conn:
            if not atomic:  # one statement: autocommit, no BEGIN/COMMIT round trips
                return await drive_async(conn, flow)
            async with conn.transaction():
                return await drive_async(conn, flow)

    def _upsert_steps(self, rows: list[tuple[Any, ...]]) -> Query:
        columns: list[Any] = [list(column) for column in zip(*rows, strict=True)]
        columns[-1] = "[" + ",".join(columns[-1]) + "]"
        return Query(_UPSERT_STEPS, columns, binary=True)
