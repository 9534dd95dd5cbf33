"""The store conformance suite: what every ``Store`` backend must do, as runnable checks.

Backend authors run it one of two ways::

    # plain asyncio
    from baton.testing.store_conformance import check_store
    await check_store(lambda: MyStore(fresh_url()), reopen=lambda s: MyStore(s.url))

    # pytest (needs pytest-asyncio): one test per check
    from baton.testing.store_conformance import StoreConformance

    class TestMyStore(StoreConformance):
        @pytest.fixture
        def store_factory(self):
            return lambda: MyStore(fresh_url())

        def reopen(self, store):               # optional: enables the durability check
            return MyStore(store.url)

        async def corrupt_run(self, store, run_id):   # optional: write a bad row
            ...

``store_factory()`` must return a new, unopened store over fresh, empty storage (a new
file, schema or key prefix): checks leave runs behind, including deliberately corrupt
ones. The optional hooks enable the checks that need backend knowledge:

- ``reopen(store)``: a new store over the *same* storage (durability across reopen).
- ``corrupt_run(store, run_id)``: overwrite the run's stored record with something that
  is not a valid record; reads must raise ``StoreError`` naming the run.
- ``corrupt_step(store, run_id, key)``: the same for one step record.

Hooks and the factory may be plain functions or coroutine functions.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from baton.errors import RunNotFound, RunOwnedElsewhere, StoreError, UsageError
from baton.stores.base import Owner, RunRecord, StepRecord, Store

T = TypeVar("T")
StoreFactory = Callable[[], "Store | Awaitable[Store]"]
ReopenHook = Callable[[Store], "Store | Awaitable[Store]"]
CorruptRunHook = Callable[[Store, str], "Awaitable[None] | None"]
CorruptStepHook = Callable[[Store, str, str], "Awaitable[None] | None"]

# Values that must come back exactly, key order included: a replayed step result is
# fed to the next prompt, and a reordered dict would change that prompt.
TRICKY_VALUE: dict[str, Any] = {
    "unicode": "héllo wörld ✓ 日本語 🎉 עברית e\u0301",
    "escapes": 'quote" backslash\\ slash/ newline\n tab\t cr\r nul\u0000 ctrl\x01 \u2028',
    "nested": {"list": [1, 2.5, -3, True, False, None, {"deep": [[], {}, [[["x"]]]]}]},
    "big": 2**62,
    "negative": -(2**63),
    "float": 0.1,
    "tiny": 1e-300,
    "empty": "",
    "keys with spaces": 1,
    "🔑": "emoji key",
    "z_last_but_inserted_first_order": "order",
    "a_sorted_first": "order",
}


@dataclass
class _Hooks:
    factory: StoreFactory
    reopen: ReopenHook | None = None
    corrupt_run: CorruptRunHook | None = None
    corrupt_step: CorruptStepHook | None = None


async def _maybe_await(value: T | Awaitable[T]) -> T:
    if inspect.isawaitable(value):
        return await value
    return value


async def _fresh(hooks: _Hooks) -> Store:
    store = await _maybe_await(hooks.factory())
    await store.open()
    return store


def _id(label: str) -> str:
    return f"conf-{label}-{uuid.uuid4().hex[:12]}"


def _run(run_id: str, **kw: Any) -> RunRecord:
    return RunRecord(run_id=run_id, workflow=kw.pop("workflow", "yaml:flows/conformance.yaml"),
                     input=kw.pop("input", {"task": "check"}), **kw)


def _step(run_id: str, key: str, **kw: Any) -> StepRecord:
    return StepRecord(run_id=run_id, key=key, kind=kw.pop("kind", "model"), name=kw.pop("name", "writer"),
                      status=kw.pop("status", "completed"), **kw)


def _owner(token: str) -> Owner:
    return Owner(host="host-a", pid=4242, token=token, lease_until=time.time() + 60)


async def _raises(exc_types: type[BaseException] | tuple[type[BaseException], ...],
                  awaitable: Awaitable[Any], what: str) -> BaseException:
    try:
        await awaitable
    except exc_types as exc:
        return exc
    names = exc_types.__name__ if isinstance(exc_types, type) else " or ".join(t.__name__ for t in exc_types)
    raise AssertionError(f"{what}: expected {names}, nothing was raised")


def _eq(actual: Any, expected: Any, what: str) -> None:
    if actual != expected:
        raise AssertionError(f"{what}:\n  expected {expected!r}\n  got      {actual!r}")


def _ordered(value: Any) -> Any:
    """``value`` with every dict turned into its item list, so comparisons see key order."""
    if isinstance(value, dict):
        return [(k, _ordered(v)) for k, v in value.items()]
    if isinstance(value, list | tuple):
        return [_ordered(v) for v in value]
    return value


# -- the checks ---------------------------------------------------------------------------


async def check_protocol(store: Store, hooks: _Hooks) -> None:
    """The store satisfies the ``Store`` protocol; ``open``/``close`` may be repeated."""
    assert isinstance(store, Store), f"{type(store).__name__} does not implement baton.stores.Store"
    assert isinstance(store.url, str) and store.url, "store.url must be a non-empty string"
    await store.open()  # a second open is harmless
    run_id = _id("proto")
    await store.create_run(_run(run_id))
    _eq((await store.get_run(run_id)).run_id, run_id, "get_run after a repeated open()")


async def check_create_and_get(store: Store, hooks: _Hooks) -> None:
    """A created run reads back field for field, and records are copies, not shared objects."""
    run_id = _id("create")
    run = _run(run_id, status="running", input={"task": "write", "files": ["a.md", "b.md"]},
               created_at=1_700_000_000.25, updated_at=1_700_000_001.5, owner=_owner("tok-1"),
               output={"draft": "x"}, error={"type": "ToolError", "message": "boom"},
               usage={"input_tokens": 10, "output_tokens": 5}, cost_usd=0.0123, model_calls=3,
               limits={"budget_usd": 1.0}, metadata={"tenant": "acme", "tags": ["a"]})
    expected = run.to_dict()
    await store.create_run(run)
    run.input["task"] = "mutated after create"
    got = await store.get_run(run_id)
    _eq(got.to_dict(), expected, "get_run after create_run")
    assert isinstance(got.owner, Owner), "owner must come back as an Owner"
    got.input["files"].append("c.md")
    got.metadata["tenant"] = "changed"
    _eq((await store.get_run(run_id)).to_dict(), expected, "stored run after mutating a returned copy")


async def check_duplicate_run_id(store: Store, hooks: _Hooks) -> None:
    """Creating a run whose id exists raises ``UsageError`` and leaves the first one intact."""
    run_id = _id("dup")
    await store.create_run(_run(run_id, workflow="yaml:first.yaml"))
    exc = await _raises(UsageError, store.create_run(_run(run_id, workflow="yaml:second.yaml")),
                        "create_run with an existing id")
    assert run_id in str(exc), f"the error should name the run id: {exc}"
    _eq((await store.get_run(run_id)).workflow, "yaml:first.yaml", "workflow after a rejected duplicate")
    _eq([t.status for t in await store.transitions(run_id)], ["pending"], "audit trail after a rejected duplicate")


async def check_unknown_run(store: Store, hooks: _Hooks) -> None:
    """Unknown ids raise ``RunNotFound`` (a ``StoreError`` and a ``UsageError``) naming the id."""
    run_id = _id("missing")
    calls: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("get_run", lambda: store.get_run(run_id)),
        ("update_run", lambda: store.update_run(_run(run_id), transition="running")),
        ("claim_run", lambda: store.claim_run(run_id, _owner("t"), expected_token=None)),
    ]
    for what, call in calls:
        exc = await _raises(RunNotFound, call(), f"{what} of an unknown run")
        assert isinstance(exc, StoreError) and isinstance(exc, UsageError)
        assert run_id in str(exc), f"{what}: the error should name the run id: {exc}"
    _eq(await store.load_steps(run_id), [], "load_steps of an unknown run")
    _eq(await store.transitions(run_id), [], "transitions of an unknown run")


async def check_list_runs_order(store: Store, hooks: _Hooks) -> None:
    """``list_runs`` is newest first (by ``created_at``, not insertion order) and honours ``limit``."""
    base = time.time()
    ids = [_id(f"list{i}") for i in range(4)]
    # Inserted out of creation-time order on purpose.
    for i in (2, 0, 3, 1):
        await store.create_run(_run(ids[i], created_at=base + i))
    everything = await store.list_runs(limit=10_000)
    times = [r.created_at for r in everything]
    _eq(times, sorted(times, reverse=True), "list_runs created_at order")
    _eq([r.run_id for r in everything if r.run_id in ids], ids[::-1], "list_runs order of the new runs")
    top = await store.list_runs(limit=2)
    _eq([r.run_id for r in top], [r.run_id for r in everything[:2]], "list_runs(limit=2)")
    _eq(await store.list_runs(limit=0), [], "list_runs(limit=0)")


async def check_update_and_transitions(store: Store, hooks: _Hooks) -> None:
    """``update_run`` writes the whole record and bumps ``updated_at``; a transition appends
    one audit row; the trail reads oldest first."""
    run_id = _id("update")
    run = _run(run_id, updated_at=time.time() - 100)
    await store.create_run(run)
    run.status = "running"
    await store.update_run(run, transition="running", detail={"by": "worker-1", "attempt": 1})
    run.output = {"partial": [1, 2]}
    run.usage = {"input_tokens": 7}
    run.cost_usd = 0.5
    await store.update_run(run)  # no transition: no audit row
    run.status = "succeeded"
    run.output = {"final": "done ✓"}
    await store.update_run(run, transition="succeeded", detail={"output_chars": 6})
    got = await store.get_run(run_id)
    _eq((got.status, got.output, got.usage, got.cost_usd),
        ("succeeded", {"final": "done ✓"}, {"input_tokens": 7}, 0.5), "run after updates")
    assert got.updated_at > time.time() - 60, f"update_run must set updated_at to now, got {got.updated_at}"
    trail = await store.transitions(run_id)
    _eq([t.status for t in trail], ["pending", "running", "succeeded"], "transition statuses")
    _eq([t.detail for t in trail[1:]], [{"by": "worker-1", "attempt": 1}, {"output_chars": 6}], "transition details")
    _eq({t.run_id for t in trail}, {run_id}, "transition run ids")
    ats = [t.at for t in trail]
    _eq(ats, sorted(ats), "transition times are non-decreasing")


async def check_claim_run(store: Store, hooks: _Hooks) -> None:
    """``claim_run`` is a compare-and-set on the owner token, and exactly one of many
    concurrent claimants wins."""
    run_id = _id("claim")
    await store.create_run(_run(run_id))
    a, b = _owner("token-a"), _owner("token-b")
    assert await store.claim_run(run_id, a, expected_token=None), "claim of an unowned run must succeed"
    _eq((await store.get_run(run_id)).owner, a, "owner after the first claim")
    assert not await store.claim_run(run_id, b, expected_token=None), "claim expecting no owner must fail"
    assert not await store.claim_run(run_id, b, expected_token="stale"), "claim with a stale token must fail"
    _eq((await store.get_run(run_id)).owner, a, "owner after failed claims")
    assert await store.claim_run(run_id, b, expected_token="token-a"), "claim with the owner's token must succeed"
    _eq((await store.get_run(run_id)).owner, b, "owner after a takeover")
    assert not await store.claim_run(run_id, a, expected_token="token-a"), "the old token no longer works"

    owned_id = _id("claim-owned")
    await store.create_run(_run(owned_id, owner=_owner("creator")))
    assert not await store.claim_run(owned_id, a, expected_token=None), "a run created with an owner is owned"

    race_id = _id("claim-race")
    await store.create_run(_run(race_id))
    owners = [_owner(f"racer-{i}") for i in range(8)]
    results = await asyncio.gather(*(store.claim_run(race_id, o, expected_token=None) for o in owners))
    _eq(sum(results), 1, f"winners among concurrent claims {results}")
    winner = owners[results.index(True)]
    _eq((await store.get_run(race_id)).owner, winner, "owner after the race")


async def check_put_steps(store: Store, hooks: _Hooks) -> None:
    """``put_steps`` inserts or replaces by (run_id, key); ``load_steps`` keeps first-insertion
    order; runs do not see each other's steps; an empty batch is a no-op."""
    run_id, other = _id("steps"), _id("steps-other")
    await store.create_run(_run(run_id))
    await store.create_run(_run(other))
    first = [_step(run_id, "0/planner", name="planner", started_at=10.0, ended_at=11.0, result={"plan": [1]}),
             _step(run_id, "1/worker", status="started", started_at=11.0),
             _step(other, "0/planner", name="other-planner"),
             _step(run_id, "2/writer", usage={"input_tokens": 3, "output_tokens": 4}, cost_usd=0.25)]
    await store.put_steps(first)
    await store.put_steps([])
    replaced = _step(run_id, "1/worker", status="completed", started_at=11.0, ended_at=12.5,
                     result="worker done", attempts=2, meta={"model": "m", "idempotency_key": "k"})
    await store.put_steps([_step(run_id, "3/synth", result="a"), replaced, _step(run_id, "3/synth", result="b")])
    got = await store.load_steps(run_id)
    _eq([s.key for s in got], ["0/planner", "1/worker", "2/writer", "3/synth"], "step order")
    _eq(got[1].to_dict(), replaced.to_dict(), "replaced step")
    _eq(got[0].to_dict(), first[0].to_dict(), "untouched step")
    _eq(got[2].to_dict(), first[3].to_dict(), "step with usage")
    _eq(got[3].result, "b", "the last record of a key in one batch wins")
    _eq([s.name for s in await store.load_steps(other)], ["other-planner"], "steps of the other run")


async def check_completed_write_once(store: Store, hooks: _Hooks) -> None:
    """A completed step record is never replaced: a later record for its key (a displaced
    owner finishing the same call late, say) is ignored; a started or failed one is."""
    run_id = _id("write-once")
    await store.create_run(_run(run_id))
    await store.put_steps([_step(run_id, "0/a", result="first"), _step(run_id, "1/b", status="started")])
    await store.put_steps([_step(run_id, "0/a", result="late"), _step(run_id, "1/b", result="done")])
    await store.put_steps([_step(run_id, "1/b", status="started")])
    got = {s.key: (s.status, s.result) for s in await store.load_steps(run_id)}
    _eq(got, {"0/a": ("completed", "first"), "1/b": ("completed", "done")}, "steps after rewrites")


async def check_fenced_writes(store: Store, hooks: _Hooks) -> None:
    """With ``owner_token``, ``put_steps`` and ``update_run`` write only while that token owns
    the run; after a takeover the old owner gets ``RunOwnedElsewhere`` and writes nothing."""
    run_id = _id("fence")
    await store.create_run(_run(run_id))
    old, new = _owner("token-old"), _owner("token-new")
    assert await store.claim_run(run_id, old, expected_token=None), "first claim"
    await store.put_steps([_step(run_id, "0", result="by old")], owner_token="token-old")
    run = await store.get_run(run_id)
    run.status = "running"
    await store.update_run(run, transition="running", owner_token="token-old")
    assert await store.claim_run(run_id, new, expected_token="token-old"), "takeover"
    await _raises(RunOwnedElsewhere, store.put_steps([_step(run_id, "1", result="stale")], owner_token="token-old"),
                  "put_steps by a displaced owner")
    stale = _run(run_id, status="succeeded", output="stale", owner=None)
    await _raises(RunOwnedElsewhere, store.update_run(stale, transition="succeeded", owner_token="token-old"),
                  "update_run by a displaced owner")
    got = await store.get_run(run_id)
    _eq((got.status, got.output, got.owner), ("running", None, new), "run after the displaced owner's writes")
    _eq([s.key for s in await store.load_steps(run_id)], ["0"], "steps after the displaced owner's write")
    _eq([t.status for t in await store.transitions(run_id)][-1], "running", "last audit row")
    await store.put_steps([_step(run_id, "1", result="by new")], owner_token="token-new")
    _eq([s.result for s in await store.load_steps(run_id)], ["by old", "by new"], "steps of the new owner")


async def check_put_steps_atomic(store: Store, hooks: _Hooks) -> None:
    """A batch with one unstorable record stores nothing (nor does a bad run)."""
    run_id = _id("atomic")
    await store.create_run(_run(run_id))
    await store.put_steps([_step(run_id, "0", result="original")])
    batch = [_step(run_id, "0", result="replacement"), _step(run_id, "1", result={"bad": object()}),
             _step(run_id, "2", result="never")]
    await _raises((StoreError, TypeError), store.put_steps(batch), "put_steps with an unserializable result")
    got = await store.load_steps(run_id)
    _eq([(s.key, s.result) for s in got], [("0", "original")], "steps after a failed batch")
    bad_id = _id("atomic-run")
    await _raises((StoreError, TypeError), store.create_run(_run(bad_id, input={"x": {1, 2}})),
                  "create_run with an unserializable input")
    await _raises(RunNotFound, store.get_run(bad_id), "get_run of a run whose create failed")


async def check_large_batch(store: Store, hooks: _Hooks) -> None:
    """One batch of 1,000 step records lands whole and in order."""
    run_id = _id("batch")
    await store.create_run(_run(run_id))
    steps = [_step(run_id, f"{i:04d}/tool", kind="tool", name=f"tool-{i % 7}", result={"i": i, "text": "x" * 50},
                   started_at=1000.0 + i, ended_at=1000.5 + i) for i in range(1000)]
    await store.put_steps(steps)
    got = await store.load_steps(run_id)
    _eq(len(got), 1000, "number of steps loaded")
    _eq([s.key for s in got], [s.key for s in steps], "order of a 1,000-record batch")
    _eq(got[999].to_dict(), steps[999].to_dict(), "last record of the batch")


async def check_json_round_trip(store: Store, hooks: _Hooks) -> None:
    """Nested values, unicode, escapes, big integers and key order survive every field."""
    run_id = _id("json-ü-日本")
    run = _run(run_id, input=TRICKY_VALUE, output=[TRICKY_VALUE, ("tuple", "becomes", "list")],
               metadata={"v": TRICKY_VALUE}, error={"message": TRICKY_VALUE["escapes"]})
    await store.create_run(run)
    got = await store.get_run(run_id)
    _eq(_ordered(got.input), _ordered(TRICKY_VALUE), "run input")
    _eq(_ordered(got.output), _ordered([TRICKY_VALUE, ["tuple", "becomes", "list"]]), "run output")
    _eq(_ordered(got.metadata), _ordered({"v": TRICKY_VALUE}), "run metadata")
    _eq(got.error, {"message": TRICKY_VALUE["escapes"]}, "run error")
    key = "0/agent:ünïcode ✓"
    step = _step(run_id, key, result=TRICKY_VALUE, meta={"prompt": TRICKY_VALUE["unicode"]},
                 error={"detail": TRICKY_VALUE["nested"]})
    await store.put_steps([step])
    (loaded,) = await store.load_steps(run_id)
    _eq(_ordered(loaded.to_dict()), _ordered(step.to_dict()), "step record")
    await store.put_state(run_id, "blackboard ✓", TRICKY_VALUE)
    _eq(_ordered(await store.get_state(run_id, "blackboard ✓")), _ordered(TRICKY_VALUE), "state value")


async def check_state(store: Store, hooks: _Hooks) -> None:
    """Blackboard state: namespaced, overwritable, absent is None, expires after ``ttl_s``."""
    ns, other = _id("ns"), _id("ns-other")
    _eq(await store.get_state(ns, "missing"), None, "absent state")
    await store.put_state(ns, "plan", {"steps": ["a", "b"]})
    await store.put_state(other, "plan", [1, 2, 3])
    await store.put_state(ns, "count", 3)
    await store.put_state(ns, "count", 4)
    _eq(await store.get_state(ns, "plan"), {"steps": ["a", "b"]}, "state in its namespace")
    _eq(await store.get_state(other, "plan"), [1, 2, 3], "same key in another namespace")
    _eq(await store.get_state(ns, "count"), 4, "overwritten state")
    # Separators inside names must not make two (namespace, key) pairs collide.
    await store.put_state(f"{ns}:a", "b", "first")
    await store.put_state(ns, "a:b", "second")
    _eq((await store.get_state(f"{ns}:a", "b"), await store.get_state(ns, "a:b")), ("first", "second"),
        "namespace/key pairs that share a joined spelling")
    await store.put_state(ns, "short", "gone soon", ttl_s=0.3)
    await store.put_state(ns, "renewed", "kept", ttl_s=0.3)
    await store.put_state(ns, "renewed", "kept for good")  # no ttl: the old expiry is dropped
    await store.put_state(ns, "long", "stays", ttl_s=60)
    _eq(await store.get_state(ns, "short"), "gone soon", "state before its ttl")
    await asyncio.sleep(0.6)
    _eq(await store.get_state(ns, "short"), None, "state after its ttl")
    _eq(await store.get_state(ns, "renewed"), "kept for good", "state rewritten without a ttl")
    _eq(await store.get_state(ns, "long"), "stays", "state with a long ttl")


async def check_reopen(store: Store, hooks: _Hooks) -> None:
    """Everything written is there after ``close()`` and a reopen over the same storage."""
    assert hooks.reopen is not None
    run_id = _id("reopen")
    run = _run(run_id)
    await store.create_run(run)
    await store.claim_run(run_id, _owner("t1"), expected_token=None)
    run = await store.get_run(run_id)
    run.status = "interrupted"
    await store.update_run(run, transition="interrupted", detail={"signal": "SIGTERM"})
    await store.put_steps([_step(run_id, "0", result="kept"), _step(run_id, "1", status="started")])
    await store.put_state(run_id, "k", {"v": 1})
    expected = (await store.get_run(run_id)).to_dict()
    await store.close()
    again = await _maybe_await(hooks.reopen(store))
    await again.open()
    try:
        _eq((await again.get_run(run_id)).to_dict(), expected, "run after reopen")
        _eq([(s.key, s.status, s.result) for s in await again.load_steps(run_id)],
            [("0", "completed", "kept"), ("1", "started", None)], "steps after reopen")
        _eq([t.status for t in await again.transitions(run_id)], ["pending", "interrupted"], "audit after reopen")
        _eq(await again.get_state(run_id, "k"), {"v": 1}, "state after reopen")
        assert not await again.claim_run(run_id, _owner("t2"), expected_token=None), "ownership survives reopen"
    finally:
        await again.close()


async def check_corrupt_run(store: Store, hooks: _Hooks) -> None:
    """A corrupt run record raises ``StoreError`` naming the run, from ``get_run`` and ``list_runs``."""
    assert hooks.corrupt_run is not None
    run_id = _id("corrupt")
    await store.create_run(_run(run_id, created_at=time.time() + 3600))
    await _maybe_await(hooks.corrupt_run(store, run_id))
    calls: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("get_run", lambda: store.get_run(run_id)),
        ("list_runs", lambda: store.list_runs(limit=10_000)),
    ]
    for what, call in calls:
        exc = await _raises(StoreError, call(), f"{what} of a corrupt run")
        assert not isinstance(exc, RunNotFound), f"{what}: a corrupt run is not a missing run: {exc!r}"
        assert run_id in str(exc), f"{what}: the error should name the run id: {exc}"


async def check_corrupt_step(store: Store, hooks: _Hooks) -> None:
    """A corrupt step record raises ``StoreError`` naming the run and the step key."""
    assert hooks.corrupt_step is not None
    run_id = _id("corrupt-step")
    await store.create_run(_run(run_id))
    await store.put_steps([_step(run_id, "0/fine"), _step(run_id, "1/broken")])
    await _maybe_await(hooks.corrupt_step(store, run_id, "1/broken"))
    exc = await _raises(StoreError, store.load_steps(run_id), "load_steps with a corrupt step")
    assert run_id in str(exc) and "1/broken" in str(exc), f"the error should name run and key: {exc}"


_Check = Callable[[Store, _Hooks], Awaitable[None]]

CHECKS: dict[str, _Check] = {
    "protocol": check_protocol,
    "create_and_get": check_create_and_get,
    "duplicate_run_id": check_duplicate_run_id,
    "unknown_run": check_unknown_run,
    "list_runs_order": check_list_runs_order,
    "update_and_transitions": check_update_and_transitions,
    "claim_run": check_claim_run,
    "put_steps": check_put_steps,
    "put_steps_atomic": check_put_steps_atomic,
    "completed_write_once": check_completed_write_once,
    "fenced_writes": check_fenced_writes,
    "large_batch": check_large_batch,
    "json_round_trip": check_json_round_trip,
    "state": check_state,
    "reopen": check_reopen,
    "corrupt_run": check_corrupt_run,
    "corrupt_step": check_corrupt_step,
}
"""Every check by name, in the order ``check_store`` runs them."""

_NEEDS = {"reopen": "reopen", "corrupt_run": "corrupt_run", "corrupt_step": "corrupt_step"}


def missing_hook(name: str, hooks: _Hooks) -> str | None:
    """The hook check ``name`` needs and ``hooks`` lacks, or None when it can run."""
    needed = _NEEDS.get(name)
    return needed if needed and getattr(hooks, needed) is None else None


async def run_check(name: str, store_factory: StoreFactory, *, reopen: ReopenHook | None = None,
                    corrupt_run: CorruptRunHook | None = None,
                    corrupt_step: CorruptStepHook | None = None) -> None:
    """Run one check on a fresh store; ``AssertionError`` (or the store's exception) if it fails.
    A check whose hook is missing is a ``UsageError``: ``check_store`` leaves those out."""
    hooks = _Hooks(store_factory, reopen, corrupt_run, corrupt_step)
    if name not in CHECKS:
        raise UsageError(f"no conformance check named {name!r}; known: {', '.join(CHECKS)}")
    if (needed := missing_hook(name, hooks)) is not None:
        raise UsageError(f"conformance check {name!r} needs the {needed!r} hook")
    store = await _fresh(hooks)
    try:
        await CHECKS[name](store, hooks)
    finally:
        await store.close()


async def check_store(store_factory: StoreFactory, *, reopen: ReopenHook | None = None,
                      corrupt_run: CorruptRunHook | None = None,
                      corrupt_step: CorruptStepHook | None = None) -> list[str]:
    """Run every applicable check, each on a fresh store from ``store_factory``; returns the
    names of the checks that ran. Raises ``AssertionError`` naming the first failing check."""
    hooks = _Hooks(store_factory, reopen, corrupt_run, corrupt_step)
    ran = []
    for name in CHECKS:
        if missing_hook(name, hooks) is not None:
            continue
        try:
            await run_check(name, store_factory, reopen=reopen, corrupt_run=corrupt_run, corrupt_step=corrupt_step)
        except AssertionError as exc:
            raise AssertionError(f"store conformance check {name!r} failed: {exc}") from exc
        ran.append(name)
    return ran


class StoreConformance:
    """pytest base class: subclass it (``class TestMyStore(StoreConformance)``) and define a
    ``store_factory`` fixture returning a zero-argument callable that builds a fresh store.
    Define ``reopen``, ``corrupt_run`` and ``corrupt_step`` methods to enable those checks;
    checks without their hook are skipped. Needs pytest-asyncio."""

    reopen: ReopenHook | None = None
    corrupt_run: CorruptRunHook | None = None
    corrupt_step: CorruptStepHook | None = None

    async def _check(self, name: str, store_factory: StoreFactory) -> None:
        hooks = _Hooks(store_factory, self.reopen, self.corrupt_run, self.corrupt_step)
        if (needed := missing_hook(name, hooks)) is not None:
            import pytest

            pytest.skip(f"define {needed}() on {type(self).__name__} to run this check")
        await run_check(name, store_factory, reopen=self.reopen, corrupt_run=self.corrupt_run,
                        corrupt_step=self.corrupt_step)


def _make_test(name: str) -> Callable[[StoreConformance, StoreFactory], Awaitable[None]]:
    async def test(self: StoreConformance, store_factory: StoreFactory) -> None:
        await self._check(name, store_factory)

    test.__name__ = test.__qualname__ = f"test_{name}"
    test.__doc__ = CHECKS[name].__doc__
    return test


for _name in CHECKS:
    setattr(StoreConformance, f"test_{_name}", _make_test(_name))
del _name

__all__ = ["CHECKS", "TRICKY_VALUE", "StoreConformance", "check_store", "run_check"]
