"""The journal is the truth (issue 13): steps are stored exactly as they happened, so a
resumed run sees what the uninterrupted one saw; redaction belongs to the sinks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import baton
from baton.models.anthropic import AnthropicModel
from baton.observe.redact import clear_secrets, register_secret
from baton.testing import FakeAnthropicServer, Rule, json_reply

KEY = "sk-ant-test-journal-truth"
ENV_LIKE = "DATABASE_URL=postgresql://app:hunter2hunter2@db:5432/app TOKEN=tok-registered-1234"
ANSWER = {"secret": 42, "note": ENV_LIKE}

extractor = baton.Agent("extractor", system="extract", model="claude-haiku-4-5", max_tokens=256, output={
    "type": "object", "required": ["secret", "note"],
    "properties": {"secret": {"type": "integer"}, "note": {"type": "string"}}})
armed = {"fail": False}


def _maybe_fail() -> str:
    if armed["fail"]:
        armed["fail"] = False
        raise RuntimeError("crash after the model call")
    return "checked"


async def extract(ctx: baton.RunContext, text: str) -> Any:
    found = await ctx.call(extractor, text)
    await ctx.step("check", _maybe_fail)
    return found.output


@pytest.fixture(autouse=True)
def _registered_secret():
    register_secret("tok-registered-1234")  # as ``register_env_secrets`` does for *_TOKEN variables
    yield
    clear_secrets()


async def test_resumed_run_sees_exactly_what_the_uninterrupted_run_saw(tmp_path: Path) -> None:
    async with FakeAnthropicServer([Rule(reply=json_reply(ANSWER))]) as server:
        model = AnthropicModel(api_key=KEY, base_url=server.url)
        store = f"sqlite:///{tmp_path / 'runs.db'}"
        try:
            whole = await baton.run(extract, "find it", store=store, model=model)
            armed["fail"] = True
            first = await baton.run(extract, "find it", store=store, model=model)
            assert first.status == "failed"
            resumed = await baton.resume(first.run_id, extract, store=store, model=model)
        finally:
            await model.aclose()
        assert len(server.requests) == 2  # the resumed run replayed the call from the journal
    assert whole.status == resumed.status == "succeeded"
    assert whole.output == ANSWER
    assert resumed.output == whole.output  # not {"secret": "[REDACTED]", ...}
    assert isinstance(resumed.output["secret"], int)


# --- replay compares what each model call asked for ----------------------------------------

writer = baton.Agent("writer", system="You write briefs.", model="claude-haiku-4-5", max_tokens=64)


async def brief(ctx: baton.RunContext, topic: str) -> str:
    return (await ctx.call(writer, f"brief on {topic}")).output


@pytest.mark.parametrize(("changed", "differs"), [
    ({"system": "You write poems."}, "differs in system"),
    ({"model": "claude-sonnet-4-6"}, "differs in model (journal 'claude-haiku-4-5', now 'claude-sonnet-4-6')"),
    ({"prompt": "limericks on {topic}"}, "differs in messages"),
    ({"output": {"type": "object", "properties": {"x": {"type": "string"}}}}, "differs in tools, output_schema"),
])
async def test_replay_names_what_differs_in_the_model_request(changed: dict[str, Any], differs: str) -> None:
    from baton.errors import ReplayDivergence
    from baton.stores.memory import MemoryStore
    from baton.testing import ScriptedModel, text

    store, model = MemoryStore(), ScriptedModel([Rule(reply=text("a brief"))])
    done = await baton.run(brief, "tides", store=store, model=model)
    assert (await baton.replay(done.run_id, brief, store=store)).output == "a brief"  # same request: passes

    prompt = changed.pop("prompt", "brief on {topic}")
    other = baton.Agent("writer", **{"system": writer.system, "model": writer.model, "max_tokens": 64, **changed})

    async def edited(ctx: baton.RunContext, topic: str) -> Any:
        result = await ctx.call(other, prompt.format(topic=topic))
        return result.output

    with pytest.raises(ReplayDivergence, match=f"step 0/m0: agent 'writer' now sends .*{differs.replace('(', '.').replace(')', '.')}") as info:
        await baton.replay(done.run_id, edited, store=store)
    assert info.value.step == "0/m0" and info.value.differs


async def test_old_journals_without_a_fingerprint_still_replay() -> None:
    from baton.stores.memory import MemoryStore
    from baton.testing import ScriptedModel, text

    store = MemoryStore()
    done = await baton.run(brief, "tides", store=store, model=ScriptedModel([Rule(reply=text("a brief"))]))
    steps = await store.load_steps(done.run_id)
    for step in steps:
        step.meta.pop("request", None)  # as journaled before fingerprints existed
    await store.put_steps(steps)
    assert (await baton.replay(done.run_id, brief, store=store)).output == "a brief"


def test_replay_divergence_lives_in_the_error_tree() -> None:
    from baton.errors import BatonError, ReplayDivergence

    assert ReplayDivergence.__module__ == "baton.errors" and issubclass(ReplayDivergence, BatonError)


# --- the result cache and the journal agree on what a call returned ---------------------------


async def test_cache_and_journal_hold_the_same_answer(tmp_path: Path) -> None:
    from baton.runtime.cache import SQLiteResultCache

    cache = SQLiteResultCache(str(tmp_path / "cache.db"))
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    async with FakeAnthropicServer([Rule(reply=json_reply(ANSWER))]) as server:
        model = AnthropicModel(api_key=KEY, base_url=server.url)
        try:
            fresh = await baton.run(extract, "find it", store=store, model=model, cache=cache)
            cached = await baton.run(extract, "find it", store=store, model=model, cache=cache)
        finally:
            await model.aclose()
        assert len(server.requests) == 1  # the second run was answered by the cache
    from baton.stores import open_store

    st = open_store(store)
    try:
        miss = {s.key: s for s in await st.load_steps(fresh.run_id)}["0/m0"]
        hit = {s.key: s for s in await st.load_steps(cached.run_id)}["0/m0"]
    finally:
        await st.close()
    entry = await cache.get(_only_key(tmp_path / "cache.db"))
    await cache.close()
    assert hit.meta.get("cache_hit") is True and not miss.meta.get("cache_hit")
    assert miss.result == entry == hit.result  # one answer, stored the same in all three places
    assert "hunter2hunter2" in str(entry) and cached.output == fresh.output == ANSWER


def _only_key(path: Path) -> str:
    import sqlite3

    with sqlite3.connect(path) as conn:
        (key,), = conn.execute("SELECT key FROM baton_result_cache").fetchall()
    return str(key)


async def test_a_cache_entry_that_is_no_response_is_a_miss(tmp_path: Path) -> None:
    from baton.runtime.cache import MemoryResultCache

    cache = MemoryResultCache()
    async with FakeAnthropicServer([Rule(reply=json_reply(ANSWER))]) as server:
        model = AnthropicModel(api_key=KEY, base_url=server.url)
        try:
            first = await baton.run(extract, "find it", store="memory://", model=model, cache=cache)
            (key,) = list(cache._entries)
            await cache.put(key, {"content": "not a list of blocks"})  # e.g. a shared cache written by anyone
            second = await baton.run(extract, "find it", store="memory://", model=model, cache=cache)
        finally:
            await model.aclose()
        assert len(server.requests) == 2
    assert second.status == "succeeded" and second.output == first.output
    assert (await cache.get(key) or {}).get("content") != "not a list of blocks"  # replaced by the fresh answer
