"""A Hypothesis state machine of the journal: generated workflows, crashed and resumed at random.

Each example builds a workflow from generated operations (agent calls, agents with an
idempotent tool, journaled steps, gathers of agents or of steps), runs it once without
a crash for reference, then executes it in *segments*: each segment runs (or resumes)
the run and may die at a generated point, until a last segment finishes it.

Ways to die (in-process stand-ins for what tests/test_crash_matrix.py does with real
processes):

- ``kill``: at the N-th side effect of the segment, before it happens, the "process" dies: no
  code of the run executes any more and every later store write is lost (the run is left
  ``running``, owned by us, so the next segment takes it over with ``force``);
- ``cut_before`` / ``cut_after``: the same death, at the W-th store write (before it is
  applied, or right after);
- ``cancel``: at the N-th side effect the run's task is cancelled (SIGINT-like: it settles
  as ``interrupted``);
- ``fail``: the N-th model call or step raises (the run settles as ``failed``).

Invariants, checked after every segment: a side effect whose journal record was durable
is never executed again; no segment executes the same side effect twice; a completed
record, once durable, is never rewritten (same bytes, let alone another result); a run
whose creation was lost did no work; the same tool call always gets the same idempotency
key. When the run finishes: its output equals the uncrashed output, and every side effect
ran exactly once plus once per segment that executed it without making it durable.
Runs on MemoryStore and SQLite (a temp file).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from baton.agent import Agent
from baton.context import RunContext
from baton.errors import RunNotFound, UsageError
from baton.messages import ModelRequest, ModelResponse, ToolResultBlock
from baton.runtime.engine import Engine
from baton.stores.base import Owner, RunRecord, StepRecord, Store, Transition
from baton.stores.memory import MemoryStore
from baton.stores.sqlite import SQLiteStore
from baton.testing import Reply, ScriptedModel, text, tool_call
from baton.tools import Tool, ToolContext, tool

RUN_ID = "prop-run"
Identity = tuple[str, str, int]
"""(kind, name, turn): a side effect, e.g. ("model", "a3_1", 0), ("step", "s2", 0), ("tool", "a1_0", 0)."""


class Crash(BaseException):  # noqa: N818 - a BaseException, like a kill: no ``except Exception`` swallows it
    """The simulated process died here."""


def note(message: str) -> None:
    """A Hypothesis statistics event (``--hypothesis-show-statistics``), when inside a Hypothesis test."""
    if currently_in_test_context():
        event(message)


def digest(s: str) -> str:
    return hashlib.sha1(s.encode()).hexdigest()[:8]


# --- the world: side effects, deaths, and a store that dies with the process -----------------


@dataclass
class World:
    """What is outside the run: side effects that happened, and whether the 'process' is dead."""

    segment: int = 0
    executions: list[tuple[int, Identity]] = field(default_factory=list)
    idempotency_keys: dict[Identity, set[str]] = field(default_factory=dict)
    writes: list[StepRecord] = field(default_factory=list)
    """Every step record the store accepted, in order (to check completed records are write-once)."""
    universe: set[Identity] = field(default_factory=set)
    """The side effects of the uncrashed run."""
    probe: Any = None
    """async () -> identities durable in the store right now (None: do not check ordering)."""
    violations: list[str] = field(default_factory=list)
    # per segment
    mode: str | None = None
    at: int = 0
    effects_seen: int = 0
    writes_seen: int = 0
    fired: bool = False
    dead: bool = False
    died: asyncio.Event | None = None
    task: asyncio.Task[Any] | None = None

    def begin(self, mode: str | None, at: int) -> None:
        self.segment += 1
        self.mode, self.at = mode, at
        self.effects_seen = self.writes_seen = 0
        self.fired = self.dead = False
        self.died = asyncio.Event()
        self.task = None

    def die(self) -> None:
        self.dead = True
        assert self.died is not None
        self.died.set()
        raise Crash(f"simulated crash in segment {self.segment}")

    async def effect_point(self, kind: str) -> None:
        """Called right before a side effect; may crash, cancel or fail instead of it."""
        if self.dead:
            raise Crash("the process is dead")
        self.effects_seen += 1
        if self.fired or self.mode not in ("kill", "cancel", "fail") or self.effects_seen < self.at:
            return
        if self.mode == "fail" and kind == "tool":
            return  # a tool's exception is a tool *result*; fail a later model call or step instead
        self.fired = True
        if self.mode == "kill":
            self.die()
        if self.mode == "cancel":
            assert self.task is not None
            self.task.cancel()
            for _ in range(100):  # the cancellation lands here, before the effect
                await asyncio.sleep(0)
            raise AssertionError("cancellation did not arrive")
        raise RuntimeError(f"scripted failure at side effect {self.effects_seen}")

    async def executed(self, identity: Identity, idempotency_key: str | None = None) -> None:
        """A side effect happens now. Everything it depends on must already be durable."""
        if self.probe is not None:
            missing = sorted(prerequisites(identity, self.universe) - await self.probe())
            if missing:
                self.violations.append(f"{identity} ran before these were durable: {missing}")
        self.executions.append((self.segment, identity))
        if idempotency_key is not None:
            self.idempotency_keys.setdefault(identity, set()).add(idempotency_key)

    def before_write(self) -> None:
        if self.dead:
            raise Crash("the process is dead: the write is lost")
        self.writes_seen += 1
        if not self.fired and self.mode == "cut_before" and self.writes_seen >= self.at:
            self.fired = True
            self.die()

    def after_write(self) -> None:
        if not self.fired and self.mode == "cut_after" and self.writes_seen >= self.at:
            self.fired = True
            self.die()


class DyingStore:
    """Delegates to a real store; every write goes through the world's death checks."""

    def __init__(self, inner: Store, world: World) -> None:
        self.inner, self.world, self.url = inner, world, inner.url

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        return None  # the segment closes the real store itself

    async def create_run(self, run: RunRecord) -> None:
        self.world.before_write()
        await self.inner.create_run(run)
        self.world.after_write()

    async def get_run(self, run_id: str) -> RunRecord:
        return await self.inner.get_run(run_id)

    async def list_runs(self, limit: int = 50) -> list[RunRecord]:
        return await self.inner.list_runs(limit)

    async def update_run(self, run: RunRecord, *, transition: str | None = None,
                         detail: dict[str, Any] | None = None, owner_token: str | None = None) -> None:
        self.world.before_write()
        await self.inner.update_run(run, transition=transition, detail=detail, owner_token=owner_token)
        self.world.after_write()

    async def claim_run(self, run_id: str, owner: Owner, *, expected_token: str | None) -> bool:
        self.world.before_write()
        ok = await self.inner.claim_run(run_id, owner, expected_token=expected_token)
        self.world.after_write()
        return ok

    async def put_steps(self, steps: list[StepRecord], *, owner_token: str | None = None) -> None:
        self.world.before_write()
        await self.inner.put_steps(steps, owner_token=owner_token)
        self.world.writes.extend(StepRecord.from_dict(s.to_dict()) for s in steps)
        self.world.after_write()

    async def load_steps(self, run_id: str) -> list[StepRecord]:
        return await self.inner.load_steps(run_id)

    async def transitions(self, run_id: str) -> list[Transition]:
        return await self.inner.transitions(run_id)

    async def put_state(self, namespace: str, key: str, value: Any, ttl_s: float | None = None) -> None:
        self.world.before_write()
        await self.inner.put_state(namespace, key, value, ttl_s)
        self.world.after_write()

    async def get_state(self, namespace: str, key: str) -> Any:
        return await self.inner.get_state(namespace, key)


# --- generated workflows -----------------------------------------------------------------------

Op = tuple[Any, ...]
ops_strategy = st.lists(
    st.one_of(
        st.just(("agent",)),
        st.just(("tool",)),
        st.just(("step",)),
        st.tuples(st.just("gather"), st.integers(2, 4)),
        st.tuples(st.just("gather_steps"), st.integers(2, 3)),
    ),
    min_size=1, max_size=6,
)


class CountingModel:
    """A ScriptedModel whose every answered request is a counted side effect."""

    provider = "scripted"

    def __init__(self, world: World) -> None:
        self.world = world
        self.inner = ScriptedModel()
        self.inner.add_rule(reply=self._reply)

    @staticmethod
    def _reply(req: ModelRequest) -> Reply:
        system = str(req.system)
        last = req.messages[-1]
        results = [b for b in last.content if isinstance(b, ToolResultBlock)]
        if results:
            return text(f"T({digest(system + results[0].content)})")
        if system.endswith("uses bump"):
            return tool_call("bump", {"x": digest(last.text)})
        return text(f"R({digest(system + last.text)})")

    async def complete(self, request: ModelRequest) -> ModelResponse:
        await self.world.effect_point("model")
        agent = str(request.system).split()[1]
        # Spread the concurrent calls of a gather over a few loop turns, so they finish out of order.
        for _ in range(int(digest(agent), 16) % 3):
            await asyncio.sleep(0)
        if self.world.dead:
            raise Crash("the process is dead")
        await self.world.executed(("model", agent, (len(request.messages) - 1) // 2))
        return await self.inner.complete(request)

    async def aclose(self) -> None:
        return None


def build_workflow(ops: list[Op], world: World) -> Any:
    async def bump(ctx: ToolContext, x: str) -> str:
        """Bump a counter (idempotent by key).

        Args:
            x: what to bump.
        """
        await world.effect_point("tool")
        await world.executed(("tool", ctx.agent, 0), ctx.idempotency_key)
        return f"bumped {x}"

    bump_tool: Tool = tool(bump, name="bump")

    def agent(name: str, with_tool: bool = False) -> Agent:
        return Agent(name, system=f"agent {name}" + (" uses bump" if with_tool else ""), model="claude-haiku-4-5",
                     tools=[bump_tool] if with_tool else [], max_tokens=64)

    async def effect(label: str, value: str) -> str:
        await world.effect_point("step")
        await world.executed(("step", label, 0))
        return f"{label}:{digest(value)}"

    async def workflow(ctx: RunContext, input: Any) -> Any:
        value = str(input)
        trail: list[str] = []
        for j, op in enumerate(ops):
            kind = op[0]
            if kind in ("agent", "tool"):
                value = (await ctx.call(agent(f"a{j}_0", kind == "tool"), f"op{j}|{value}")).output
            elif kind == "step":
                value = await ctx.step(f"s{j}", effect, f"s{j}", value)
            elif kind == "gather":
                outs = await ctx.gather(*(ctx.call(agent(f"a{j}_{b}"), f"op{j}.{b}|{value}") for b in range(op[1])))
                value = "+".join(o.output for o in outs)
            else:
                outs = await ctx.gather(*(ctx.step(f"s{j}_{b}", effect, f"s{j}_{b}", value) for b in range(op[1])))
                value = "+".join(outs)
            trail.append(value)
        return {"final": value, "trail": trail}

    return workflow


def op_index(identity: Identity) -> int:
    return int(re.match(r"[as](\d+)", identity[1]).group(1))  # type: ignore[union-attr]


def prerequisites(identity: Identity, universe: set[Identity]) -> set[Identity]:
    """What must be durable before ``identity`` may run: every side effect of the earlier
    operations, and within a tool-using agent the turns before (m0 -> tool -> m1)."""
    kind, name, turn = identity
    need = {i for i in universe if op_index(i) < op_index(identity)}
    if kind == "tool":
        need.add(("model", name, 0))
    if kind == "model" and turn == 1:
        need |= {("model", name, 0), ("tool", name, 0)}
    return need


def identity_of(rec: StepRecord) -> Identity | None:
    if rec.status != "completed":
        return None
    if rec.kind == "model":
        return ("model", rec.name, int(rec.key.rsplit("/m", 1)[1]))
    if rec.kind == "step":
        return ("step", rec.name, 0)
    if rec.kind == "tool":
        return ("tool", str(rec.meta["agent"]), 0)
    return None


# --- the state machine -------------------------------------------------------------------------


crash_strategy = st.one_of(
    st.tuples(st.sampled_from(["kill", "cancel", "fail"]), st.integers(1, 12)),
    st.tuples(st.sampled_from(["cut_before", "cut_after"]), st.integers(1, 20)),
)


class JournalMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="baton-journal-props-"))
        self.memory = MemoryStore()
        self.world = World()
        self.done = False
        self.output: Any = None
        self.durable: dict[str, StepRecord] = {}
        """Completed records durable before the current segment."""
        self.segments: list[dict[str, Any]] = []

    # -- plumbing --

    def _store(self) -> Store:
        return self.memory if self.kind == "memory" else SQLiteStore(f"sqlite:///{self.tmp}/journal.db")

    async def _segment(self, mode: str | None, at: int, force: bool) -> tuple[str, Any]:
        world = self.world
        loop = asyncio.get_running_loop()
        # A dead process reports nothing: tasks that died with it are not errors to log.
        loop.set_exception_handler(lambda lp, ctx: None if isinstance(ctx.get("exception"), Crash)
                                   else lp.default_exception_handler(ctx))
        world.begin(mode, at)
        inner = self._store()
        await inner.open()
        async def durable_now() -> set[Identity]:
            return {i for rec in await inner.load_steps(RUN_ID) if (i := identity_of(rec)) is not None}

        world.probe = durable_now
        try:
            store = DyingStore(inner, world)
            engine = Engine(store=store, model=CountingModel(world))
            try:
                await inner.get_run(RUN_ID)
                exists = True
            except RunNotFound:
                exists = False
            if exists:
                coro = engine.resume(RUN_ID, self.workflow, force=force)
            else:
                coro = engine.run(self.workflow, "topic", run_id=RUN_ID)
            task = world.task = asyncio.ensure_future(coro)
            assert world.died is not None
            died = asyncio.ensure_future(world.died.wait())
            await asyncio.wait({task, died}, return_when=asyncio.FIRST_COMPLETED, timeout=30)
            if not task.done():
                task.cancel()  # the process is dead: whatever was still running stops here
            try:
                result = await asyncio.wait_for(task, 30)
            except (Crash, asyncio.CancelledError) as exc:
                return ("died" if world.dead else "interrupted", repr(exc))
            finally:
                died.cancel()
            return (result.status, result.output)
        except Crash as exc:
            return ("died", repr(exc))
        finally:
            if inner is not self.memory:
                await inner.close()

    def _load(self) -> tuple[RunRecord | None, dict[str, StepRecord]]:
        async def load() -> tuple[RunRecord | None, list[StepRecord]]:
            store = self._store()
            await store.open()
            try:
                try:
                    return await store.get_run(RUN_ID), await store.load_steps(RUN_ID)
                except RunNotFound:
                    return None, []
            finally:
                if store is not self.memory:
                    await store.close()

        run, steps = asyncio.run(load())
        return run, {s.key: s for s in steps}

    def _execute(self, mode: str | None, at: int) -> None:
        force = bool(self.segments) and self.segments[-1]["status"] == "died"
        status, out = asyncio.run(self._segment(mode, at, force))
        run, steps = self._load()
        segment = self.world.segment
        executed = Counter(i for s, i in self.world.executions if s == segment)
        before = self.durable
        # Book-keeping first, so that teardown after a failed check does not trip over it.
        self.durable = {k: r for k, r in steps.items() if r.status == "completed"}
        self.segments.append({"mode": mode, "at": at, "status": status, "executed": executed,
                              "durable": {identity_of(r) for r in self.durable.values()} - {None}})
        # (Dying right after the final status write still leaves a finished run.)
        finished = run is not None and run.status == "succeeded"
        if finished:
            assert run is not None
            self.done, self.output = True, run.output
        note(f"segment: {mode or 'clean'} -> {status}")

        # Recorded before work: nothing ran before what it depends on was durable.
        assert not self.world.violations, self.world.violations
        # No side effect runs twice in one segment.
        assert all(c == 1 for c in executed.values()), executed
        # A side effect whose record was durable is never executed again.
        again = sorted(i for i in executed if i in {identity_of(r) for r in before.values()})
        assert not again, f"durable steps executed again in segment {segment}: {again}"
        # A durable completed record is never rewritten.
        for key, rec in before.items():
            assert key in steps and steps[key].to_dict() == rec.to_dict(), f"record {key} was rewritten"
        if run is None:
            assert not executed, "work was done for a run whose creation was never recorded"
        if status == "succeeded":
            assert finished and out == self.output
        else:
            assert status in ("died", "interrupted", "failed"), (status, out)
        if finished:
            self._check_finished()

    def _check_finished(self) -> None:
        assert self.output == self.reference_output
        total = Counter(i for _, i in self.world.executions)
        assert set(total) == set(self.reference_effects)
        for identity, count in total.items():
            # Once, plus once for each earlier segment that ran it but died before it was durable.
            lost = sum(1 for seg in self.segments[:-1] if seg["executed"][identity] and identity not in seg["durable"])
            assert count == 1 + lost, (identity, count, lost, self.segments)
        note(f"finished; side effects re-run after a crash: {sum(total.values()) - len(total)}")
        for identity, keys in self.world.idempotency_keys.items():
            assert len(keys) == 1, f"tool call {identity} ran under different idempotency keys: {keys}"

    # -- rules --

    @initialize(ops=ops_strategy, kind=st.sampled_from(["memory", "sqlite"]))
    def setup(self, ops: list[Op], kind: str) -> None:
        self.kind = kind
        self.workflow = build_workflow(ops, self.world)
        ref_world = World()
        ref_world.begin(None, 0)
        engine = Engine(store=MemoryStore(), model=CountingModel(ref_world))
        result = asyncio.run(engine.run(build_workflow(ops, ref_world), "topic", run_id=RUN_ID))
        assert result.status == "succeeded"
        self.reference_output = result.output
        self.reference_effects = Counter(i for _, i in ref_world.executions)
        assert all(c == 1 for c in self.reference_effects.values())
        self.world.universe = set(self.reference_effects)

    @rule(crash=crash_strategy)
    def run_and_crash(self, crash: tuple[str, int]) -> None:
        """One more segment that may die; once the run has finished, check it stays finished.

        (One rule with no precondition: whether a crash point is reached can depend on thread
        timing with SQLite, and Hypothesis needs the same draws whatever happened.)
        """
        if self.done:
            self.resume_after_success_is_refused()
        else:
            self._execute(*crash)

    def run_to_the_end(self) -> None:
        """The last segment (teardown): no crash, the run must finish."""
        self._execute(None, 0)
        assert self.done

    def resume_after_success_is_refused(self) -> None:
        """A finished run cannot be resumed, and asking does no work."""
        async def attempt() -> None:
            self.world.begin(None, 0)
            store = self._store()
            await store.open()
            try:
                with pytest.raises(UsageError, match="nothing to resume"):
                    await Engine(store=store, model=CountingModel(self.world)).resume(RUN_ID, self.workflow)
            finally:
                if store is not self.memory:
                    await store.close()

        asyncio.run(attempt())
        assert not [i for s, i in self.world.executions if s == self.world.segment]

    @invariant()
    def completed_records_are_write_once(self) -> None:
        first: dict[str, StepRecord] = {}
        for rec in self.world.writes:
            prior = first.get(rec.key)
            if prior is not None:
                assert rec.to_dict() == prior.to_dict(), f"completed record {rec.key} rewritten: {prior} -> {rec}"
            elif rec.status == "completed":
                first[rec.key] = rec

    def teardown(self) -> None:
        try:
            if not self.done and hasattr(self, "workflow"):
                self.run_to_the_end()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


JournalMachine.TestCase.settings = settings(
    max_examples=30, stateful_step_count=5, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_journal_state_machine = JournalMachine.TestCase


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@pytest.mark.parametrize("mode", ["kill", "cut_before", "cut_after", "cancel", "fail"])
def test_each_way_to_die_then_resume(kind: str, mode: str) -> None:
    """Every crash mode on a fixed mixed workflow, on both stores (a deterministic floor under the machine)."""
    machine = JournalMachine()
    try:
        machine.setup([("agent",), ("gather", 3), ("tool",), ("gather_steps", 2), ("step",)], kind)
        machine.run_and_crash((mode, 4))
        assert machine.segments[-1]["status"] in ("died", "interrupted", "failed")
        machine.run_and_crash((mode, 3))
        machine.completed_records_are_write_once()
        if not machine.done:
            machine.run_to_the_end()
        machine.completed_records_are_write_once()
        assert machine.done and machine.output == machine.reference_output
    finally:
        machine.teardown()
