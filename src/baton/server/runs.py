"""The service's runs: intake (stored before anything is answered), the waiting line
(``--max-runs``), execution through the same engine as the CLI, cancel, approvals,
recovery of runs whose owner died, and the graceful stop.

Service runs carry ``metadata`` = ``{"tenant", "workflow_name", "workflow_sha256",
"source", ...}``; the engine is given the registered workflow object, so a stored row
never chooses what code runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from baton.errors import BatonError, Conflict, RunNotFound, RunOwnedElsewhere, UsageError
from baton.runtime.budget import Limits
from baton.runtime.engine import Engine, decide, workflow_ref
from baton.runtime.ownership import owner_is_dead
from baton.server.registry import Registered
from baton.stores.base import RunRecord, Store

log = logging.getLogger("baton.server")

ACTIVE = frozenset({"pending", "running"})
RECOVERABLE = frozenset({"pending", "running", "interrupted"})
RESUMABLE_HERE = frozenset({"interrupted", "failed", "budget_exceeded"})
SCAN_LIMIT = 5000


def lowered(base: Limits, requested: dict[str, Any] | None) -> Limits:
    """A caller may tighten the workflow's limits, never loosen them."""
    if not requested:
        return base
    for name, value in requested.items():
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
            raise UsageError(f"limits.{name} must be a positive number")
    asked = Limits.from_dict(requested, where="limits")
    out: dict[str, Any] = {}
    for name in requested:
        cur, new = getattr(base, name), getattr(asked, name)
        out[name] = new if cur is None or new is None else min(cur, new)
    return base.merged(**out)


@dataclass
class RunManager:
    store: Store
    engine: Engine
    registry: dict[str, Registered]
    max_runs: int = 8
    executors: list[Engine] = field(default_factory=list)
    """Engines over their own store connections that runs are spread over (default: ``engine``)."""
    pool: list[Store] = field(default_factory=list)
    """Store connections for intake and reads, used in turn (default: ``store``)."""
    _turn: int = 0
    waiting: deque[str] = field(default_factory=deque)
    active: dict[str, asyncio.Task[Any]] = field(default_factory=dict)
    cancelling: set[str] = field(default_factory=set)
    stopping: bool = False
    started_total: int = 0

    def db(self) -> Store:
        """A store connection for intake and reads (in turn, so requests do not queue on one)."""
        if not self.pool:
            return self.store
        self._turn += 1
        return self.pool[self._turn % len(self.pool)]

    # --- intake ----------------------------------------------------------------------------

    async def submit(self, tenant: str, reg: Registered, input_value: Any, *, run_id: str,
                     limits: dict[str, Any] | None, source: str, extra: dict[str, Any] | None = None
                     ) -> tuple[RunRecord, bool]:
        """Store the run (``pending``) and queue it. Returns (record, created); an existing
        run with the same id and tenant comes back with created=False (a retry)."""
        lim = lowered(reg.workflow.limits, limits)
        meta = {"tenant": tenant, "workflow_name": reg.name, "workflow_sha256": reg.sha256, "source": source,
                **(extra or {})}
        record = RunRecord(run_id=run_id, workflow=workflow_ref(reg.workflow), input=input_value,
                           limits=lim.to_dict(), metadata=meta)
        try:
            await self.db().create_run(record)
        except UsageError:
            existing = await self.find(tenant, run_id)
            if existing is None or existing.metadata.get("workflow_name") != reg.name:
                raise Conflict(f"run id {run_id!r} is already in use") from None
            if existing.input != input_value:
                raise Conflict(f"run {run_id} was accepted with a different input (a reused "
                               f"Idempotency-Key or run_id)") from None
            return existing, False
        self.enqueue(run_id)
        return record, True

    async def find(self, tenant: str, run_id: str) -> RunRecord | None:
        """The run, if it exists and belongs to ``tenant`` (else None: callers answer 404)."""
        try:
            record = await self.db().get_run(run_id)
        except RunNotFound:
            return None
        return record if record.metadata.get("tenant") == tenant else None

    async def list(self, tenant: str, limit: int, status: str | None = None) -> list[RunRecord]:
        rows = await self.db().list_runs(min(SCAN_LIMIT, max(limit * 20, 500)))
        mine = [r for r in rows if r.metadata.get("tenant") == tenant and (status is None or r.status == status)]
        return mine[:limit]

    # --- the waiting line --------------------------------------------------------------------

    def enqueue(self, run_id: str) -> None:
        if run_id not in self.active and run_id not in self.waiting and not self.stopping:
            self.waiting.append(run_id)
            self.pump()

    def position(self, run_id: str) -> int | None:
        """1-based place in this service's waiting line, or None."""
        try:
            return self.waiting.index(run_id) + 1
        except ValueError:
            return None

    def pump(self) -> None:
        while self.waiting and len(self.active) < self.max_runs and not self.stopping:
            run_id = self.waiting.popleft()
            task = asyncio.get_running_loop().create_task(self._execute(run_id))
            self.active[run_id] = task
            self.started_total += 1

    async def _execute(self, run_id: str) -> None:
        try:
            record = await self.db().get_run(run_id)
            reg = self.registry.get(str(record.metadata.get("workflow_name")))
            if reg is None:
                log.warning("run %s names workflow %r, which this service does not serve; left as it is",
                            run_id, record.metadata.get("workflow_name"))
                return
            engines = self.executors or [self.engine]
            await engines[self.started_total % len(engines)].resume(run_id, reg.workflow)
        except RunOwnedElsewhere:
            pass  # another service runs it (or just finished it): the fencing did its job
        except UsageError as exc:
            log.info("run %s not started: %s", run_id, exc)
        except asyncio.CancelledError:
            pass  # the engine recorded ``interrupted``; a cancel or the graceful stop follows up
        except BatonError as exc:
            log.warning("run %s stopped: %s", run_id, exc)
        except Exception:
            log.exception("run %s: unexpected error", run_id)
        finally:
            if run_id in self.cancelling:  # still listed as active, so no sweep resumes it meanwhile
                self.cancelling.discard(run_id)
                with contextlib.suppress(BatonError):
                    await self.engine.cancel(run_id, force=True, reason="cancelled over the API")
            self.active.pop(run_id, None)
            self.pump()

    # --- control -----------------------------------------------------------------------------

    async def cancel(self, record: RunRecord) -> RunRecord:
        if record.status in ("succeeded", "cancelled", "failed"):
            raise Conflict(f"run {record.run_id} is already {record.status}")
        run_id = record.run_id
        task = self.active.get(run_id)
        if task is not None:
            self.cancelling.add(run_id)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(task), 30)
            return await self.db().get_run(run_id)
        with contextlib.suppress(ValueError):
            self.waiting.remove(run_id)
        # Owned by another live service: take the claim away; its heartbeat notices and stops.
        return await self.engine.cancel(run_id, force=True, reason="cancelled over the API")

    async def resume(self, record: RunRecord) -> None:
        """Queue a stopped run again (interrupted, failed, budget-stopped); it continues from its journal."""
        if record.status not in RESUMABLE_HERE:
            raise Conflict(f"run {record.run_id} is {record.status}; only an interrupted, failed or "
                           f"budget-stopped run can be resumed")
        if record.metadata.get("workflow_name") not in self.registry:
            raise Conflict(f"run {record.run_id} names a workflow this service does not serve")
        self.enqueue(record.run_id)

    async def approve(self, record: RunRecord, step: str, *, approved: bool, edit: Any, note: str | None,
                      by: str) -> None:
        if record.status != "awaiting_approval" or step not in await self.waiting_steps(record):
            raise Conflict(f"step {step!r} of run {record.run_id} is not waiting for a decision")
        await decide(record.run_id, step, approved=approved, edit=edit, by=by, note=note, store=self.db())
        self.enqueue(record.run_id)

    async def waiting_steps(self, record: RunRecord) -> set[str]:
        """Approval steps started and not decided, and a tool re-run decision the run stopped on."""
        steps = await self.db().load_steps(record.run_id)
        done = {s.key for s in steps if s.status == "completed"}
        waiting = {s.key for s in steps if s.kind == "approval" and s.status == "started" and s.key not in done}
        message = str((record.error or {}).get("message", ""))
        found = re.search(rf"baton approve {re.escape(record.run_id)} (\S+#decision\S*)", message)
        if found and found.group(1) not in done:
            waiting.add(found.group(1))
        return waiting

    # --- recovery and stop ---------------------------------------------------------------------

    async def recover(self) -> int:
        """Queue every service run whose owner is gone and that nobody here holds, oldest first."""
        found = []
        for r in await self.db().list_runs(SCAN_LIMIT):
            if r.status not in RECOVERABLE or "workflow_name" not in r.metadata:
                continue
            if r.run_id in self.active or r.run_id in self.waiting:
                continue
            if r.owner is not None and not owner_is_dead(r.owner):
                continue
            if r.metadata.get("workflow_name") in self.registry:
                found.append(r)
        for r in sorted(found, key=lambda r: r.created_at):
            self.enqueue(r.run_id)
        return len(found)

    async def sweep_forever(self, every_s: float) -> None:
        while not self.stopping:
            await asyncio.sleep(every_s)
            try:
                n = await self.recover()
                if n:
                    log.info("recovery: %d run(s) queued", n)
            except Exception as exc:  # the store is down for now: try again next time
                log.warning("recovery sweep failed: %s", exc)

    async def stop(self, grace_s: float = 20.0) -> None:
        """Stop taking runs; running ones checkpoint as ``interrupted`` (resumable)."""
        self.stopping = True
        self.waiting.clear()
        tasks = list(self.active.values())
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=grace_s)

