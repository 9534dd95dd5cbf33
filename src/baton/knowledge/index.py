"""Where passages live: beside the runs, in the same SQLite file or PostgreSQL database.

Both keep one row per file (its content hash, for incremental refresh) and one per
passage (text, heading, line range, optional embedding as float32 bytes). Keyword search
is BM25 over an FTS5 table on SQLite, and ``ts_rank`` over a weighted ``tsvector``
(heading A, text B) on PostgreSQL. Queries are reduced to plain words joined by OR, so
nothing a model types can break the query syntax.
"""

from __future__ import annotations

import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from baton.errors import StoreError, UsageError
from baton.knowledge.chunking import Chunk

_WORD = re.compile(r"[A-Za-z0-9]+")
STOPWORDS = frozenset(
    "a an and are as at be by can do does for from how i if in is it its of on or that the this to was what "
    "when where which who why will with you your".split())


def query_words(query: str) -> list[str]:
    words = [w.lower() for w in _WORD.findall(query)]
    kept = [w for w in words if w not in STOPWORDS] or words
    return list(dict.fromkeys(kept))[:32]


@dataclass(frozen=True, slots=True)
class StoredChunk:
    id: int
    path: str
    heading: str
    line_start: int
    line_end: int
    text: str


class Index(Protocol):
    def file_hashes(self, kb: str) -> dict[str, str]: ...
    def replace_file(self, kb: str, path: str, sha: str, chunks: list[Chunk],
                     vectors: list[bytes] | None) -> None: ...
    def remove_file(self, kb: str, path: str) -> None: ...
    def keyword(self, kb: str, query: str, k: int) -> list[tuple[int, float]]: ...
    def vectors(self, kb: str) -> tuple[list[int], list[bytes]]: ...
    def chunks(self, ids: list[int]) -> dict[int, StoredChunk]: ...
    def count(self, kb: str) -> int: ...
    def close(self) -> None: ...


def open_index(url: str) -> Index:
    scheme = url.partition("://")[0]
    if scheme == "sqlite":
        from baton.stores.sqlite import sqlite_path

        return SqliteIndex(sqlite_path(url))
    if scheme == "memory":
        return SqliteIndex(":memory:")
    if scheme in ("postgresql", "postgres"):
        return PostgresIndex(url)
    raise UsageError(f"knowledge indexes live in sqlite:///PATH or postgresql://... stores, not {scheme}://")


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS baton_kb_files (kb TEXT NOT NULL, path TEXT NOT NULL, sha256 TEXT NOT NULL,
    PRIMARY KEY (kb, path));
CREATE TABLE IF NOT EXISTS baton_kb_chunks (id INTEGER PRIMARY KEY, kb TEXT NOT NULL, path TEXT NOT NULL,
    ord INTEGER NOT NULL, heading TEXT NOT NULL, line_start INTEGER NOT NULL, line_end INTEGER NOT NULL,
    text TEXT NOT NULL, vector BLOB);
CREATE INDEX IF NOT EXISTS baton_kb_chunks_file ON baton_kb_chunks (kb, path);
CREATE VIRTUAL TABLE IF NOT EXISTS baton_kb_fts USING fts5(heading, text, kb UNINDEXED,
    tokenize = 'porter unicode61');
"""


class SqliteIndex:
    def __init__(self, path: str) -> None:
        try:
            if path != ":memory:" and not Path(path).exists():
                # Created as the store would be: private to its owner (the index holds document text).
                Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        except OSError as exc:
            raise StoreError(f"cannot create the knowledge index {path!r}: {exc.strerror}") from exc
        try:
            self.conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
            self.conn.execute("PRAGMA busy_timeout = 30000")
            if path != ":memory:":
                self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.executescript(_SQLITE_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the knowledge index in {path!r}: {exc}") from exc

    def file_hashes(self, kb: str) -> dict[str, str]:
        rows = self.conn.execute("SELECT path, sha256 FROM baton_kb_files WHERE kb = ?", (kb,))
        return {p: h for p, h in rows}

    def _delete(self, kb: str, path: str) -> None:
        ids = [r[0] for r in self.conn.execute("SELECT id FROM baton_kb_chunks WHERE kb = ? AND path = ?",
                                               (kb, path))]
        self.conn.executemany("DELETE FROM baton_kb_fts WHERE rowid = ?", [(i,) for i in ids])
        self.conn.execute("DELETE FROM baton_kb_chunks WHERE kb = ? AND path = ?", (kb, path))
        self.conn.execute("DELETE FROM baton_kb_files WHERE kb = ? AND path = ?", (kb, path))

    def replace_file(self, kb: str, path: str, sha: str, chunks: list[Chunk], vectors: list[bytes] | None) -> None:
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self._delete(kb, path)
            for i, c in enumerate(chunks):
                cur = self.conn.execute(
                    "INSERT INTO baton_kb_chunks (kb, path, ord, heading, line_start, line_end, text, vector) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (kb, path, c.ord, c.heading, c.line_start, c.line_end, c.text, vectors[i] if vectors else None))
                self.conn.execute("INSERT INTO baton_kb_fts (rowid, heading, text, kb) VALUES (?, ?, ?, ?)",
                                  (cur.lastrowid, c.heading, c.text, kb))
            self.conn.execute("INSERT INTO baton_kb_files (kb, path, sha256) VALUES (?, ?, ?)", (kb, path, sha))

    def remove_file(self, kb: str, path: str) -> None:
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self._delete(kb, path)

    def keyword(self, kb: str, query: str, k: int) -> list[tuple[int, float]]:
        words = query_words(query)
        if not words:
            return []
        match = " OR ".join(f'"{w}"' for w in words)
        rows = self.conn.execute(
            "SELECT rowid, bm25(baton_kb_fts, 2.0, 1.0) AS score FROM baton_kb_fts "
            "WHERE baton_kb_fts MATCH ? AND kb = ? ORDER BY score LIMIT ?", (match, kb, k))
        return [(int(i), -float(s)) for i, s in rows]

    def vectors(self, kb: str) -> tuple[list[int], list[bytes]]:
        rows = self.conn.execute("SELECT id, vector FROM baton_kb_chunks WHERE kb = ? AND vector IS NOT NULL "
                                 "ORDER BY id", (kb,)).fetchall()
        return [r[0] for r in rows], [r[1] for r in rows]

    def chunks(self, ids: list[int]) -> dict[int, StoredChunk]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self.conn.execute(f"SELECT id, path, heading, line_start, line_end, text FROM baton_kb_chunks "
                                 f"WHERE id IN ({marks})", ids)
        return {r[0]: StoredChunk(*r) for r in rows}

    def count(self, kb: str) -> int:
        return int(self.conn.execute("SELECT count(*) FROM baton_kb_chunks WHERE kb = ?", (kb,)).fetchone()[0])

    def close(self) -> None:
        self.conn.close()


_PG_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS baton_kb_files (kb TEXT NOT NULL, path TEXT NOT NULL, sha256 TEXT NOT NULL, "
    "PRIMARY KEY (kb, path))",
    "CREATE TABLE IF NOT EXISTS baton_kb_chunks (id BIGSERIAL PRIMARY KEY, kb TEXT NOT NULL, path TEXT NOT NULL, "
    "ord INTEGER NOT NULL, heading TEXT NOT NULL, line_start INTEGER NOT NULL, line_end INTEGER NOT NULL, "
    "text TEXT NOT NULL, vector BYTEA, tsv tsvector GENERATED ALWAYS AS ("
    "setweight(to_tsvector('english', heading), 'A') || setweight(to_tsvector('english', text), 'B')) STORED)",
    "CREATE INDEX IF NOT EXISTS baton_kb_chunks_file ON baton_kb_chunks (kb, path)",
    "CREATE INDEX IF NOT EXISTS baton_kb_chunks_tsv ON baton_kb_chunks USING GIN (tsv)",
]


class PostgresIndex:
    def __init__(self, url: str) -> None:
        try:
            import psycopg
        except ImportError as exc:
            raise UsageError("PostgreSQL knowledge indexes need psycopg: pip install 'baton-agents[postgres]'") from exc
        try:
            self.conn: Any = psycopg.connect(url, autocommit=True)
            with self.conn.transaction():
                # One schema creation at a time: concurrent CREATE ... IF NOT EXISTS can still collide.
                self.conn.execute("SELECT pg_advisory_xact_lock(7319004)")
                for stmt in _PG_SCHEMA:
                    self.conn.execute(stmt)
        except psycopg.Error as exc:
            raise StoreError(f"cannot open the knowledge index in PostgreSQL: {type(exc).__name__}") from exc

    def file_hashes(self, kb: str) -> dict[str, str]:
        rows = self.conn.execute("SELECT path, sha256 FROM baton_kb_files WHERE kb = %s", (kb,)).fetchall()
        return {p: h for p, h in rows}

    def _delete(self, kb: str, path: str) -> None:
        self.conn.execute("DELETE FROM baton_kb_chunks WHERE kb = %s AND path = %s", (kb, path))
        self.conn.execute("DELETE FROM baton_kb_files WHERE kb = %s AND path = %s", (kb, path))

    def replace_file(self, kb: str, path: str, sha: str, chunks: list[Chunk], vectors: list[bytes] | None) -> None:
        with self.conn.transaction():
            self._delete(kb, path)
            with self.conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO baton_kb_chunks (kb, path, ord, heading, line_start, line_end, text, vector) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                    [(kb, path, c.ord, c.heading, c.line_start, c.line_end, c.text, vectors[i] if vectors else None)
                     for i, c in enumerate(chunks)])
            self.conn.execute("INSERT INTO baton_kb_files (kb, path, sha256) VALUES (%s, %s, %s)", (kb, path, sha))

    def remove_file(self, kb: str, path: str) -> None:
        with self.conn.transaction():
            self._delete(kb, path)

    def keyword(self, kb: str, query: str, k: int) -> list[tuple[int, float]]:
        words = query_words(query)
        if not words:
            return []
        rows = self.conn.execute(
            "SELECT id, ts_rank(tsv, q) AS score FROM baton_kb_chunks, to_tsquery('english', %s) q "
            "WHERE kb = %s AND tsv @@ q ORDER BY score DESC, id LIMIT %s", (" | ".join(words), kb, k)).fetchall()
        return [(int(i), float(s)) for i, s in rows]

    def vectors(self, kb: str) -> tuple[list[int], list[bytes]]:
        rows = self.conn.execute("SELECT id, vector FROM baton_kb_chunks WHERE kb = %s AND vector IS NOT NULL "
                                 "ORDER BY id", (kb,)).fetchall()
        return [r[0] for r in rows], [bytes(r[1]) for r in rows]

    def chunks(self, ids: list[int]) -> dict[int, StoredChunk]:
        if not ids:
            return {}
        rows = self.conn.execute("SELECT id, path, heading, line_start, line_end, text FROM baton_kb_chunks "
                                 "WHERE id = ANY(%s)", (ids,)).fetchall()
        return {r[0]: StoredChunk(*r) for r in rows}

    def count(self, kb: str) -> int:
        return int(self.conn.execute("SELECT count(*) FROM baton_kb_chunks WHERE kb = %s", (kb,)).fetchone()[0])

    def close(self) -> None:
        self.conn.close()
