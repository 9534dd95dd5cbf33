"""The services one execution of a run shares: its journal, budget, limits, events and replay checks.

``Runtime`` (``runtime.py``) adds the call paths on top; the layers of the call paths see
only these services, so they are small and each testable with a bare ``RunServices``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from baton.errors import ReplayDivergence
from baton.observe import events as ev
from baton.observe.events import Event, EventStream, new_id, trace_id_for
from baton.runtime.breaker import BreakerRegistry
from baton.runtime.budget import BudgetTracker
from baton.runtime.journal import Journal
from baton.runtime.retry import RetryPolicy
from baton.runtime.routing import ModelRouter
from baton.stores.base import StepRecord

if TYPE_CHECKING:  # the governor and cache modules load when a run needs them, not on ``import baton``
    from baton.models.base import Model
    from baton.runtime.cache import ResultCache
    from baton.runtime.ratelimit import RateGovernor

__all__ = ["ModelBinding", "RunServices", "current_services"]


@dataclass(slots=True)
class ModelBinding:
    """Which adapter serves a model id, and which price table entry its tokens are billed as."""

    model: Model
    wire_model: str
    price_as: str


_CURRENT: ContextVar[RunServices | None] = ContextVar("baton_runtime", default=None)
"""The run whose code is executing: a breaker that changes state is reported to this run."""


def current_services() -> RunServices | None:
    """The services of the run whose code is executing now (None outside a run)."""
    return _CURRENT.get()


def _breaker_changed(target: str, old: str, new: str) -> None:
    services = _CURRENT.get()
    if services is not None:
        services.emit(ev.BREAKER_CHANGE, new_id(), services.run_span, {"target": target, "old": old, "new": new})


def _private_governor() -> RateGovernor:
    """A governor of this run's own (the engine passes the process-wide one)."""
    from baton.runtime.ratelimit import RateGovernor  # deferred: ~8 ms that ``import baton`` does not pay

    return RateGovernor()


@dataclass
class RunServices:
    """Everything one execution of a run shares. Built by the engine, used via ``RunContext``."""

    run_id: str
    journal: Journal | None
    budget: BudgetTracker
    events: EventStream
    bind_model: Callable[[str], ModelBinding]
    """Resolves a model id to an adapter."""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    breakers: BreakerRegistry = field(default_factory=BreakerRegistry)
    governor: RateGovernor = field(default_factory=_private_governor)
    cache: ResultCache | None = None
    cache_ttl_s: float | None = None
    trace_id: str = ""
    """Empty: derived from the run id, so a resumed run stays in its first execution's trace."""
    run_span: str = field(default_factory=new_id)
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep
    replay_only: bool = False
    """Replay mode: any step missing from the journal is a divergence; nothing is executed."""
    router: ModelRouter = field(default_factory=ModelRouter)
    routes: dict[str, str] = field(default_factory=dict)
    """The model each assessed ``auto`` agent call was routed to, by its ``KEY/route`` key."""
    batch_options: Any = None
    """``baton.runtime.batch.BatchOptions`` for agents with ``batch: true`` (None: the defaults)."""
    stop_reason: str | None = None
    """Why the run stopped itself as interrupted (a tool's KeyboardInterrupt), for its error message."""
    warnings: list[dict[str, Any]] = field(default_factory=list)
    """Outcomes that succeeded but deserve a reader's attention (``RunContext.warn``)."""
    stream_deltas: bool = False
    """Someone listens for ``text.delta`` events: model calls stream and report each piece."""
    tenant: str | None = None
    """The service tenant the run belongs to (run metadata): long-term memory is kept per tenant."""

    def __post_init__(self) -> None:
        if not self.trace_id:
            self.trace_id = trace_id_for(self.run_id)
        self.breakers.listen(_breaker_changed)
        self.budget.on_check = self._budget_checked

    async def scoped(self, work: Awaitable[Any]) -> Any:
        """Await ``work`` as this run's code: events that cannot name their run (a breaker's
        change of state) find it through the task's context."""
        _CURRENT.set(self)  # this task's own context: nothing outside it sees the change
        return await work

    def emit(self, kind: str, span: str, parent: str | None, data: dict[str, Any]) -> None:
        """Put an event on the run's stream (one attribute test when nobody listens)."""
        if self.events.wants(kind):
            self.events.emit(Event(kind, self.run_id, self.trace_id, span, parent, data))

    def _budget_checked(self, limit: str, spent: float, allowed: float | None, ok: bool) -> None:
        if not ok:  # a passing check is not news: only the check that stops a call is reported
            self.emit(ev.BUDGET_CHECK, new_id(), self.run_span,
                      {"limit": limit, "spent": spent, "allowed": allowed, "ok": ok})

    def report_replayed(self, rec: StepRecord, span: str | None) -> None:
        """Tell the sinks a step was answered from the journal."""
        self.emit(ev.STEP_REPLAYED, new_id(), span, {"key": rec.key, "kind": rec.kind, "name": rec.name})

    def check_replay(self, key: str, kind: str, name: str) -> StepRecord | None:
        """The completed record at ``key``, after checking it is the same step."""
        if self.journal is None:
            return None
        rec = self.journal.completed(key)
        if rec is not None and (rec.kind != kind or rec.name != name):
            raise ReplayDivergence(
                f"workflow diverged from the journal at step {key}: journal has {rec.kind} {rec.name!r}, "
                f"the workflow now asks for {kind} {name!r}", step=key, differs=["kind/name"])
        if rec is None and self.replay_only:
            raise ReplayDivergence(f"workflow diverged from the journal at step {key}: the journal has no "
                                   f"record there, the workflow now asks for {kind} {name!r}", step=key)
        return rec

    def check_agent_replay(self, key: str, name: str) -> StepRecord | None:
        """``check_replay`` for an agent step. A replay goes into a completed agent whose model
        calls are journaled, so that each model request is compared with the one recorded."""
        rec = self.check_replay(key, "agent", name)
        if rec is not None and self.replay_only and self.journal is not None \
                and self.journal.completed(f"{key}/m0") is not None:
            return None
        return rec

    async def commit(self, record: StepRecord) -> None:
        """Journal a step record (no journal: nothing to do)."""
        if self.journal is not None:
            # The journal is the truth: results are stored exactly as they happened, so a resumed
            # run sees what the uninterrupted one saw. Redaction belongs to the sinks; stored
            # content is protected by file modes and, where asked, encryption (stores/_codec.py).
            await self.journal.commit(record)
