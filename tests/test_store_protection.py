"""Stored content is protected for real (issue 13): private files and folders for SQLite,
and optional encryption at rest (BATON_STORE_KEY) on every durable backend, which resume
reads back; a missing or wrong key is one clear error naming the variable."""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import baton
from _services import PG_URL, REDIS_URL, postgres_problem, redis_problem
from baton.errors import StoreKeyError, UsageError
from baton.runtime.cache import SQLiteResultCache
from baton.stores import open_store
from baton.stores.base import RunRecord, StepRecord
from baton.testing import Rule, ScriptedModel, text

MARKER = "PLAINTEXT-MARKER-5e1f"
KEY_A = "Cq1PqgQ8Zl0uV2u7q3V3nS2x8v7bq0cQkzJ0y9i2Y3w="
KEY_B = "3Gq6m4m0b0T1m8cWnQd2oK3m7sFq9xJb2w1y5e8r0tA="


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


# --- file modes -------------------------------------------------------------------------------


async def test_sqlite_store_files_and_folders_are_private(tmp_path: Path, umask_022: None) -> None:
    db = tmp_path / "made" / "by" / "baton" / "runs.db"
    store = open_store(f"sqlite:///{db}")
    try:
        await store.create_run(RunRecord("r1", "py:x:y", input=MARKER))
        await store.put_steps([StepRecord("r1", "0", "step", "s", "completed", result={"v": MARKER})])
        files = [db, Path(f"{db}-wal"), Path(f"{db}-shm")]
        assert all(f.exists() for f in files)
        assert {f.name: _mode(f) for f in files} == {f.name: 0o600 for f in files}
    finally:
        await store.close()
    for folder in (db.parent, db.parent.parent, db.parent.parent.parent):
        assert _mode(folder) == 0o700, folder


async def test_an_existing_world_readable_store_is_made_private(tmp_path: Path, umask_022: None) -> None:
    db = tmp_path / "old.db"
    db.touch(mode=0o644)
    os.chmod(db, 0o644)
    store = open_store(f"sqlite:///{db}")
    try:
        await store.create_run(RunRecord("r1", "py:x:y", input="x"))
    finally:
        await store.close()
    assert _mode(db) == 0o600


async def test_sqlite_result_cache_is_private(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "cache" / "answers.db"
    cache = SQLiteResultCache(str(path))
    try:
        await cache.put("k", {"content": []})
    finally:
        await cache.close()
    assert _mode(path) == 0o600 and _mode(path.parent) == 0o700
    assert set(_sidecar_modes(path)) <= {0o600}


def _sidecar_modes(path: Path) -> list[int]:
    return [_mode(p) for p in (Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]


# --- encryption at rest, on every durable backend ------------------------------------------------

armed = {"fail": False}
noter = baton.Agent("noter", system="You take notes.", model="claude-haiku-4-5", max_tokens=64)


def _maybe_fail() -> dict[str, str]:
    if armed["fail"]:
        armed["fail"] = False
        raise RuntimeError("crash")
    return {"checked": MARKER}


async def notes(ctx: baton.RunContext, topic: str) -> Any:
    note = await ctx.call(noter, topic)
    checked = await ctx.step("check", _maybe_fail)
    return {"note": note.output, **checked}


def _model() -> ScriptedModel:
    return ScriptedModel([Rule(reply=text(f"notes: {MARKER}"))])


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Callable[[], str]]]:
    kind = request.param
    if kind == "sqlite":
        db = tmp_path / "runs.db"
        url = f"sqlite:///{db}"
        yield url, lambda: b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("runs.db"))\
            .decode("utf-8", "replace")
    elif kind == "postgres":
        if problem := postgres_problem():
            pytest.skip(problem)
        import psycopg

        schema = f"baton_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        sep = "&" if "?" in PG_URL else "?"
        url = f"{PG_URL}{sep}options=-csearch_path%3D{schema}"

        def raw() -> str:
            with psycopg.connect(PG_URL) as conn:
                rows = [conn.execute(f'SELECT data::text FROM "{schema}".{t}').fetchall()
                        for t in ("baton_runs", "baton_steps")]
                rows.append(conn.execute(f'SELECT value::text FROM "{schema}".baton_state').fetchall())
            return str(rows)

        yield url, raw
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    else:
        if problem := redis_problem():
            pytest.skip(problem)
        import redis

        prefix = f"baton-test-{uuid.uuid4().hex[:12]}:"
        sep = "&" if "?" in REDIS_URL else "?"
        client = redis.Redis.from_url(REDIS_URL)

        def dump() -> str:
            out = []
            for key in client.scan_iter(match=f"{prefix}*", count=1000):
                kind_ = client.type(key).decode()
                out.append({"hash": client.hgetall, "string": client.get, "list": lambda k: client.lrange(k, 0, -1),
                            "zset": lambda k: client.zrange(k, 0, -1), "set": client.smembers,
                            "stream": lambda k: client.xrange(k)}.get(kind_, lambda k: b"")(key))
            return str(out)

        yield f"{REDIS_URL}{sep}prefix={prefix}", dump
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


async def test_encrypted_store_resumes_and_keeps_no_plaintext(backend: tuple[str, Callable[[], str]],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    url, raw = backend
    monkeypatch.setenv("BATON_STORE_KEY", KEY_A)
    armed["fail"] = True
    first = await baton.run(notes, f"topic {MARKER}", store=url, model=_model())
    assert first.status == "failed"
    store = open_store(url)
    try:
        await store.put_state("board", "k", {"secret": MARKER})
        assert await store.get_state("board", "k") == {"secret": MARKER}
    finally:
        await store.close()
    stored = raw()
    assert first.run_id in stored and "noter" in stored  # the rows are there, readable where not content
    assert MARKER not in stored  # ... but no content in plain text

    resumed = await baton.resume(first.run_id, notes, store=url, model=_model())
    assert resumed.status == "succeeded"
    assert resumed.output == {"note": f"notes: {MARKER}", "checked": MARKER}
    assert MARKER not in raw()

    # Without the key, or with another one: one clear error naming the variable, never garbage.
    monkeypatch.delenv("BATON_STORE_KEY")
    store = open_store(url)
    try:
        assert [r.run_id for r in await store.list_runs()] == [first.run_id]  # listing needs no key
        with pytest.raises(StoreKeyError, match="encrypted: set BATON_STORE_KEY"):
            await store.get_run(first.run_id)
        with pytest.raises(StoreKeyError, match="encrypted: set BATON_STORE_KEY"):
            await store.load_steps(first.run_id)
        monkeypatch.setenv("BATON_STORE_KEY", KEY_B)
        with pytest.raises(StoreKeyError, match="BATON_STORE_KEY is not the key it was written with"):
            await store.get_run(first.run_id)
        with pytest.raises(StoreKeyError, match="BATON_STORE_KEY is not the key"):
            await store.get_state("board", "k")
        monkeypatch.setenv("BATON_STORE_KEY", f"{KEY_B},{KEY_A}")  # rotation: the old key still opens
        assert (await store.get_run(first.run_id)).output == resumed.output
    finally:
        await store.close()


def test_a_malformed_key_is_a_usage_error_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from baton.stores._codec import encode_step

    monkeypatch.setenv("BATON_STORE_KEY", "not-a-key")
    with pytest.raises(UsageError, match="BATON_STORE_KEY is not a valid key"):
        encode_step(StepRecord("r", "0", "step", "s", "completed", result=1), "test")


def test_cli_without_the_key_says_so_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    monkeypatch.setenv("BATON_STORE_KEY", KEY_A)
    done = asyncio.run(baton.run(notes, "t", store=url, model=_model()))
    env = {k: v for k, v in os.environ.items() if k != "BATON_STORE_KEY"}
    proc = subprocess.run([sys.executable, "-m", "baton", "show", done.run_id, "--store", url],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2 and "BATON_STORE_KEY" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
