"""RunContext: what a workflow function gets. Three primitives do all the work:

- ``ctx.call(agent, input)``: one agent call (its tool loop), journaled.
- ``ctx.gather(*calls)``: run several concurrently.
- ``ctx.step(name, fn, ...)``: any other side effect or nondeterminism, journaled.

Each primitive takes its journal key *when it is called*, from its position in the
workflow (a counter per scope), never from completion order: so a resumed run asks
for the same keys in the same order and completed steps are returned from the journal.
The context itself is never sent to a model.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import orjson

from baton.agent import Agent, AgentResult, output_from_json, run_agent_loop
from baton.errors import (
    ApprovalRequired,
    BatonError,
    BudgetExceeded,
    DepthExceeded,
    ReplayDivergence,
    RunOwnedElsewhere,
    RunSuspended,
    RunTimeout,
    StoreError,
    UsageError,
)
from baton.messages import ModelRequest, ModelResponse, ToolResultBlock, ToolUseBlock, Usage
from baton.models.base import Model
from baton.observe import events as ev
from baton.observe.events import new_id
from baton.runtime.budget import Limits
from baton.runtime.engine import set_default_scope
from baton.runtime.protocols import Priority as Priority
from baton.runtime.runtime import Runtime
from baton.stores.base import StepRecord, Store
from baton.tools import Tool

if TYPE_CHECKING:  # memory loads on first use
    from baton.memory import RunMemory


@dataclass(frozen=True, slots=True)
class HandoffNote:
    """An immutable snapshot of state passed between agents: what was asked, found, failed, what is next."""

    from_agent: str
    to_agent: str
    asked: str
    found: Mapping[str, Any] = field(default_factory=dict)
    failed: tuple[str, ...] = ()
    next: str = ""
    depth: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"from_agent": self.from_agent, "to_agent": self.to_agent, "asked": self.asked,
                "found": dict(self.found), "failed": list(self.failed), "next": self.next, "depth": self.depth}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HandoffNote:
        return cls(d["from_agent"], d["to_agent"], d["asked"], MappingProxyType(dict(d.get("found") or {})),
                   tuple(d.get("failed") or ()), d.get("next", ""), int(d.get("depth", 0)))

    def render(self) -> str:
        """How the receiving agent sees it."""
        lines = [f"Handoff from {self.from_agent}.", f"Asked: {self.asked}"]
        if self.found:
            lines.append("Found: " + orjson.dumps(dict(self.found)).decode())
        if self.failed:
            lines.append("Failed: " + "; ".join(self.failed))
        if self.next:
            lines.append(f"Next: {self.next}")
        return "\n".join(lines)


Handoff = HandoffNote
"""Old name of ``HandoffNote`` (kept: ``baton.Handoff`` was public)."""


@dataclass(frozen=True, slots=True)
class Decision:
    """A human's answer to an approval request."""

    approved: bool
    edit: Any = None
    by: str | None = None
    note: str | None = None


class RunContext:
    """The handle a workflow uses to do anything durable. One per scope (nested workflows get a child)."""

    def __init__(self, runtime: Runtime, *, input: Any = None, prefix: str = "", depth: int = 0,
                 chain: tuple[str, ...] = (), span_id: str | None = None, priority: Priority = "normal",
                 state: HandoffNote | None = None) -> None:
        self._runtime = runtime
        self.input = input
        self.depth = depth
        self.chain = chain
        self.span_id = span_id or runtime.run_span
        self.priority: Priority = priority
        self.state = state
        self._prefix = prefix
        self._counter = 0

    @property
    def run_id(self) -> str:
        return self._runtime.run_id

    @property
    def usage(self) -> Usage:
        """Usage of the whole run so far."""
        return self._runtime.budget.usage

    @property
    def cost_usd(self) -> float:
        return self._runtime.budget.cost_usd

    @property
    def limits(self) -> Limits:
        return self._runtime.budget.limits

    @property
    def max_depth(self) -> int:
        return self._runtime.budget.limits.max_depth

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        """Put a pattern-level event (plan.invalid, bus.message...) on the run's event stream."""
        self._runtime.emit(kind, new_id(), self.span_id, data)

    def warn(self, source: str, code: str, message: str) -> None:
        """Record that the run may succeed but not as asked (e.g. a draft the critics never approved).

        The warning goes into the run's result (``warnings``), its stored record and the
        event stream (``run.warning``). Patterns warn from journaled outcomes, so a resumed
        run reports the same warnings again.
        """
        warning = {"source": source, "code": code, "message": message}
        self._runtime.warnings.append(warning)
        self.emit(ev.RUN_WARNING, warning)

    def grammar_bound(self, agent: Agent) -> bool:
        """Whether ``agent``'s model decodes structured output under a grammar (the embedded
        local model): a pattern may then give it a tighter schema than it gives Claude."""
        return bool(getattr(self.model_adapter(agent.model), "grammar_bound", False))

    def model_adapter(self, model_id: str) -> Model | None:
        """The adapter that would serve ``model_id`` in this run (None: it cannot be bound now;
        the call itself reports why)."""
        try:
            return self._runtime.bind_model(model_id).model
        except BatonError:
            return None

    def ask_model(self, agent: Agent, key: str,
                  request: ModelRequest) -> Awaitable[tuple[ModelResponse, float | None]]:
        """One model turn of ``agent`` at journal ``key``, through the run's model call path:
        the response and its cost (None: unpriced)."""
        return self._runtime.models.call(self, agent, key, request)

    def run_tools(self, agent: Agent, prefix: str, uses: list[ToolUseBlock],
                  tools: Mapping[str, Tool]) -> Awaitable[list[ToolResultBlock]]:
        """Run the tool calls of one model turn (journal keys ``PREFIX.0``, ``PREFIX.1``...)
        concurrently through the run's tool call path; results in request order."""
        return self._runtime.tools.run_all(self, agent, prefix, uses, tools)

    @property
    def store(self) -> Store | None:
        """The run's store (None: this run keeps no journal)."""
        journal = self._runtime.journal
        return None if journal is None else journal.store

    @property
    def tenant(self) -> str | None:
        """The service tenant the run belongs to (None outside the service)."""
        return self._runtime.tenant

    def _check_depth(self, depth: int, chain: tuple[str, ...], what: str = "delegation") -> None:
        """Refuse to go ``depth`` levels deep past ``max_depth`` (the error names the chain)."""
        if depth > self.max_depth:
            raise DepthExceeded(f"{what} depth {depth} exceeds the limit of {self.max_depth}: " + " > ".join(chain),
                                chain=list(chain))

    def next_key(self, label: str = "") -> str:
        """Take the next position key in this scope (deterministic, by call order)."""
        n = self._counter
        self._counter += 1
        return f"{self._prefix}{n}{'.' + label if label else ''}"

    # --- agents -------------------------------------------------------------------

    def call(self, agent: Agent, input: Any, *, tools: list[Tool] | None = None,
             priority: Priority | None = None) -> Awaitable[AgentResult]:
        """Run ``agent`` on ``input``. The key is taken now, so ``gather`` order is deterministic."""
        key = self.next_key()
        return self._call(key, agent, input, tools, priority or self.priority)

    async def _call(self, key: str, agent: Agent, input: Any, tools: list[Tool] | None,
                    priority: Priority) -> AgentResult:
        rt = self._runtime
        chain = (*self.chain, agent.name)
        self._check_depth(self.depth + 1, chain)
        rec = rt.check_agent_replay(key, agent.name)
        if rec is not None:
            rt.report_replayed(rec, self.span_id)
            r = rec.result
            return AgentResult(agent.name, output_from_json(agent, r["output"]), Usage.from_dict(rec.usage),
                               rec.cost_usd, int(r.get("turns", 0)))
        span = new_id()
        rt.emit(ev.AGENT_START, span, self.span_id, {"agent": agent.name, "key": key, "depth": self.depth + 1,
                                                     "input": input if isinstance(input, str) else None})
        inner = RunContext(rt, input=input, prefix=f"{key}/", depth=self.depth + 1, chain=chain, span_id=span,
                           priority=priority, state=self.state)
        started = time.time()
        t0 = time.perf_counter()
        try:
            if agent.agent_timeout_s is None:
                result = await run_agent_loop(inner, key, agent, input, tools)
            else:
                try:
                    async with asyncio.timeout(agent.agent_timeout_s):
                        result = await run_agent_loop(inner, key, agent, input, tools)
                except TimeoutError as exc:
                    raise RunTimeout(f"agent {agent.name!r} exceeded its timeout of {agent.agent_timeout_s}s "
                                     f"(chain: {' > '.join(chain)})") from exc
        except BaseException as exc:
            rt.emit(ev.AGENT_END, span, self.span_id, {"agent": agent.name, "key": key, "status": "error",
                                                       "duration_s": time.perf_counter() - t0,
                                                       "error_type": type(exc).__name__})
            if _agent_failed(exc):
                # Journaled so `baton stats` can blame the agent and prompt version that failed;
                # a resume runs the agent again and its completed record replaces this one.
                with contextlib.suppress(Exception):  # best effort: the agent's own error is the one to raise
                    await rt.commit(StepRecord(rt.run_id, key, "agent", agent.name, "failed", started_at=started,
                                               ended_at=time.time(), meta={
                                                   "prompt_version": agent.prompt_version, "model": agent.model,
                                                   "depth": self.depth + 1, "error_type": type(exc).__name__}))
            raise
        await rt.commit(StepRecord(rt.run_id, key, "agent", agent.name, "completed",
                                   result={"output": result.output_json(), "turns": result.turns},
                                   started_at=started, ended_at=time.time(), usage=result.usage.to_dict(),
                                   cost_usd=result.cost_usd, meta={"prompt_version": agent.prompt_version,
                                                                   "model": agent.model, "depth": self.depth + 1}))
        rt.emit(ev.AGENT_END, span, self.span_id, {"agent": agent.name, "key": key, "status": "ok",
                                                   "duration_s": time.perf_counter() - t0,
                                                   "usage": result.usage.to_dict(), "cost_usd": result.cost_usd,
                                                   "output": result.text})
        return result

    async def gather(self, *aws: Awaitable[Any], return_exceptions: bool = False) -> list[Any]:
        """Await several calls concurrently. On the first failure the rest are cancelled
        (their completed steps stay journaled) unless ``return_exceptions``."""
        if return_exceptions:
            return list(await asyncio.gather(*aws, return_exceptions=True))
        tasks = [asyncio.ensure_future(a) for a in aws]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    # --- steps ----------------------------------------------------------------------

    def step(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Awaitable[Any]:
        """Run ``fn(*args, **kwargs)`` once per run: its JSON result is journaled and replayed."""
        key = self.next_key()
        return self._step(key, name, fn, args, kwargs)

    async def _step(self, key: str, name: str, fn: Callable[..., Any], args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        rt = self._runtime
        rec = rt.check_replay(key, "step", name)
        if rec is not None:
            rt.report_replayed(rec, self.span_id)
            return rec.result
        span = new_id()
        rt.emit(ev.STEP_START, span, self.span_id, {"name": name, "key": key})
        started = time.time()
        try:
            result = await rt.run_step(key, fn, args, kwargs)
        except BaseException as exc:
            rt.emit(ev.STEP_END, span, self.span_id, {"name": name, "key": key, "status": "error",
                                                      "duration_s": time.time() - started,
                                                      "error_type": type(exc).__name__})
            raise
        if hasattr(result, "model_dump"):
            result = result.model_dump(mode="json")
        await rt.commit(StepRecord(rt.run_id, key, "step", name, "completed", result=result,
                                   started_at=started, ended_at=time.time()))
        rt.emit(ev.STEP_END, span, self.span_id, {"name": name, "key": key, "status": "ok",
                                                  "duration_s": time.time() - started})
        return result

    async def now(self) -> float:
        """Wall-clock time, journaled so a resumed or replayed run sees the same value."""
        return float(await self.step("now", time.time))

    async def uuid(self) -> str:
        return str(await self.step("uuid", new_id, 16))

    def child(self, label: str, *, state: HandoffNote | None = None) -> RunContext:
        """A nested scope (a sub-workflow, a sub-orchestrator): its own key space, one level deeper."""
        key = self.next_key(label)
        self._check_depth(self.depth + 1, (*self.chain, label))
        return RunContext(self._runtime, input=self.input, prefix=f"{key}/", depth=self.depth + 1,
                          chain=(*self.chain, label), span_id=self.span_id, priority=self.priority,
                          state=state or self.state)

    def named(self, name: str) -> RunContext:
        """A scope keyed by ``name`` instead of position, at the same depth.

        For work whose start order depends on data (DAG nodes, bus messages): the key
        then depends on what the work is, not on when it happened to start.
        """
        if "/" in name:
            raise ValueError(f"scope name {name!r} may not contain '/'")
        return RunContext(self._runtime, input=self.input, prefix=f"{self._prefix}{name}/", depth=self.depth,
                          chain=self.chain, span_id=self.span_id, priority=self.priority, state=self.state)

    # --- the shared blackboard ---------------------------------------------------------

    def _board(self) -> Store:
        store = self.store
        if store is None:
            raise UsageError("the shared blackboard needs a store (this run keeps no journal)")
        return store

    async def share(self, key: str, value: Any, *, ttl_s: float | None = None) -> None:
        """Publish ``value`` under ``key`` on this run's blackboard in the store (Redis: across processes).

        Journaled as a step, so a resumed run does not publish twice.
        """
        board = self._board()
        rt = self._runtime

        async def write() -> None:
            # Emitted inside the step, so a resumed run that skips the write does not report it again.
            await board.put_state(self.run_id, key, value, ttl_s)
            rt.emit(ev.STATE_CHANGE, new_id(), self.span_id, {"key": key, "op": "share", "ttl_s": ttl_s})

        await self.step(f"share:{key}", write)

    def memory(self, namespace: str) -> RunMemory:
        """Long-term memory in ``namespace`` (kept across runs): ``put/get/list/delete``, each a
        journaled step (``baton.memory.RunMemory``)."""
        from baton.memory import RunMemory  # deferred: loads on first use

        return RunMemory(self, namespace)

    async def shared(self, key: str) -> Any:
        """Read ``key`` from this run's blackboard; journaled, so a resumed run reads the same value."""
        board = self._board()
        return await self.step(f"shared:{key}", board.get_state, self.run_id, key)

    # --- handoffs and humans ----------------------------------------------------------

    async def record_handoff(self, from_agent: str, to_agent: str, *, asked: str, found: Mapping[str, Any] | None = None,
                      failed: Iterable[str] = (), next: str = "") -> HandoffNote:
        """Record an immutable handoff snapshot; the receiving scope sees it as ``ctx.state``."""
        snapshot = HandoffNote(from_agent, to_agent, asked, MappingProxyType(dict(found or {})), tuple(failed), next,
                           self.depth + 1)
        self._check_depth(snapshot.depth, (*self.chain, to_agent), what="handoff")
        stored = await self.step(f"handoff:{from_agent}>{to_agent}", snapshot.to_dict)
        self._runtime.emit(ev.HANDOFF_RECORDED, new_id(), self.span_id, {"from": from_agent, "to": to_agent,
                                                               "depth": snapshot.depth})
        self.state = HandoffNote.from_dict(stored)
        return self.state

    async def approve(self, name: str, request: Any = None) -> Decision:
        """Pause the run until a human approves or rejects (``baton approve``); then continue from here."""
        rt = self._runtime
        key = self.next_key(f"approval:{name}")
        if rt.journal is not None:
            done = rt.journal.completed(key)
            if done is not None:
                r = done.result
                rt.emit(ev.APPROVAL_DECIDED, new_id(), self.span_id, {
                    "step": key, "name": name, "approved": bool(r.get("approved")), "by": r.get("by"),
                    "edited": r.get("edit") is not None, "decided_at": done.ended_at})
                return Decision(bool(r.get("approved")), r.get("edit"), r.get("by"), r.get("note"))
            await rt.commit(StepRecord(rt.run_id, key, "approval", name, "started", result={"request": request},
                                       started_at=time.time()))
        rt.emit(ev.APPROVAL_REQUESTED, new_id(), self.span_id, {"step": key, "name": name})
        decided = await rt.await_decision(self.span_id, key, name, request)  # an engine that waits (Temporal)
        if decided is not None:
            return Decision(bool(decided.get("approved")), decided.get("edit"), decided.get("by"), decided.get("note"))
        raise ApprovalRequired(f"step {key} ({name}) awaits approval: baton approve {rt.run_id} {key} "
                               f"--approve | --reject [--edit TEXT]", step=key, request=request)


def _agent_failed(exc: BaseException) -> bool:
    """Whether ``exc`` is the agent's own failure (not a pause, a budget, the store or a cancel)."""
    return isinstance(exc, Exception) and not isinstance(
        exc, (RunSuspended, BudgetExceeded, StoreError, RunOwnedElsewhere, ReplayDivergence))


set_default_scope(lambda runtime, input: RunContext(runtime, input=input))
