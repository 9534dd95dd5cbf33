"""Where the UI reads runs from, and what it may do to them.

``ServiceSource`` is ``baton serve``: runs scoped to the signed-in tenant (another
tenant's run is simply not found), buffered live events, and the actions of the API
(cancel, resume, approve, start). ``StoreSource`` is ``baton ui``: every run of one
store, read-only, no events beyond the journal."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from baton.errors import RunNotFound
from baton.stores.base import RunRecord, StepRecord, Store, Transition

if TYPE_CHECKING:
    from baton.server.registry import Registered
    from baton.server.state import Service

Event = tuple[int, str, dict[str, Any]]
LIST_SCAN = 2000


@dataclass
class Detail:
    """One run as its page needs it."""

    run: RunRecord
    steps: list[StepRecord]
    transitions: list[Transition]
    events: list[Event]
    awaiting: list[str]


class Source:
    """Read access (and, when not ``read_only``, actions) for the UI's routes."""

    read_only = True
    live = False
    """Whether ``events_after`` streams (else the page polls while a run is active)."""

    def db(self) -> Store:
        raise NotImplementedError

    def owns(self, tenant: str | None, run: RunRecord) -> bool:
        return tenant is None or run.metadata.get("tenant") == tenant

    async def runs(self, tenant: str | None, limit: int, status: str | None = None,
                   workflow: str | None = None) -> list[RunRecord]:
        """Newest first: the tenant's runs (all runs for ``None``), filtered."""
        rows = await self.db().list_runs(LIST_SCAN)
        out = [r for r in rows if self.owns(tenant, r) and (status is None or r.status == status)
               and (workflow is None or workflow_name(r) == workflow)]
        return out[:limit]

    async def run(self, tenant: str | None, run_id: str) -> RunRecord | None:
        try:
            record = await self.db().get_run(run_id)
        except RunNotFound:
            return None
        return record if self.owns(tenant, record) else None

    async def detail(self, tenant: str | None, run_id: str) -> Detail | None:
        record = await self.run(tenant, run_id)
        if record is None:
            return None
        db = self.db()
        steps, transitions = await asyncio.gather(db.load_steps(run_id), db.transitions(run_id))
        return Detail(record, steps, transitions, self.events(run_id), await self.awaiting(record, steps))

    async def awaiting(self, record: RunRecord, steps: list[StepRecord]) -> list[str]:
        if record.status != "awaiting_approval":
            return []
        done = {s.key for s in steps if s.status == "completed"}
        return sorted({s.key for s in steps if s.kind == "approval" and s.status == "started" and s.key not in done})

    def events(self, run_id: str) -> list[Event]:
        return []

    def workflows(self) -> list[Registered]:
        return []

    def events_after(self, run_id: str, last: int) -> AsyncIterator[bytes]:
        raise NotImplementedError


def workflow_name(r: RunRecord) -> str:
    """The registered name a service run has, else the workflow reference the run recorded."""
    return str(r.metadata.get("workflow_name") or r.workflow)


class StoreSource(Source):
    """``baton ui``: one store, every run, nothing changes."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def db(self) -> Store:
        return self.store


class ServiceSource(Source):
    """``baton serve``: the service's store connections, live buffers, registry and run manager."""

    read_only = False
    live = True

    def __init__(self, svc: Service) -> None:
        self.svc = svc

    def db(self) -> Store:
        return self.svc.runs.db() if self.svc.runs is not None else self.svc.store

    async def awaiting(self, record: RunRecord, steps: list[StepRecord]) -> list[str]:
        if record.status != "awaiting_approval":
            return []
        return sorted(await self.svc.runs.waiting_steps(record))

    def events(self, run_id: str) -> list[Event]:
        buf = self.svc.live.runs.get(run_id)
        return [e for e in buf.events] if buf is not None else []

    def workflows(self) -> list[Registered]:
        return sorted(self.svc.registry.values(), key=lambda r: r.name)

    def events_after(self, run_id: str, last: int) -> AsyncIterator[bytes]:
        return self.svc.sse(run_id, last)

    # --- actions (the same as the API's; the caller checked ownership) -----------------------

    async def cancel(self, record: RunRecord) -> None:
        await self.svc.runs.cancel(record)

    async def resume(self, record: RunRecord) -> None:
        await self.svc.runs.resume(record)

    async def approve(self, record: RunRecord, step: str, approved: bool, edit: Any, note: str | None,
                      tenant: str) -> None:
        await self.svc.runs.approve(record, step, approved=approved, edit=edit, note=note, by=f"ui:{tenant}")

    async def start(self, tenant: str, reg: Registered, value: Any) -> str:
        await self.svc.check_tenant_limits(tenant)
        record, created = await self.svc.runs.submit(tenant, reg, value, run_id=self.svc.new_run_id(),
                                                     limits=None, source="ui")
        if created:
            self.svc.metrics.intake.labels("ui").inc()
        return record.run_id
