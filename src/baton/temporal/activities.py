"""The activities: where a Temporal run's model calls, tool calls and steps happen.

A model or tool activity goes through baton's own call path (``Runtime.model_call`` /
``tool_call``: result cache, rate governor, circuit breaker, the one retry loop, cost,
journal, events), so baton owns retries; Temporal re-runs an activity only when the
worker running it was lost (missed heartbeats, a timeout). A baton error ends the
activity as a non-retryable failure that the workflow side raises as the same class.

Each completed model and tool step is written to baton's store as on the local engine,
so ``baton show``, ``baton stats``, the API and the UI see Temporal runs too. A re-run
activity first looks there: a call whose answer was stored before its worker died is
not sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from baton.context import HandoffNote, RunContext
from baton.errors import RunNotFound, UsageError
from baton.messages import ToolUseBlock, response_to_dict
from baton.observe.events import EventStream
from baton.runtime.budget import BudgetTracker, Limits
from baton.runtime.retry import RetryPolicy
from baton.runtime.runtime import Runtime
from baton.stores.base import RunRecord, StepRecord
from baton.temporal.codec import AgentView, error_to_dict, request_from_dict
from baton.temporal.context import WorkerContext
from baton.temporal.flow import MODEL, RECORD, STEP, TOOL, take_step

_UNLIMITED = Limits(concurrency=1_000_000)
"""An activity's own budget: the run's budget is checked on the workflow side."""


def _as_failure(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """A failure ends the activity for good: baton already retried what was worth it (one retry
    owner). Only a lost attempt (worker death, timeout, shutdown) is run again by Temporal."""

    @functools.wraps(fn)
    async def wrapped(*args: Any) -> Any:
        try:
            return await fn(*args)
        except Exception as exc:  # a non-baton one (a step function's ValueError) comes back as StepFailed
            raise ApplicationError(str(exc), error_to_dict(exc), type=type(exc).__name__, non_retryable=True) from exc

    return wrapped


@contextlib.asynccontextmanager
async def _heartbeating() -> AsyncIterator[None]:
    """Heartbeat while the call runs: a worker that dies is noticed within the heartbeat timeout.
    The first beat comes after a third of it, so a quick call costs no heartbeat at all."""
    info = activity.info()
    every = (info.heartbeat_timeout.total_seconds() / 3) if info.heartbeat_timeout else None

    async def beat() -> None:
        while every:
            await asyncio.sleep(every)
            activity.heartbeat()

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Activities:
    """The activity implementations of one worker (bound methods registered with it)."""

    def __init__(self, worker: WorkerContext) -> None:
        self.worker = worker

    def all(self) -> list[Callable[..., Any]]:
        return [self.model, self.tool, self.step, self.record]

    def _runtime(self, run_id: str, workflow_name: str) -> Runtime:
        w = self.worker
        hosted = w.workflow(workflow_name, None)
        rt = Runtime(run_id, w.journal(run_id), BudgetTracker(_UNLIMITED), EventStream(list(w.sinks)), w.bind_model,
                     retry=getattr(hosted.workflow, "retry", None) or RetryPolicy(), breakers=hosted.breakers,
                     governor=w.governor, cache=w.cache, cache_ttl_s=w.cache_ttl_s)
        rt.models._warm = w.warm_gates(run_id)  # the warm-up gates of this run, shared by its activities here
        return rt

    async def _catch_up(self, args: dict[str, Any]) -> StepRecord | None:
        """Write the workflow side's step records; on a re-run, reload what the lost attempt stored."""
        w = self.worker
        if args.get("steps"):
            await w.store.put_steps([StepRecord.from_dict(s) for s in args["steps"]])
        journal = w.journal(args["run_id"])
        if activity.info().attempt > 1 or args.get("reload"):
            journal.steps.update({s.key: s for s in await w.store.load_steps(args["run_id"])})
        return journal.completed(args["key"])

    @activity.defn(name=MODEL)
    @_as_failure
    async def model(self, args: dict[str, Any]) -> dict[str, Any]:
        """One model call of an agent: ``{response, cost, billed}``."""
        done = await self._catch_up(args)
        if done is not None:  # answered before the worker that sent it was lost: not sent again
            return {"response": done.result, "cost": done.cost_usd, "billed": not done.meta.get("cache_hit")}

        rt = self._runtime(args["run_id"], args["workflow"])
        ctx = RunContext(rt, span_id=args["span"], priority=args["priority"])
        async with _heartbeating():
            agent: Any = AgentView.from_dict(args["agent"])
            response, cost = await rt.models.call(ctx, agent, args["key"], request_from_dict(args["request"]))
            await rt.settle_in_flight()
        return {"response": response_to_dict(response), "cost": cost, "billed": rt.budget.model_calls > 0}

    @activity.defn(name=TOOL)
    @_as_failure
    async def tool(self, args: dict[str, Any]) -> dict[str, Any]:
        """One tool call: ``{content, is_error}``; the tool is the one the hosted workflow's agents have."""
        await self._catch_up(args)

        hosted = self.worker.workflow(args["workflow"], None)
        tool = hosted.tools.get(args["tool"])
        if tool is None:
            raise UsageError(f"tool {args['tool']!r} is not a tool of workflow {hosted.name!r} on this worker")
        rt = self._runtime(args["run_id"], args["workflow"])
        state = HandoffNote.from_dict(args["state"]) if args.get("state") else None
        ctx = RunContext(rt, span_id=args["span"], priority=args["priority"], state=state)
        use = args["use"]
        async with _heartbeating():
            agent: Any = AgentView.from_dict(args["agent"])
            block = await rt.tools.call(ctx, agent, args["key"], ToolUseBlock(use["id"], use["name"], use["input"]),
                                       tool)
        return {"content": block.content, "is_error": block.is_error}

    @activity.defn(name=STEP)
    @_as_failure
    async def step(self, args: dict[str, Any]) -> Any:
        """A ``ctx.step`` effect (a local activity: the function waits in this process)."""
        fn, fargs, fkwargs = take_step(args["handle"])
        result = fn(*fargs, **fkwargs)
        if inspect.isawaitable(result):
            result = await result
        if hasattr(result, "model_dump"):
            result = result.model_dump(mode="json")
        return result

    @activity.defn(name=RECORD)
    @_as_failure
    async def record(self, args: dict[str, Any]) -> None:
        """Write step records and a change of the run's record (status, output, usage) to the store."""
        store = self.worker.store
        if args.get("steps"):
            await store.put_steps([StepRecord.from_dict(s) for s in args["steps"]])
        change = args.get("run")
        if not change:
            return
        try:
            record = await store.get_run(args["run_id"])
        except RunNotFound:  # started on Temporal directly, not through baton: record it now
            record = RunRecord(run_id=args["run_id"], workflow="temporal", input=None)
            await store.create_run(record)
        for key in ("status", "output", "error", "usage", "cost_usd", "model_calls"):
            if key in change:
                setattr(record, key, change[key])
        if "warnings" in change:
            if change["warnings"]:
                record.metadata["warnings"] = change["warnings"]
            else:
                record.metadata.pop("warnings", None)
        record.owner = None
        await store.update_run(record, transition=args.get("transition"), detail=args.get("detail") or {})
