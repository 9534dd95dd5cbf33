"""Memory across runs: namespaced, expiring, on every backend; journaled so resume stays exact."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import baton
from _services import PG_URL, REDIS_URL, require_postgres, require_redis
from baton.errors import UsageError
from baton.memory import Memory
from baton.models.anthropic import AnthropicModel
from baton.runtime.ratelimit import RateGovernor
from baton.runtime.retry import RetryPolicy
from baton.spec import load_workflow_file
from baton.stores import open_store
from baton.stores.base import Store
from baton.testing import FakeAnthropicServer, Fault, text, tool_call

pytestmark = pytest.mark.timeout(60)


_SCHEMAS: list[str] = []


def _pg() -> str:
    require_postgres()
    import psycopg

    schema = f"baton_mem_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    _SCHEMAS.append(schema)
    return PG_URL + ("&" if "?" in PG_URL else "?") + f"options=-csearch_path%3D{schema}"


def _redis() -> str:
    require_redis()
    return REDIS_URL + ("&" if "?" in REDIS_URL else "?") + f"prefix=baton-mem-{uuid.uuid4().hex[:12]}:"


BACKENDS: dict[str, Callable[[Path], str]] = {
    "memory": lambda _: "memory://",
    "sqlite": lambda tmp: f"sqlite:///{tmp}/mem.db",
    "postgres": lambda _: _pg(),
    "redis": lambda _: _redis(),
}


@pytest.fixture(params=list(BACKENDS))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s = open_store(BACKENDS[request.param](tmp_path))
    await s.open()
    yield s
    await s.close()
    if _SCHEMAS:
        import psycopg

        with psycopg.connect(PG_URL, autocommit=True) as conn:
            while _SCHEMAS:
                conn.execute(f'DROP SCHEMA IF EXISTS "{_SCHEMAS.pop()}" CASCADE')


async def test_namespaces_are_isolated(store: Store) -> None:
    a, b, other = Memory(store, "acme/users/1"), Memory(store, "acme/users/2"), Memory(store, "beta/users/1")
    await a.put("color", "blue")
    await a.put("city", {"name": "Lyon"})
    await b.put("color", "green")
    assert await a.get("color") == "blue" and await b.get("color") == "green"
    assert await other.get("color") is None and await other.list() == []
    assert await a.list() == ["city", "color"] and await a.list("co") == ["color"]
    assert await a.get("city") == {"name": "Lyon"}
    assert await a.delete("color") is True and await a.delete("color") is False
    assert await a.get("color") is None and await b.get("color") == "green"
    # A run's blackboard (namespaced by run id) and memory never meet, even with the same name.
    await store.put_state("acme", "users/1/color", "red")
    assert await Memory(store, "acme").list() == []
    # Glob characters in a prefix are literal (Redis lists by SCAN pattern).
    await a.put("x*y", 1)
    await a.put("xzy", 2)
    assert await a.list("x*") == ["x*y"]


async def test_values_expire_after_their_ttl(store: Store) -> None:
    m = Memory(store, "ttl/test")
    await m.put("short", "soon gone", ttl_s=0.3)
    await m.put("long", "stays", ttl_s=60)
    await m.put("forever", "stays")
    assert await m.list() == ["forever", "long", "short"]
    await asyncio.sleep(0.8)
    assert await m.get("short") is None
    assert await m.list() == ["forever", "long"]
    assert await m.delete("short") is False
    assert await m.get("long") == "stays"


async def test_bad_namespaces_keys_and_ttls_are_refused() -> None:
    store = open_store("memory://")
    for ns in ("", "a b", "x" * 201, "a*"):
        with pytest.raises(UsageError, match="namespace"):
            Memory(store, ns)
    m = Memory(store, "ok")
    with pytest.raises(UsageError, match="key"):
        await m.put("", 1)
    for ttl in (0, -1, float("nan"), float("inf")):
        with pytest.raises(UsageError, match="ttl_s"):
            await m.put("k", 1, ttl_s=ttl)


greeter = baton.Agent("greeter", model="claude-haiku-4-5", system="You are GREETER.")


async def visits(ctx: baton.RunContext, user: str) -> str:
    mem = ctx.memory(f"site/users/{user}")
    count = await mem.get("visits", 0)
    await mem.put("visits", count + 1)
    reply = await ctx.call(greeter, f"visit number {count + 1}")
    return f"{count + 1}: {reply.text}"


@pytest.fixture
async def server() -> AsyncIterator[FakeAnthropicServer]:
    async with FakeAnthropicServer() as s:
        yield s


@pytest.fixture
async def opts(server: FakeAnthropicServer, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    m = AnthropicModel(api_key="sk-test", base_url=server.url)
    yield {"store": f"sqlite:///{tmp_path}/baton.db", "model": m, "governor": RateGovernor(),
           "retry": RetryPolicy(max_attempts=1)}
    await m.aclose()


async def test_memory_outlives_runs_and_a_resume_replays_it_exactly(server: FakeAnthropicServer,
                                                                    opts: dict[str, Any]) -> None:
    server.add_rule("GREETER", fault=Fault.status(400), times=1)
    server.add_rule("GREETER", reply=text("hello"))
    first = await baton.run(visits, "42", **opts)
    assert first.status == "failed"  # after its memory read and write
    store = open_store(opts["store"])
    await store.open()
    try:
        mem = Memory(store, "site/users/42")
        assert await mem.get("visits") == 1
        await mem.put("visits", 100)  # someone else writes meanwhile
        resumed = await baton.resume(first.run_id, visits, **opts)
        assert resumed.output == "1: hello"  # the journaled read, not today's value
        assert await mem.get("visits") == 100  # and the journaled write is not made again
        again = await baton.run(visits, "42", **opts)  # a new run reads what memory holds now
        assert again.output == "101: hello"
        assert await Memory(store, "site/users/7").get("visits") is None
    finally:
        await store.close()


FLOW = """\
version: 1
name: memo
defaults: {{model: claude-haiku-4-5, max_tokens: 200}}
agents:
  keeper: {{system: "You are KEEPER.", memory: "{ns}"}}
workflow: {{pattern: agent, agent: keeper}}
"""


def tool_results(server: FakeAnthropicServer) -> list[Any]:
    out = []
    for r in server.requests:
        for m in r.body["messages"]:
            for b in m["content"] if isinstance(m["content"], list) else []:
                if b.get("type") == "tool_result":
                    out.append(json.loads(b["content"]))
    return out


async def test_yaml_memory_tools_remember_recall_forget_per_namespace(server: FakeAnthropicServer,
                                                                      opts: dict[str, Any],
                                                                      tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(FLOW.format(ns="tenant-a/notes"))
    b.write_text(FLOW.format(ns="tenant-b/notes"))
    wf_a, wf_b = load_workflow_file(str(a)), load_workflow_file(str(b))
    assert {t.name for t in wf_a.agents["keeper"].tools} == {"remember", "recall", "forget"}

    server.add_rule("KEEPER", reply=tool_call("remember", {"key": "fav", "value": "tea"}), times=1)
    server.add_rule("KEEPER", reply=text("noted"), times=1)
    assert (await baton.run(wf_a, "remember tea", **opts)).ok
    for wf in (wf_a, wf_b):  # the same recall from tenant a, then from tenant b
        server.add_rule("KEEPER", reply=tool_call("recall", {"key": "fav"}), times=1)
        server.add_rule("KEEPER", reply=text("recalled"), times=1)
        assert (await baton.run(wf, "what do I like?", **opts)).ok
    server.add_rule("KEEPER", reply=tool_call("forget", {"key": "fav"}), times=1)
    server.add_rule("KEEPER", reply=text("forgotten"), times=1)
    assert (await baton.run(wf_a, "forget it", **opts)).ok
    assert tool_results(server) == [{"remembered": "fav"}, {"key": "fav", "value": "tea"},
                                    {"key": "fav", "found": False}, {"key": "fav", "forgotten": True}]


def test_bad_memory_namespace_in_yaml_is_a_validation_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(FLOW.format(ns="no spaces allowed"))
    with pytest.raises(baton.BatonError):
        load_workflow_file(str(bad))


async def test_a_tenants_runs_use_that_tenants_memory_only(server: FakeAnthropicServer, opts: dict[str, Any],
                                                           tmp_path: Path) -> None:
    """The same workflow, the same namespace name, two service tenants: two separate memories."""
    flow = tmp_path / "t.yaml"
    flow.write_text(FLOW.format(ns="shared/notes"))
    wf = load_workflow_file(str(flow))
    server.add_rule("KEEPER", reply=tool_call("remember", {"key": "secret", "value": "a's plan"}), times=1)
    server.add_rule("KEEPER", reply=text("noted"), times=1)
    assert (await baton.run(wf, "remember", metadata={"tenant": "a"}, **opts)).ok
    for tenant in ("b", None, "a"):
        server.add_rule("KEEPER", reply=tool_call("recall", {"key": "secret"}), times=1)
        server.add_rule("KEEPER", reply=text("ok"), times=1)
        assert (await baton.run(wf, "recall", metadata={"tenant": tenant} if tenant else None, **opts)).ok
    assert tool_results(server)[1:] == [{"key": "secret", "found": False}, {"key": "secret", "found": False},
                                        {"key": "secret", "value": "a's plan"}]
    store = open_store(opts["store"])
    await store.open()
    try:
        assert await Memory(store, "shared/notes", tenant="a").list() == ["secret"]
        assert await Memory(store, "shared/notes").list() == []
        assert await Memory(store, "notes", tenant="a/shared").list() == []  # no name makes one tenant another
    finally:
        await store.close()
