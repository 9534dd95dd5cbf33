"""Batch mode: model calls of agents with ``batch: true`` go through the Message Batches API.

Half price, not urgent. The model call path (``runtime/model_calls.py``) hands such an
attempt here instead of the concurrency slot, governor and transport; everything else
(journal lookup, cache, budget, breaker, the one retry loop, billing) stays where it is.

- **One batch per burst.** Requests that arrive together (the branches of a fan-out)
  are collected for ``window_s`` after the last one (at most ``max_collect_s`` in all)
  and submitted as one batch per adapter.
- **The batch id is journaled before anyone waits.** Each call's step is written
  ``started`` with ``meta.batch = {id, custom_id}`` as soon as the batch is accepted,
  so a resumed or recovered run finds it and collects the results; it never submits
  that request again.
- **Waiting** polls the batch with backoff (``poll_s`` growing to ``max_poll_s``),
  reporting progress as ``batch.progress`` events; with ``detach`` the run stops instead
  (``BatchPending``, status ``awaiting_batch``) and ``baton resume`` collects later.
- **Per-request failures** (``errored``, ``expired``) come back as ``BatchRequestFailed``
  and the retry loop sends the next attempt as a normal call; ``canceled`` is not retried.
  Only ``succeeded`` is billed, at the batch price.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from baton.errors import BatchPending, BatchRequestFailed, BatonError, UsageError
from baton.models import anthropic_batch as api
from baton.observe import events as ev
from baton.observe.events import new_id
from baton.stores.base import StepRecord

if TYPE_CHECKING:
    from baton.messages import ModelResponse
    from baton.runtime.layers import ModelCall as _Call
    from baton.runtime.services import RunServices

__all__ = ["BatchDesk", "BatchOptions", "cancel_batches", "custom_id", "supports_batches"]


@dataclass(frozen=True, slots=True)
class BatchOptions:
    """How batch mode collects, waits and polls."""

    window_s: float = 0.05
    """A batch is submitted once no new request arrived for this long..."""
    max_collect_s: float = 1.0
    """...or this long after its first request, whichever comes first."""
    poll_s: float = 2.0
    """The first poll interval; it grows by half each poll..."""
    max_poll_s: float = 60.0
    """...up to this."""
    detach: bool = False
    """Stop the run once its batch is submitted (``awaiting_batch``) instead of waiting."""
    max_requests: int = 100_000

    def __post_init__(self) -> None:
        for name in ("window_s", "max_collect_s", "poll_s", "max_poll_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < 86_400:
                raise UsageError(f"batch option {name} must be a number of seconds in [0, 86400), not {value!r}")
        if not isinstance(self.max_requests, int) or not 1 <= self.max_requests <= 100_000:
            raise UsageError(f"batch option max_requests must be 1..100000, not {self.max_requests!r}")


def supports_batches(model: Any) -> bool:
    """Whether an adapter can send Message Batches (others send batch-mode calls normally)."""
    return bool(getattr(model, "supports_batches", False))


def custom_id(key: str) -> str:
    """A request's ``custom_id``: derived from its step key (unique in a run, fits the API's pattern)."""
    return "k" + hashlib.sha256(key.encode()).hexdigest()[:40]


@dataclass(slots=True)
class _Waiting:
    """A call waiting for its batch to be submitted."""

    call: _Call
    ticket: asyncio.Future[tuple[str, str]]


@dataclass(slots=True)
class _Group:
    """Requests for one adapter, collected until the window closes."""

    model: Any
    first: float
    items: list[_Waiting] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


class BatchDesk:
    """One run's batch traffic: collects requests, submits, journals tickets, polls and collects."""

    def __init__(self, runtime: RunServices, options: BatchOptions | None = None) -> None:
        self.rt = runtime
        self.options = options or BatchOptions()
        self._groups: dict[int, _Group] = {}
        self._watchers: dict[str, asyncio.Task[dict[str, api.BatchOutcome]]] = {}
        self._waiting: dict[str, int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def wants(self, call: _Call) -> bool:
        """Whether ``call`` goes through a batch: its agent asks for it and its adapter can, or a
        batch holding it was already submitted (a resumed run collects it, whatever the agent says now)."""
        if self._ticket(call) is not None:
            return True
        return bool(getattr(call.site, "batch", False)) and supports_batches(call.binding.model)

    def _ticket(self, call: _Call) -> tuple[str, str] | None:
        """``(batch_id, custom_id)`` journaled for this call's step, if its batch was submitted."""
        journal = self.rt.journal
        rec = journal.get(call.key) if journal is not None else None
        if rec is None or rec.status != "started" or rec.kind != "model":
            return None
        batch = rec.meta.get("batch")
        if not isinstance(batch, dict) or rec.meta.get("model") != call.model_id:
            return None
        bid, cid = batch.get("id"), batch.get("custom_id")
        return (bid, cid) if isinstance(bid, str) and isinstance(cid, str) else None

    async def send(self, call: _Call) -> ModelResponse:
        """The response to ``call`` from its batch (submitting it first unless it already was)."""
        ticket = self._ticket(call)
        if ticket is None:
            ticket = await self._enqueue(call)
        batch_id, cid = ticket
        call.batch_id = batch_id
        outcomes = await self._wait(call.binding.model, batch_id)
        outcome = outcomes.get(cid)
        if outcome is None or outcome.response is None:
            call.batched = False  # the next attempt, if the retry policy allows one, is a normal call
            raise outcome.error if outcome is not None and outcome.error is not None else BatchRequestFailed(
                f"anthropic batch: request {cid} is missing from the results of batch {batch_id}",
                error_type="batch_missing", retryable=True)
        return outcome.response

    # --- collecting and submitting ---------------------------------------------------------

    def _enqueue(self, call: _Call) -> asyncio.Future[tuple[str, str]]:
        loop = asyncio.get_running_loop()
        model = call.binding.model
        group = self._groups.get(id(model))
        if group is None:
            group = self._groups[id(model)] = _Group(model, loop.time())
        waiting = _Waiting(call, loop.create_future())
        group.items.append(waiting)
        if self.rt.events.wants(ev.MODEL_REQUEST):
            self.rt.emit(ev.MODEL_REQUEST, call.span, call.scope.span_id, {
                "agent": call.site.name, "model": call.model_id, "key": call.key, "provider": model.provider,
                "prompt_version": call.site.prompt_version, "attempt": call.attempt, "max_tokens": call.wire.max_tokens,
                "batch": True})
        if group.timer is not None:
            group.timer.cancel()
        due = min(loop.time() + self.options.window_s, group.first + self.options.max_collect_s)
        if len(group.items) >= self.options.max_requests:
            due = loop.time()
        group.timer = loop.call_at(due, self._flush, id(model))
        return waiting.ticket

    def _flush(self, model_key: int) -> None:
        group = self._groups.pop(model_key, None)
        if group is None:
            return
        task = asyncio.get_running_loop().create_task(self._submit(group.model, group.items))
        self._tasks.add(task)  # runs to the end even if every caller is cancelled: the batch gets journaled
        task.add_done_callback(self._tasks.discard)

    async def _submit(self, model: Any, items: list[_Waiting]) -> None:
        """Create the batch, journal every request's ticket, then let the callers wait for results."""
        items = [w for w in items if not w.ticket.done()]  # a caller already gone is not submitted
        if not items:
            return
        ids = [custom_id(w.call.key) for w in items]
        try:
            status = await api.create_batch(model, [(cid, w.call.wire) for cid, w in zip(ids, items, strict=True)])
            await asyncio.gather(*(self.rt.commit(self._started(w.call, status.id, cid))
                                   for cid, w in zip(ids, items, strict=True)))
        except BaseException as exc:
            for w in items:
                if not w.ticket.done():
                    w.ticket.set_exception(exc)
                    w.ticket.exception()  # seen, even when its caller is gone
            if not isinstance(exc, Exception):
                raise
            return
        self.rt.emit(ev.BATCH_SUBMITTED, new_id(), self.rt.run_span, {
            "batch_id": status.id, "requests": len(items), "model": items[0].call.model_id,
            "keys": [w.call.key for w in items]})
        for cid, w in zip(ids, items, strict=True):
            if not w.ticket.done():
                w.ticket.set_result((status.id, cid))

    async def settle(self, grace_s: float) -> None:
        """The run is ending: drop requests not yet submitted (their callers are gone) and give
        submissions on the wire up to ``grace_s`` to journal their batch, so a resume finds it."""
        for group in self._groups.values():
            if group.timer is not None:
                group.timer.cancel()
            for w in group.items:
                w.ticket.cancel()
        self._groups.clear()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace_s)

    def _started(self, call: _Call, batch_id: str, cid: str) -> StepRecord:
        meta: dict[str, Any] = {"model": call.model_id, "prompt_version": call.site.prompt_version,
                                "batch": {"id": batch_id, "custom_id": cid}}
        if call.fingerprint is not None:
            meta["request"] = call.fingerprint
        return StepRecord(self.rt.run_id, call.key, "model", call.site.name, "started",
                          started_at=call.started, meta=meta)

    # --- waiting and collecting --------------------------------------------------------------

    async def _wait(self, model: Any, batch_id: str) -> dict[str, api.BatchOutcome]:
        """The outcomes of ``batch_id``, from the one watcher its callers share. When the last
        caller goes (the run stopped), the watcher stops polling: a resume collects the batch."""
        watcher = self._watcher(model, batch_id)
        self._waiting[batch_id] = self._waiting.get(batch_id, 0) + 1
        try:
            return await asyncio.shield(watcher)
        finally:
            self._waiting[batch_id] -= 1
            if not self._waiting[batch_id]:
                del self._waiting[batch_id]
                watcher.cancel()

    def _watcher(self, model: Any, batch_id: str) -> asyncio.Task[dict[str, api.BatchOutcome]]:
        """The one task that polls ``batch_id`` and fetches its results, shared by all its callers."""
        task = self._watchers.get(batch_id)
        if task is None:
            task = self._watchers[batch_id] = asyncio.get_running_loop().create_task(self._watch(model, batch_id))
            task.add_done_callback(lambda t: self._forget_failed(batch_id, t))
        return task

    def _forget_failed(self, batch_id: str, task: asyncio.Task[Any]) -> None:
        """A poll that failed (a lost connection) is not cached: the call's retry polls again."""
        if task.cancelled() or task.exception() is not None:
            if self._watchers.get(batch_id) is task:
                del self._watchers[batch_id]

    async def _watch(self, model: Any, batch_id: str) -> dict[str, api.BatchOutcome]:
        delay = self.options.poll_s
        t0 = time.monotonic()
        while True:
            status = await api.retrieve_batch(model, batch_id)
            self.rt.emit(ev.BATCH_PROGRESS, new_id(), self.rt.run_span, {
                "batch_id": batch_id, "status": status.processing_status, "counts": dict(status.counts),
                "waited_s": round(time.monotonic() - t0, 3)})
            if status.ended:
                outcomes = await api.batch_results(model, batch_id)
                self.rt.emit(ev.BATCH_ENDED, new_id(), self.rt.run_span, {
                    "batch_id": batch_id, "counts": dict(status.counts), "waited_s": round(time.monotonic() - t0, 3)})
                return outcomes
            if self.options.detach:
                raise BatchPending(
                    f"batch {batch_id} is {status.processing_status} ({status.counts.get('processing', 0)} of "
                    f"{status.total} requests processing); the run is detached: collect it later with "
                    f"baton resume {self.rt.run_id}", batch_id=batch_id)
            await self.rt.sleep(delay)
            delay = min(max(delay * 1.5, 0.001), self.options.max_poll_s)


async def cancel_batches(steps: list[StepRecord], bind: Callable[[str], Any]) -> tuple[list[str], list[str]]:
    """Cancel at the provider every batch the journal ``steps`` still wait on (a run being
    cancelled will never collect them): the cancelled batch ids, and one line per failure."""
    waiting: dict[str, str] = {}
    for step in steps:
        batch = step.meta.get("batch") if step.kind == "model" and step.status == "started" else None
        model_id = step.meta.get("model")
        if isinstance(batch, dict) and isinstance(batch.get("id"), str) and isinstance(model_id, str):
            waiting.setdefault(batch["id"], model_id)
    cancelled: list[str] = []
    failed: list[str] = []
    for batch_id, model_id in waiting.items():
        try:
            model = bind(model_id).model
            if supports_batches(model):
                await api.cancel_batch(model, batch_id)
                cancelled.append(batch_id)
        except BatonError as exc:  # the run is cancelled all the same; say what could not be
            failed.append(f"{batch_id}: {exc}")
    return cancelled, failed
