"""``baton serve --engine temporal``: the service takes runs in, Temporal workers execute them.

The service's run manager drives this like the local ``Engine``: ``resume`` (start the
stored run's workflow, or attach to it, then wait for its end) and ``cancel``. Approvals
arrive as on the local engine (``POST .../approvals/{step}`` records the decision in the
store); while a run waits on a step, ``resume`` forwards a recorded decision as the
``decide`` signal.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from baton.errors import BatonError
from baton.runtime.engine import RunResult
from baton.runtime.workflows import SHA_KEY
from baton.stores.base import RunRecord, Store
from baton.temporal.client import TemporalEngine
from baton.temporal.context import hosted_key
from baton.temporal.workflow import WORKFLOW_NAME

DECISION_POLL_S = 0.5
"""How often a run waiting on a step checks the store for a decision to forward."""


@dataclass
class ServiceEngine:
    """The ``Engine`` face the service's run manager uses, backed by Temporal."""

    temporal: TemporalEngine
    store: Store

    async def resume(self, run_id: str, workflow: Any, **_: Any) -> RunResult:
        """Start the stored run on the workers (or attach: it may be running already), wait for its end."""
        from temporalio.exceptions import WorkflowAlreadyStartedError

        record = await self.store.get_run(run_id)
        args = {"run_id": run_id, "workflow": hosted_key(workflow), "sha256": record.metadata.get(SHA_KEY) or "",
                "input": record.input, "limits": record.limits, "options": dict(self.temporal.options),
                "task_queue": self.temporal.task_queue}
        client = await self.temporal.client()
        if not record.metadata.get("engine"):
            record.metadata.update(engine="temporal", task_queue=self.temporal.task_queue)
            await self.store.update_run(record)
        with contextlib.suppress(WorkflowAlreadyStartedError):
            await client.start_workflow(WORKFLOW_NAME, args, id=run_id, task_queue=self.temporal.task_queue)
        forwarding = asyncio.create_task(self._forward_decisions(run_id))
        try:
            return await self.temporal.result(run_id)
        finally:
            forwarding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await forwarding

    async def _forward_decisions(self, run_id: str) -> None:
        """Signal each decision recorded in the store for a step the run waits on."""
        sent: set[str] = set()
        while True:
            await asyncio.sleep(DECISION_POLL_S)
            try:
                if (await self.store.get_run(run_id)).status != "awaiting_approval":
                    continue
                waiting = (await self.temporal.state(run_id)).get("waiting") or {}
                for step in await self.store.load_steps(run_id):
                    if step.kind == "approval" and step.status == "completed" and step.key in waiting \
                            and step.key not in sent:
                        decided = step.result or {}
                        await self.temporal.approve(run_id, step.key, approved=bool(decided.get("approved")),
                                                    edit=decided.get("edit"), by=decided.get("by"),
                                                    note=decided.get("note"))
                        sent.add(step.key)
            except (BatonError, RuntimeError):  # the store or Temporal is unreachable for now
                continue

    async def cancel(self, run_id: str, *, force: bool = False, reason: str | None = None) -> RunRecord:
        """Cancel the run's workflow and wait (up to 30 s) for the workers to record it cancelled; a
        run not started on Temporal yet is marked cancelled here."""
        from temporalio.service import RPCError

        try:
            await self.temporal.cancel(run_id)
        except RPCError:  # no such workflow: it never started
            record = await self.store.get_run(run_id)
            if record.status not in ("succeeded", "cancelled", "failed"):
                record.status = "cancelled"
                await self.store.update_run(record, transition="cancelled",
                                            detail={"reason": reason} if reason else {})
            return record
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30):
                await self.temporal.result(run_id)
        return await self.store.get_run(run_id)
