"""Submitting baton runs to Temporal: ``baton run --engine temporal`` and the Python API.

The run is recorded in baton's store (status ``pending``) before the workflow starts,
as on the local engine, so an accepted run is never silently lost; the Temporal
workflow id is the run id.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from baton.errors import UsageError
from baton.messages import Usage
from baton.observe.events import new_id
from baton.runtime.budget import Limits
from baton.runtime.engine import RunResult
from baton.runtime.ids import check_run_id
from baton.runtime.workflows import SHA_KEY, workflow_ref
from baton.stores import open_store
from baton.stores.base import RunRecord, Store
from baton.temporal.context import hosted_key
from baton.temporal.worker import connect
from baton.temporal.workflow import WORKFLOW_NAME


def result_from_json(d: dict[str, Any]) -> RunResult:
    """A ``RunResult`` from the workflow's result (the run's ``--json`` object)."""
    return RunResult(d["run_id"], d["status"], d.get("output"), Usage.from_dict(d.get("usage") or {}),
                     float(d.get("cost_usd") or 0.0), int(d.get("model_calls") or 0), float(d.get("duration_s") or 0.0),
                     d.get("error"), list(d.get("warnings") or []))


@dataclass
class TemporalEngine:
    """Runs workflows on Temporal workers (``baton worker``) instead of in this process."""

    address: str
    namespace: str = "default"
    task_queue: str = "baton"
    store: Store | str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    """Activity scheduling (``heartbeat_s``, ``call_timeout_s``, ``max_attempts``): see ``flow.CallOptions``."""
    _client: Any = None

    def __post_init__(self) -> None:
        from baton.temporal.flow import CallOptions

        CallOptions.from_dict(self.options)  # bad options fail here, before anything is recorded

    async def client(self) -> Any:
        if self._client is None:
            self._client = await connect(self.address, self.namespace)
        return self._client

    async def _open_store(self) -> Store:
        store = self.store if self.store is not None and not isinstance(self.store, str) else open_store(self.store)
        await store.open()
        return store

    async def _close_store(self, store: Store) -> None:
        if not isinstance(self.store, Store):
            await store.close()

    async def start(self, workflow: Any, input: Any = None, *, run_id: str | None = None,
                    limits: Limits | None = None, metadata: dict[str, Any] | None = None) -> str:
        """Record the run, then start its Temporal workflow; returns the run id."""
        run_id = check_run_id(run_id, source="run_id") if run_id is not None else new_id(8)
        name = workflow if isinstance(workflow, str) else hosted_key(workflow)
        limits = limits or getattr(workflow, "limits", None) or Limits()
        sha = getattr(workflow, "sha256", None) or ""
        meta = {**(metadata or {}), "engine": "temporal", "namespace": self.namespace, "task_queue": self.task_queue}
        if sha:
            meta[SHA_KEY] = sha
        ref = name if isinstance(workflow, str) else workflow_ref(workflow)
        client = await self.client()  # unreachable: nothing is recorded
        record = RunRecord(run_id=run_id, workflow=ref, input=input, limits=limits.to_dict(), metadata=meta)
        args = {"run_id": run_id, "workflow": name, "sha256": sha, "input": input, "limits": limits.to_dict(),
                "options": dict(self.options), "task_queue": self.task_queue}
        store = await self._open_store()
        try:
            await store.create_run(record)  # durable before any work starts
            try:
                await client.start_workflow(WORKFLOW_NAME, args, id=run_id, task_queue=self.task_queue)
            except Exception as exc:  # refused: the run is recorded failed, not left pending
                record.status, record.error = "failed", {"type": "TemporalError", "message": str(exc)}
                await store.update_run(record, transition="failed", detail={"error": record.error})
                raise UsageError(f"Temporal refused run {run_id}: {exc}") from None
        finally:
            await self._close_store(store)
        return run_id

    async def result(self, run_id: str) -> RunResult:
        """Wait for the run to end; a cancelled run comes back with status ``cancelled``."""
        from temporalio.client import WorkflowFailureError
        from temporalio.exceptions import CancelledError

        handle = (await self.client()).get_workflow_handle(run_id)
        try:
            return result_from_json(await handle.result())
        except WorkflowFailureError as exc:
            if isinstance(exc.cause, CancelledError):
                return RunResult(run_id, "cancelled", error={"type": "Cancelled", "message": "the run was cancelled"})
            return RunResult(run_id, "failed", error={"type": "TemporalFailure", "message": str(exc.cause or exc)})

    async def run(self, workflow: Any, input: Any = None, *, run_id: str | None = None,
                  limits: Limits | None = None, metadata: dict[str, Any] | None = None) -> RunResult:
        """Start the run and wait for its result."""
        return await self.result(await self.start(workflow, input, run_id=run_id, limits=limits, metadata=metadata))

    async def state(self, run_id: str) -> dict[str, Any]:
        """The run's live state (query): status, steps awaiting a decision, model calls, cost."""
        state: dict[str, Any] = await (await self.client()).get_workflow_handle(run_id).query("state")
        return state

    async def approve(self, run_id: str, step: str, *, approved: bool = True, edit: Any = None,
                      by: str | None = None, note: str | None = None) -> None:
        """Decide a step the run is waiting on (a signal); any other step is a ``UsageError``."""
        waiting = (await self.state(run_id)).get("waiting") or {}
        if step not in waiting:
            raise UsageError(f"step {step!r} of run {run_id} is not awaiting a decision; waiting: "
                             f"{', '.join(sorted(waiting)) or 'none'}")
        await (await self.client()).get_workflow_handle(run_id).signal(
            "decide", {"step": step, "approved": approved, "edit": edit, "by": by, "note": note})

    async def cancel(self, run_id: str) -> None:
        """Cancel the run: its workflow stops, the store records it ``cancelled``."""
        await (await self.client()).get_workflow_handle(run_id).cancel()


def engine_from_options(options: dict[str, Any]) -> TemporalEngine:
    """``baton.run(..., engine="temporal", temporal="HOST:PORT", ...)``: the engine those options name."""
    known = {"temporal", "namespace", "task_queue", "store", "call_options"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UsageError(f"unknown option {unknown[0]!r} for engine='temporal'; expected one of {sorted(known)}")
    address = options.get("temporal") or os.environ.get("BATON_TEMPORAL")
    if not address:
        raise UsageError("engine='temporal' needs temporal='HOST:PORT' (or BATON_TEMPORAL)")
    return TemporalEngine(str(address), namespace=options.get("namespace", "default"),
                          task_queue=options.get("task_queue", "baton"), store=options.get("store"),
                          options=dict(options.get("call_options") or {}))
