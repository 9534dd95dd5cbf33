"""Run lifecycle: record the run, own it, execute the workflow over the journal, settle.

A run is written to the store (status ``pending``) before any work starts, so an
accepted run is never silently lost. Its status then says exactly where it stands:
succeeded, failed, budget_exceeded, awaiting_approval, interrupted or cancelled; every
status but succeeded/cancelled can be resumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from baton.errors import (
    BatonError,
    BudgetExceeded,
    ReplayDivergence,
    RunOwnedElsewhere,
    RunSuspended,
    UsageError,
)
from baton.json_schema import jsonable
from baton.messages import Usage
from baton.observe import events as ev
from baton.observe.events import EventStream, Sink, new_id
from baton.runtime.breaker import BreakerRegistry, shared_breakers
from baton.runtime.budget import BudgetTracker, Limits
from baton.runtime.ids import check_run_id
from baton.runtime.journal import Journal, decision_key
from baton.runtime.ownership import HEARTBEAT_S, LEASE_S, describe, new_owner, owner_is_dead
from baton.runtime.retry import RetryPolicy
from baton.runtime.runtime import Runtime
from baton.runtime.services import ModelBinding
from baton.runtime.workflows import SHA_KEY, FileLoader, check_signature, for_record, workflow_ref
from baton.stores import open_store
from baton.stores.base import Owner, RunRecord, StepRecord, Store, displaced

if TYPE_CHECKING:  # the governor module loads on first run, not on ``import baton``
    from baton.runtime.ratelimit import RateGovernor

Workflow = Callable[..., Awaitable[Any]]
ScopeFactory = Callable[[Runtime, Any], Any]
"""``(runtime, input) -> the context a workflow is called with`` (``baton.RunContext``)."""

_default_scope: ScopeFactory | None = None


def set_default_scope(factory: ScopeFactory) -> None:
    """Register the context type workflows get (``baton.context`` registers ``RunContext``
    when it is imported: the runtime does not import the layer above it)."""
    global _default_scope
    _default_scope = factory

__all__ = ["Engine", "RunResult", "Workflow", "decide", "shared_governor", "workflow_ref"]

_GOVERNOR: RateGovernor | None = None


def shared_governor() -> RateGovernor:
    """The process-wide rate governor: every run and agent in this process shares its buckets."""
    global _GOVERNOR
    if _GOVERNOR is None:
        from baton.runtime.ratelimit import RateGovernor

        _GOVERNOR = RateGovernor()
    return _GOVERNOR


@dataclass(slots=True)
class RunResult:
    """The outcome of a run: status (``succeeded``, ``failed``, ``budget_exceeded``, ...), output,
    usage, cost and model calls; ``error`` and ``warnings`` when there is something to say."""

    run_id: str
    status: str
    output: Any = None
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    model_calls: int = 0
    duration_s: float = 0.0
    error: dict[str, Any] | None = None
    warnings: list[dict[str, Any]] = field(default_factory=list)
    """``{"source", "code", "message"}`` for outcomes that deserve attention (see ``RunContext.warn``)."""

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` object of DESIGN.md."""
        return {"run_id": self.run_id, "status": self.status, "output": self.output, "usage": self.usage.to_dict(),
                "cost_usd": round(self.cost_usd, 6), "model_calls": self.model_calls,
                "duration_s": round(self.duration_s, 3), "error": self.error, "warnings": self.warnings}


async def _with_wall_time(work: Awaitable[Any], timeout_s: float | None) -> Any:
    """Run the workflow within the run's wall-time budget; a stalled tool cannot outlast it."""
    if timeout_s is None:
        return await work
    try:
        async with asyncio.timeout(timeout_s):
            return await work
    except TimeoutError as exc:
        raise BudgetExceeded(f"wall_time_s budget exceeded: the run took longer than {timeout_s:g}s",
                             limit="wall_time_s", spent=timeout_s, allowed=timeout_s) from exc


def _json_output(value: Any) -> Any:
    as_json = getattr(value, "output_json", None)  # an AgentResult: its output as journaled
    if callable(as_json):
        return as_json()
    return jsonable(value)


def _status_for(exc: BaseException) -> str:
    if isinstance(exc, BudgetExceeded):
        return "budget_exceeded"
    if isinstance(exc, RunSuspended):
        return exc.run_status  # awaiting_approval, or awaiting_batch (a detached batch)
    if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt)):
        return "interrupted"
    return "failed"


def _error_dict(exc: BaseException) -> dict[str, Any]:
    """The error a run records and returns; URL credentials in it are masked (it is shown and stored)."""
    from baton.masking import mask_in  # deferred: error paths only

    if isinstance(exc, BatonError):
        return mask_in(exc.to_dict())  # type: ignore[return-value]
    if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt)):
        return {"type": "Interrupted", "message": "the run was interrupted; resume it with baton resume"}
    return {"type": type(exc).__name__, "message": str(mask_in(str(exc)))}


async def _call_workflow(workflow: Workflow, ctx: Any, input: Any) -> Any:
    """Call the workflow inside the run's task, so whatever the call raises settles the run."""
    result = workflow(ctx, input)
    if not inspect.isawaitable(result):
        raise TypeError(f"the workflow returned {type(result).__name__}, not an awaitable: "
                        f"declare it 'async def name(ctx, input)'")
    return await result


# Adapters the engine took from the provider cache, with the number of runs using each:
# the last run to finish closes the adapter's HTTP session (the next run opens another).
_provider_models: dict[int, list[Any]] = {}


def _acquire_model(model: Any) -> None:
    entry = _provider_models.setdefault(id(model), [model, 0])
    entry[1] += 1


async def _release_models(models: list[Any]) -> None:
    for model in models:
        entry = _provider_models.get(id(model))
        if entry is None:
            continue
        entry[1] -= 1
        if entry[1] <= 0:
            del _provider_models[id(model)]
            with contextlib.suppress(Exception):
                await model.aclose()


@dataclass
class Engine:
    """Options shared by run/resume/replay. Most users call ``baton.run`` instead."""

    store: Store | str | None = None
    model: Any = None
    """One Model for every agent (tests: a ScriptedModel)."""
    models: Mapping[str, Any] | None = None
    """Model id -> Model, consulted before ``model`` and the provider."""
    provider: str | None = None
    sinks: list[Sink] = field(default_factory=list)
    retry: RetryPolicy | None = None
    governor: RateGovernor | None = None
    breakers: BreakerRegistry | None = None
    cache: Any = None
    cache_ttl_s: float | None = None
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    files: FileLoader | None = None
    """Loads the workflow file a run names (with its recorded hash) when resume/replay get no workflow."""
    batch: Any = None
    """``baton.runtime.batch.BatchOptions`` for batch-mode calls (e.g. ``detach=True``); None: defaults."""
    router: Any = None
    """A ``baton.runtime.routing.ModelRouter`` for ``model: auto`` (else the workflow's ``router``, else defaults)."""

    scope: ScopeFactory | None = None
    """Builds the context a workflow is called with from the run's runtime and input (default:
    ``baton.RunContext``, which registers itself with ``set_default_scope``)."""

    def _root_scope(self, runtime: Runtime, input: Any) -> Any:
        factory = self.scope or _default_scope
        if factory is None:
            raise UsageError("no run context type is registered: import baton (or pass Engine(scope=...))")
        return factory(runtime, input)

    _breakers_here: BreakerRegistry | None = field(default=None, init=False, repr=False)

    def _binder(self, opened: list[Any]) -> Callable[[str], ModelBinding]:
        """Model ids -> bindings; adapters taken from the provider are listed in ``opened`` to be released."""
        bound: dict[str, ModelBinding] = {}
        provider = self.provider

        def bind(model_id: str) -> ModelBinding:
            b = bound.get(model_id)
            if b is None:
                if self.models and model_id in self.models:
                    b = ModelBinding(self.models[model_id], model_id, model_id)
                elif self.model is not None:
                    b = ModelBinding(self.model, model_id, model_id)
                else:
                    from baton.models.resolve import get_model, model_for_provider, resolve_provider

                    nonlocal provider
                    provider = provider or resolve_provider(None)
                    model = get_model(provider, model_id)
                    if all(m is not model for m in opened):
                        _acquire_model(model)
                        opened.append(model)
                    b = ModelBinding(model, model_for_provider(provider, model_id), model_id)
                bound[model_id] = b
            return b

        return bind

    def _new_journal(self, store: Store, run_id: str, owner_token: str) -> Journal | None:
        """The run's journal. Benchmarks of the bare call path override this to keep none."""
        return Journal(store, run_id, owner_token)

    def _shared_breakers(self, workflow: Workflow) -> BreakerRegistry:
        """Runs through the same adapter (or provider endpoint) share one breaker set, as they share
        its connection pool and rate governor; with a ``models`` mapping, this engine's runs do."""
        defaults = getattr(workflow, "breaker", None)
        owner: Any = self.model
        if owner is None and not self.models:
            from baton.models.resolve import adapter_key, resolve_provider

            with contextlib.suppress(UsageError):  # reported when a call binds the model
                owner = adapter_key(self.provider or resolve_provider(None))
        if owner is None:
            if self._breakers_here is None:
                self._breakers_here = BreakerRegistry(defaults=defaults)
            return self._breakers_here
        return shared_breakers(owner, defaults)

    @property
    def _owns_store(self) -> bool:
        """The engine opened the store from a URL, so it closes it (a plain test, not a slow
        isinstance on the ``Store`` protocol, which costs tens of microseconds per run)."""
        return self.store is None or isinstance(self.store, str)

    async def _store(self) -> Store:
        store = self.store if self.store is not None and not isinstance(self.store, str) else open_store(self.store)
        await store.open()
        return store

    async def run(self, workflow: Workflow, input: Any = None, *, run_id: str | None = None,
                  limits: Limits | None = None, metadata: dict[str, Any] | None = None) -> RunResult:
        run_id = check_run_id(run_id, source="run_id") if run_id is not None else new_id(8)
        ref = workflow_ref(workflow)
        check_signature(workflow, ref)  # before the run is recorded: nothing left 'pending'
        store = await self._store()
        try:
            limits = limits or getattr(workflow, "limits", None) or Limits()
            record = RunRecord(run_id=run_id, workflow=ref, input=input,
                               limits=limits.to_dict(), metadata=dict(metadata or {}))
            sha = getattr(workflow, "sha256", None)
            if isinstance(sha, str) and sha:
                record.metadata[SHA_KEY] = sha  # resume reloads the file only while its content matches
            await store.create_run(record)  # durable before any work starts
            return await self._execute(store, record, workflow, limits, force=False)
        finally:
            if self._owns_store:
                await store.close()

    async def resume(self, run_id: str, workflow: Workflow | None = None, *, force: bool = False,
                     **limit_overrides: Any) -> RunResult:
        check_run_id(run_id)
        store = await self._store()
        try:
            record = await store.get_run(run_id)
            if record.status in ("succeeded", "cancelled"):
                raise UsageError(f"run {run_id} is {record.status}; there is nothing to resume")
            workflow = self._workflow_for(record, workflow, "resume")
            limits = Limits.from_dict(record.limits).merged(**limit_overrides)
            record.limits = limits.to_dict()
            return await self._execute(store, record, workflow, limits, force=force)
        finally:
            if self._owns_store:
                await store.close()

    def _workflow_for(self, record: RunRecord, workflow: Workflow | None, command: str) -> Workflow:
        """The caller's workflow, else one registered with this process; never code a row names."""
        if workflow is None:
            found: Workflow = for_record(record.run_id, record.workflow, record.metadata, command, self.files)
            return found
        check_signature(workflow, workflow_ref(workflow))
        sha = getattr(workflow, "sha256", None)
        if command == "resume" and isinstance(sha, str) and sha:  # the file named now is the one to check next time
            record.workflow, record.metadata[SHA_KEY] = workflow_ref(workflow), sha
        return workflow

    async def cancel(self, run_id: str, *, force: bool = False, reason: str | None = None) -> RunRecord:
        """Mark a stopped run cancelled (terminal: it will not be resumed). A run a live
        process is executing is refused unless ``force``."""
        check_run_id(run_id)
        store = await self._store()
        try:
            record = await store.get_run(run_id)
            if record.status in ("succeeded", "cancelled"):
                raise UsageError(f"run {run_id} is already {record.status}")
            if record.owner is not None and not force and not owner_is_dead(record.owner):
                raise RunOwnedElsewhere(f"run {run_id} is being executed by {describe(record.owner)}; "
                                        f"stop it first or pass --force")
            detail: dict[str, Any] = {"reason": reason} if reason else {}
            detail.update(await self._cancel_batches(store, run_id))
            record.status, record.owner = "cancelled", None
            await store.update_run(record, transition="cancelled", detail=detail)
            return record
        finally:
            if self._owns_store:
                await store.close()

    async def _cancel_batches(self, store: Store, run_id: str) -> dict[str, Any]:
        """Cancel the Message Batches the run still waits on (runtime/batch.py); what to record."""
        from baton.runtime.batch import cancel_batches

        opened: list[Any] = []
        try:
            cancelled, failed = await cancel_batches(await store.load_steps(run_id), self._binder(opened))
        finally:
            await _release_models(opened)
        return {k: v for k, v in (("batches_cancelled", cancelled), ("batch_cancel_failed", failed)) if v}

    async def replay(self, run_id: str, workflow: Workflow | None = None) -> RunResult:
        """Re-execute the workflow against the journal with no model or tool calls.

        Raises ``ReplayDivergence`` naming the first step where the code and the journal differ.
        """
        check_run_id(run_id)
        store = await self._store()
        try:
            record = await store.get_run(run_id)
            workflow = self._workflow_for(record, workflow, "replay")
            journal = Journal(store, run_id)
            await journal.load()

            def no_models(model_id: str) -> ModelBinding:
                raise ReplayDivergence(f"replay would call model {model_id!r}: the journal has no result for it")

            limits = Limits.from_dict(record.limits)
            runtime = Runtime(run_id, None, BudgetTracker(limits), EventStream(), no_models, replay_only=True)
            runtime.journal = _ReadOnlyJournal(journal)
            t0 = time.monotonic()
            output = _json_output(await _call_workflow(workflow, self._root_scope(runtime, record.input),
                                                       record.input))
            if record.status == "succeeded" and output != record.output:
                raise ReplayDivergence(f"replay of run {run_id} produced a different output than the recorded one")
            return RunResult(run_id, "replayed", output, duration_s=time.monotonic() - t0)
        finally:
            if self._owns_store:
                await store.close()

    async def _claim(self, store: Store, record: RunRecord, force: bool) -> Owner:
        owner = new_owner()
        current = record.owner
        if current is not None and not force and not owner_is_dead(current):
            raise RunOwnedElsewhere(f"run {record.run_id} is being executed by {describe(current)}; "
                                    f"wait for it or pass --force to take it over")
        expected = current.token if current else None
        if not await store.claim_run(record.run_id, owner, expected_token=expected):
            raise RunOwnedElsewhere(f"run {record.run_id} was just taken over by another process")
        record.owner = owner
        return owner

    async def _heartbeat(self, store: Store, run_id: str, owner: Owner, on_lost: Callable[[], Any]) -> None:
        """Renew the lease; when the claim is gone (another process took the run over), stop
        the workflow at once instead of letting it send calls whose results cannot be kept."""
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            renewed = Owner(owner.host, owner.pid, owner.token, time.time() + LEASE_S)
            try:
                kept = await store.claim_run(run_id, renewed, expected_token=owner.token)
            except Exception:  # the store is unreachable for now: the next beat tries again
                continue
            if not kept:
                on_lost()
                return
            owner.lease_until = renewed.lease_until

    async def _execute(self, store: Store, record: RunRecord, workflow: Workflow, limits: Limits,
                       *, force: bool) -> RunResult:
        opened: list[Any] = []  # provider adapters this run took: their sessions close when no run uses them
        try:
            return await self._execute_bound(store, record, workflow, limits, force=force, opened=opened)
        finally:
            await _release_models(opened)

    async def _execute_bound(self, store: Store, record: RunRecord, workflow: Workflow, limits: Limits,
                             *, force: bool, opened: list[Any]) -> RunResult:
        owner = await self._claim(store, record, force)
        journal = self._new_journal(store, record.run_id, owner.token)
        runtime = await self._new_runtime(record, workflow, limits, journal, opened)
        events = runtime.events
        record.status = "running"
        record.error = None
        await store.update_run(record, transition="running", detail={"owner": owner.to_dict()},
                               owner_token=owner.token)
        runtime.emit(ev.RUN_START, runtime.run_span, None, {"workflow": record.workflow, "run_id": record.run_id})
        t0 = time.monotonic()
        ctx = self._root_scope(runtime, record.input)
        work = asyncio.ensure_future(runtime.scoped(_with_wall_time(_call_workflow(workflow, ctx, record.input), limits.timeout_s)))
        lost = False

        def on_lost() -> None:
            nonlocal lost
            lost = True
            work.cancel()

        heartbeat = asyncio.create_task(self._heartbeat(store, record.run_id, owner, on_lost))
        status, output, error = "failed", None, None
        pending: BaseException | None = None
        try:
            output = _json_output(await work)
            status = "succeeded"
        except (Exception, asyncio.CancelledError, KeyboardInterrupt) as exc:
            status, error, pending = _outcome(exc, lost, record.run_id, runtime.stop_reason)
        finally:
            if not work.done():  # we were cancelled: let the workflow unwind before recording the end
                work.cancel()
                await asyncio.wait({work})
            # Answers to requests cancelled on the wire are billed before the run's totals are
            # recorded (an interrupt gives them up at once).
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await runtime.settle_in_flight(wait=not isinstance(pending, asyncio.CancelledError | KeyboardInterrupt))
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await heartbeat
        with contextlib.suppress(Exception):
            if journal is not None:
                await journal.drain()
        status, error, pending = await self._record_end(store, record, runtime, owner.token,
                                                        status, output, error, pending)
        budget = runtime.budget
        duration = time.monotonic() - t0
        runtime.emit(ev.RUN_END, runtime.run_span, None, {
            "status": status, "duration_s": duration, "usage": budget.usage.to_dict(), "cost_usd": budget.cost_usd,
            "model_calls": budget.model_calls, "error": error})
        events.close()
        if pending is not None:
            raise pending
        return RunResult(record.run_id, status, output, budget.usage, budget.cost_usd, budget.model_calls,
                         duration, error, list(runtime.warnings))

    async def _new_runtime(self, record: RunRecord, workflow: Workflow, limits: Limits, journal: Journal | None,
                           opened: list[Any]) -> Runtime:
        """The run's runtime: budget carried over from the journal, rate limits, retry and breakers."""
        from baton.runtime.ratelimit import RateLimits

        spent, spent_usd, calls = Usage(), 0.0, 0
        if journal is not None:
            await journal.load()
            spent, spent_usd, calls = _prior_spend(journal)
        events = EventStream(list(self.sinks))
        governor = self.governor or shared_governor()
        for key, value in (getattr(workflow, "rate_limits", None) or {}).items():
            governor.set_limits(key, value if isinstance(value, RateLimits) else RateLimits.from_dict(value))
        runtime = Runtime(
            record.run_id, journal, BudgetTracker(limits, spent=spent, spent_usd=spent_usd, model_calls=calls),
            events, self._binder(opened), retry=self.retry or getattr(workflow, "retry", None) or RetryPolicy(),
            breakers=self.breakers or self._shared_breakers(workflow),
            governor=governor, cache=self.cache, cache_ttl_s=self.cache_ttl_s, sleep=self.sleep,
        )
        runtime.stream_deltas = events.wants_deltas
        runtime.batch_options = self.batch
        router = self.router or getattr(workflow, "router", None)
        if router is not None:
            runtime.router = router
        tenant = record.metadata.get("tenant")
        runtime.tenant = tenant if isinstance(tenant, str) and tenant else None
        return runtime

    async def _record_end(self, store: Store, record: RunRecord, runtime: Runtime, owner_token: str, status: str,
                          output: Any, error: dict[str, Any] | None, pending: BaseException | None,
                          ) -> tuple[str, dict[str, Any] | None, BaseException | None]:
        """Store how the run ended (unless a new owner took it over); returns the final status,
        error and the exception still to raise."""
        budget = runtime.budget
        record.status = status  # type: ignore[assignment]
        record.output, record.error = output, error
        record.usage, record.cost_usd, record.model_calls = budget.usage.to_dict(), budget.cost_usd, budget.model_calls
        record.owner = None  # released: the next resume needs no takeover
        # This execution's warnings (a resume replays the steps that raised earlier ones).
        if runtime.warnings:
            record.metadata["warnings"] = list(runtime.warnings)
        else:
            record.metadata.pop("warnings", None)
        if not isinstance(pending, RunOwnedElsewhere):  # a displaced owner leaves the run to the new one
            try:
                await store.update_run(record, transition=status, detail={"error": error} if error else {},
                                       owner_token=owner_token)
            except RunOwnedElsewhere as exc:  # taken over after the workflow's last step
                pending, status, error = exc, "interrupted", _error_dict(exc)
        return status, error, pending


def _outcome(exc: BaseException, lost: bool, run_id: str, stop_reason: str | None,
             ) -> tuple[str, dict[str, Any], BaseException | None]:
    """How a workflow that raised ``exc`` ended: status, error, and the exception to raise after
    recording (a lost claim, an interrupt), if any."""
    if lost or isinstance(exc, RunOwnedElsewhere):
        pending: BaseException = exc if isinstance(exc, RunOwnedElsewhere) else displaced(run_id)
        return "interrupted", _error_dict(pending), pending
    error = _error_dict(exc)
    if stop_reason is not None:  # the run stopped itself (a tool's KeyboardInterrupt)
        error["message"] = stop_reason
        return _status_for(exc), error, None
    interrupt = isinstance(exc, asyncio.CancelledError | KeyboardInterrupt)
    return _status_for(exc), error, exc if interrupt else None


def _prior_spend(journal: Journal) -> tuple[Usage, float, int]:
    """What the journal's completed model calls already spent (a resumed run's budget counts them;
    a fork's budget does not count the steps it copied from its parent)."""
    spent, spent_usd, calls = Usage(), 0.0, 0
    for step in journal.steps.values():
        if step.kind == "model" and step.status == "completed" and "forked_from" not in step.meta:  # a fork's
            # copied steps were paid for by its parent run
            spent.add(Usage.from_dict(step.usage))
            spent_usd += step.cost_usd
            calls += 1
    return spent, spent_usd, calls


class _ReadOnlyJournal(Journal):
    """A journal view for replay: reads the recorded steps, writes nothing."""

    def __init__(self, source: Journal) -> None:
        super().__init__(source.store, source.run_id)
        self.steps = source.steps

    async def commit(self, record: StepRecord) -> None:
        return None


def waiting_steps(steps: list[StepRecord]) -> dict[str, StepRecord | None]:
    """The steps a human may decide now: approval steps still pending, and the ``KEY#decision``
    for each non-idempotent tool that was in flight at a crash (its pending tool step)."""
    by_key = {s.key: s for s in steps}
    out: dict[str, StepRecord | None] = {}
    for s in steps:
        if s.kind == "approval" and s.status == "started":
            out[s.key] = s
        elif s.kind == "tool" and s.status == "started" and s.meta.get("idempotent") is False and s.attempts:
            dkey = decision_key(s.key, s.attempts)
            done = by_key.get(dkey)
            if done is None or done.status != "completed":
                out[dkey] = None
    return out


async def decide(run_id: str, step_key: str, *, approved: bool, edit: Any = None, by: str | None = None,
                 note: str | None = None, store: Store | str | None = None) -> None:
    """Record a human decision for a step awaiting approval (the run continues on resume).

    Only a run that is awaiting approval, and only one of its pending steps, may be
    decided; anything else is a ``UsageError`` and nothing is written.
    """
    check_run_id(run_id)
    st = store if store is not None and not isinstance(store, str) else open_store(store)
    await st.open()
    try:
        record = await st.get_run(run_id)
        waiting = waiting_steps(await st.load_steps(run_id))
        if record.status != "awaiting_approval":
            raise UsageError(f"run {run_id} is {record.status}, not awaiting approval: there is nothing to decide")
        if step_key not in waiting:
            raise UsageError(f"step {step_key!r} of run {run_id} is not awaiting a decision; waiting: "
                             f"{', '.join(sorted(waiting)) or 'none'}")
        pending = waiting[step_key]
        name = pending.name if pending is not None else step_key
        await st.put_steps([StepRecord(run_id, step_key, "approval", name, "completed",
                                       result={"approved": approved, "edit": edit, "by": by, "note": note},
                                       started_at=pending.started_at if pending else time.time(),
                                       ended_at=time.time())])
        await st.update_run(record, transition="decided",
                            detail={"step": step_key, "approved": approved, "by": by})
    finally:
        if not isinstance(store, Store):
            await st.close()
