"""The workflow side: a baton run executing inside a Temporal workflow.

The workflow function, its patterns and the agents' tool loops run here unchanged,
with a ``RunContext`` whose runtime (``WorkflowRuntime``) sends every model call,
tool call and ``ctx.step`` effect out as an activity. Temporal's history is the
journal: on replay the activities' results come from it and nothing is sent again.
What runs here is deterministic given those results; step records and events are
emitted for baton's store and sinks, and events are skipped while replaying.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from temporalio import workflow
from temporalio.common import RetryPolicy as TemporalRetry
from temporalio.exceptions import ActivityError, ApplicationError

from baton.context import RunContext
from baton.errors import BatonError, DecisionRequired, StepFailed, UsageError
from baton.messages import ModelRequest, ModelResponse, ToolResultBlock, ToolUseBlock, response_from_dict
from baton.observe import events as ev
from baton.observe.events import Event, EventStream, new_id
from baton.runtime.budget import BudgetTracker, Limits
from baton.runtime.engine import _call_workflow, _error_dict, _json_output, _status_for, _with_wall_time
from baton.runtime.journal import Journal
from baton.runtime.model_calls import request_chars
from baton.runtime.protocols import CallScope, CallSite, RuntimeTool
from baton.runtime.runtime import Runtime
from baton.runtime.tool_calls import ToolCalls
from baton.stores.base import StepRecord
from baton.temporal.codec import AgentView, error_from_dict, request_to_dict
from baton.temporal.context import WorkerContext

if TYPE_CHECKING:
    pass

MODEL, TOOL, STEP, RECORD = "baton.model", "baton.tool", "baton.step", "baton.record"
"""Activity names (the worker registers these)."""


@dataclass
class CallOptions:
    """How activities are scheduled; the client chooses, the run's arguments carry them."""

    heartbeat_s: float = 30.0
    """A worker that dies mid-call is noticed after this long; the call then runs on another worker."""
    call_timeout_s: float = 3600.0
    """Upper bound of one activity (a model call with all of baton's retries, a tool call)."""
    max_attempts: int = 5
    """Temporal re-runs a call only when its worker was lost (heartbeat or timeout), at most this often."""

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> CallOptions:
        """Checked: NaN, infinite, negative or absurd values are a ``UsageError`` naming the option."""
        d = dict(d or {})
        unknown = sorted(set(d) - {"heartbeat_s", "call_timeout_s", "max_attempts"})
        if unknown:
            raise UsageError(f"unknown call option {unknown[0]!r}; expected heartbeat_s, call_timeout_s, "
                             f"max_attempts")
        out = cls()
        for name, high in (("heartbeat_s", 86_400.0), ("call_timeout_s", 7 * 86_400.0)):
            value = d.get(name, getattr(out, name))
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= high:
                raise UsageError(f"call option {name} must be a number of seconds in (0, {high:g}], not {value!r}")
            setattr(out, name, float(value))
        attempts = d.get("max_attempts", out.max_attempts)
        if isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= 100:
            raise UsageError(f"call option max_attempts must be a whole number in [1, 100], not {attempts!r}")
        out.max_attempts = attempts
        return out


class _NoDeadlineBudget(BudgetTracker):
    """The run's budget on the workflow side: the wall-time limit is a durable Temporal timer
    (``asyncio.timeout`` on the workflow's loop), never this process's clock, so replay agrees."""

    @property
    def deadline(self) -> float | None:
        return None


class WorkflowJournal(Journal):
    """The journal seen from the workflow: Temporal's history answers replays, so nothing is
    'completed' here; records committed are collected and written by the next activity."""

    def __init__(self, worker: WorkerContext, run_id: str) -> None:
        super().__init__(worker.store, run_id)
        self.outbox: list[StepRecord] = []

    def completed(self, key: str) -> StepRecord | None:
        return None

    def get(self, key: str) -> StepRecord | None:
        return None

    async def commit(self, record: StepRecord) -> None:
        self.outbox.append(record)

    def take(self) -> list[dict[str, Any]]:
        out, self.outbox = [r.to_dict() for r in self.outbox], []
        return out


# Effects of ``ctx.step`` awaiting their local activity in this process (a function cannot
# travel; a local activity runs in the process that scheduled it).
_PENDING_STEPS: dict[str, tuple[Any, tuple[Any, ...], dict[str, Any]]] = {}
_step_ids = itertools.count()


def take_step(handle: str) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    found = _PENDING_STEPS.pop(handle, None)
    if found is None:
        raise StepFailed(f"step {handle} is not pending in this worker process")
    return found


class WorkflowRuntime(Runtime):
    """A ``Runtime`` whose calls are Temporal activities (the workflow side of a run)."""

    worker: WorkerContext
    workflow_name: str
    options: CallOptions
    outbox: WorkflowJournal
    decisions: dict[str, dict[str, Any]]
    waiting: dict[str, str]

    def setup(self, worker: WorkerContext, workflow_name: str, options: CallOptions, outbox: WorkflowJournal) -> None:
        self.worker, self.workflow_name, self.options, self.outbox = worker, workflow_name, options, outbox
        self.decisions, self.waiting = {}, {}
        self._slots = asyncio.Semaphore(max(1, self.budget.limits.concurrency))
        # The call paths' seam: both hand their calls to this runtime's activities.
        self.models = _ActivityModelCalls(self)  # type: ignore[assignment]
        self._tools = _ActivityToolCalls(self)

    # --- events: emitted once, not again while Temporal replays the history ------------------

    def emit(self, kind: str, span: str, parent: str | None, data: dict[str, Any]) -> None:
        if self.events.wants(kind) and not (workflow.in_workflow() and workflow.unsafe.is_replaying()):
            self.events.emit(Event(kind, self.run_id, self.trace_id, span, parent, data))

    # --- activities ---------------------------------------------------------------------------

    async def activity(self, name: str, args: dict[str, Any], *, local: bool = False) -> Any:
        """Run activity ``name``; a baton error it raised is raised here as the same class."""
        opts = self.options
        retry = TemporalRetry(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=10),
                              maximum_attempts=opts.max_attempts)
        try:
            if local:
                return await workflow.execute_local_activity(
                    name, args, start_to_close_timeout=timedelta(seconds=opts.call_timeout_s), retry_policy=retry)
            return await workflow.execute_activity(
                name, args, start_to_close_timeout=timedelta(seconds=opts.call_timeout_s),
                heartbeat_timeout=timedelta(seconds=opts.heartbeat_s), retry_policy=retry)
        except (ActivityError, ApplicationError) as exc:  # a local activity's failure may come unwrapped
            raise _baton_error(name, exc) from None

    async def record(self, run: dict[str, Any] | None = None, transition: str | None = None,
                     detail: dict[str, Any] | None = None) -> None:
        """Write collected step records (and a change of the run's record) to baton's store."""
        await self.activity(RECORD, {"run_id": self.run_id, "steps": self.outbox.take(), "run": run,
                                     "transition": transition, "detail": detail or {}})

    def _call_args(self, ctx: CallScope, agent: Any, key: str) -> dict[str, Any]:
        return {"run_id": self.run_id, "workflow": self.workflow_name, "key": key, "span": ctx.span_id,
                "priority": ctx.priority, "agent": AgentView.of(agent).to_dict(), "steps": self.outbox.take()}

    async def model_call(self, ctx: CallScope, agent: Any, key: str,
                         request: ModelRequest) -> tuple[ModelResponse, float | None]:
        """Reserve the worst case here (the run's budget lives in the workflow), call in an activity."""
        reservation = self.budget.reserve(request.model, request_chars(request), request.max_tokens)
        try:
            async with self._slots:  # the run's concurrency limit holds across all workers
                out = await self.activity(MODEL, {**self._call_args(ctx, agent, key),
                                                  "request": request_to_dict(request)})
        except BaseException:
            self.budget.release(reservation)
            raise
        response = response_from_dict(out["response"])
        if out["billed"]:
            self.budget.settle(reservation, response.usage, out["cost"])
        else:  # a result-cache hit: nothing was spent
            self.budget.release(reservation)
        return response, out["cost"]

    async def tool_call(self, ctx: CallScope, agent: Any, key: str, use: ToolUseBlock,
                        tool: RuntimeTool) -> ToolResultBlock:
        """One tool call in an activity (the tool runs on a worker that hosts the workflow)."""
        args = {**self._call_args(ctx, agent, key), "tool": tool.name,
                "use": {"id": use.id, "name": use.name, "input": use.input},
                "state": ctx.state.to_dict() if ctx.state is not None else None}
        try:
            out = await self.activity(TOOL, args)
        except DecisionRequired as exc:  # a non-idempotent tool was in flight on a worker that died
            await self.await_decision(ctx.span_id, exc.step or f"{key}#decision", tool.name, None)
            out = await self.activity(TOOL, {**args, "steps": self.outbox.take(), "reload": True})
        return ToolResultBlock(use.id, out["content"], bool(out["is_error"]))

    async def run_step(self, key: str, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """A ``ctx.step`` effect as a local activity: it runs once, its result is in the history."""
        handle = f"{self.run_id}:{key}:{next(_step_ids)}"
        _PENDING_STEPS[handle] = (fn, args, kwargs)
        try:
            return await self.activity(STEP, {"handle": handle}, local=True)
        finally:
            _PENDING_STEPS.pop(handle, None)

    async def await_decision(self, span: str, key: str, name: str, request: Any) -> dict[str, Any] | None:
        """Wait, durably, for the ``decide`` signal naming ``key``; the run shows as awaiting approval."""
        await self.record({"status": "awaiting_approval"}, "awaiting_approval", {"step": key})
        self.waiting[key] = name  # shown by the query once the store says so too
        await workflow.wait_condition(lambda: key in self.decisions)
        decided = self.decisions.pop(key)
        del self.waiting[key]
        now = workflow.time()
        await self.commit(StepRecord(self.run_id, key, "approval", name, "completed", result=decided,
                                     started_at=now, ended_at=now))
        self.emit(ev.APPROVAL_DECIDED, new_id(), span, {
            "step": key, "name": name, "approved": bool(decided.get("approved")), "by": decided.get("by"),
            "edited": decided.get("edit") is not None, "decided_at": now})
        await self.record({"status": "running"}, "decided", {"step": key, "approved": decided.get("approved"),
                                                              "by": decided.get("by")})
        return decided


class _ActivityModelCalls:
    """``Runtime.models`` on the workflow side: each model call is an activity."""

    def __init__(self, rt: WorkflowRuntime) -> None:
        self.rt = rt

    async def call(self, scope: CallScope, site: CallSite, key: str,
                   request: ModelRequest) -> tuple[ModelResponse, float | None]:
        return await self.rt.model_call(scope, site, key, request)

    async def settle_in_flight(self, *, wait: bool = True) -> None:
        """Nothing is in flight here: an activity's answer is in the history or it is re-run."""


class _ActivityToolCalls(ToolCalls):
    """``Runtime.tools`` on the workflow side: a denied tool is answered here, the rest are activities."""

    rt: WorkflowRuntime

    def __init__(self, rt: WorkflowRuntime) -> None:
        super().__init__(rt)
        self.rt = rt

    async def call(self, scope: CallScope, site: CallSite, key: str, use: ToolUseBlock,
                   tool: RuntimeTool | None) -> ToolResultBlock:
        if tool is None:  # denied without leaving the workflow (the event says so)
            return await super().call(scope, site, key, use, None)
        return await self.rt.tool_call(scope, site, key, use, tool)


def _baton_error(activity_name: str, exc: ActivityError | ApplicationError) -> BaseException:
    cause = exc.cause if isinstance(exc, ActivityError) else exc
    if isinstance(cause, ApplicationError) and cause.details and isinstance(cause.details[0], dict):
        return error_from_dict(cause.details[0])
    if isinstance(cause, BatonError):
        return cause
    return StepFailed(f"activity {activity_name} failed: {cause or exc}")


def new_runtime(worker: WorkerContext, run_id: str, workflow_name: str, limits: Limits,
                options: CallOptions, retry: Any) -> WorkflowRuntime:
    """The workflow side's runtime of one run (a fresh one for each replay of the workflow)."""
    outbox = WorkflowJournal(worker, run_id)
    runtime = WorkflowRuntime(run_id, outbox, _NoDeadlineBudget(limits), EventStream(list(worker.sinks)),
                              worker.bind_model, run_span=f"{run_id}-run")
    if retry is not None:
        runtime.retry = retry
    runtime.setup(worker, workflow_name, options, outbox)
    return runtime



def _result(runtime: WorkflowRuntime, status: str, output: Any, error: dict[str, Any] | None,
            started: float) -> dict[str, Any]:
    budget = runtime.budget
    return {"run_id": runtime.run_id, "status": status, "output": output, "usage": budget.usage.to_dict(),
            "cost_usd": round(budget.cost_usd, 6), "model_calls": budget.model_calls,
            "duration_s": round(workflow.time() - started, 3), "error": error, "warnings": list(runtime.warnings)}


async def _record_end(runtime: WorkflowRuntime, result: dict[str, Any]) -> None:
    error = result["error"]
    await runtime.record({k: result[k] for k in ("status", "output", "error", "usage", "cost_usd", "model_calls",
                                                 "warnings")}, result["status"], {"error": error} if error else {})


async def refuse(runtime: WorkflowRuntime, exc: BaseException) -> dict[str, Any]:
    """A run this worker cannot start (an unknown workflow, other content, bad limits): recorded failed."""
    result = _result(runtime, "failed", None, _error_dict(exc), workflow.time())
    await _record_end(runtime, result)
    return result


async def execute(runtime: WorkflowRuntime, hosted_workflow: Any, input: Any) -> dict[str, Any]:
    """Run the workflow function to its end and record it: the run's ``--json`` object.

    A Temporal cancellation is recorded as ``cancelled`` and then raised again, so the
    Temporal workflow ends cancelled too.
    """
    await runtime.record({"status": "running"}, "running", {"engine": "temporal", "task_queue":
                                                            workflow.info().task_queue})
    runtime.emit(ev.RUN_START, runtime.run_span, None, {"workflow": runtime.workflow_name, "run_id": runtime.run_id})
    started = workflow.time()
    ctx = RunContext(runtime, input=input)
    status, output, error, cancelled = "failed", None, None, None
    try:
        work = _call_workflow(hosted_workflow, ctx, input)
        output = _json_output(await _with_wall_time(work, runtime.budget.limits.timeout_s))
        status = "succeeded"
    except asyncio.CancelledError as exc:
        cancelled = exc
        status, error = "cancelled", {"type": "Cancelled", "message": "the run was cancelled"}
    except Exception as exc:
        status, error = _status_for(exc), _error_dict(exc)
    result = _result(runtime, status, output, error, started)
    await _record_end(runtime, result)
    budget = runtime.budget
    runtime.emit(ev.RUN_END, runtime.run_span, None, {
        "status": status, "duration_s": result["duration_s"], "usage": result["usage"],
        "cost_usd": budget.cost_usd, "model_calls": budget.model_calls, "error": error})
    if cancelled is not None:
        raise cancelled
    return result

