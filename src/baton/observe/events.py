"""The one event stream. Journal views, JSONL logs, spans, metrics and the CLI read it.

Emitting is cheap when nobody listens: ``EventStream.emit`` returns at once with no
sinks, so the hot path pays for observability only when it is switched on.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger("baton.observe")
# Queued events are worked through early once this many wait: events kept for the end of
# a busy iteration (hundreds of responses arrive in one) would outlive collections of the
# garbage collector and make it run more often, for more objects.
_FLUSH_AT = 64

# Event kinds. Kept as plain strings so sinks and stored logs stay data-only.
RUN_START = "run.start"
RUN_END = "run.end"
AGENT_START = "agent.start"
AGENT_END = "agent.end"
MODEL_REQUEST = "model.request"
MODEL_RESPONSE = "model.response"
MODEL_ERROR = "model.error"
TOOL_CALL = "tool.call"
TOOL_RESULT = "tool.result"
TOOL_DENIED = "tool.denied"
STEP_START = "step.start"
STEP_END = "step.end"
STEP_REPLAYED = "step.replayed"
RETRY = "retry"
RATE_LIMIT_WAIT = "rate_limit.wait"
BREAKER_CHANGE = "breaker.change"
BUDGET_CHECK = "budget.check"
HANDOFF_RECORDED = "handoff"
BUS_MESSAGE = "bus.message"
APPROVAL_REQUESTED = "approval.requested"
APPROVAL_DECIDED = "approval.decided"
CACHE_HIT = "cache.hit"
PLAN_INVALID = "plan.invalid"
PLAN_REPAIRED = "plan.repaired"
STATE_CHANGE = "state.change"
ROUTER_DECISION = "router.decision"
FAN_OUT_DONE = "fan_out.done"
CONSENSUS_RESULT = "consensus.result"
REFINE_ROUND = "refine.round"
RUN_WARNING = "run.warning"
MODEL_ROUTED = "model.routed"
BATCH_SUBMITTED = "batch.submitted"
BATCH_PROGRESS = "batch.progress"
BATCH_ENDED = "batch.ended"
TEXT_DELTA = "text.delta"
"""A piece of a model's answer as it is generated: a view, never a journal record. Only
listeners and sinks that ask for deltas (``listen(fn, deltas=True)``, a sink with
``wants_deltas = True``) get these; with none, model calls are not streamed for them."""


def new_id(nbytes: int = 8) -> str:
    return os.urandom(nbytes).hex()


def trace_id_for(run_id: str) -> str:
    """The run's trace id (32 hex digits), the same for every execution of it.

    Derived, not stored: a resumed run, in this process or another, continues the trace
    its first execution started, so one run is one trace.
    """
    return hashlib.blake2b(run_id.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


@dataclass(slots=True)
class Event:
    """One thing that happened. ``span_id``/``parent_id`` place it in the run's span tree."""

    kind: str
    run_id: str
    trace_id: str
    span_id: str
    parent_id: str | None
    data: dict[str, Any] = field(default_factory=dict)
    ts: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {"ts": self.ts, "kind": self.kind, "run_id": self.run_id, "trace_id": self.trace_id,
                "span_id": self.span_id, "parent_id": self.parent_id, **self.data}


class Sink(Protocol):
    def handle(self, event: Event) -> None: ...

    def close(self) -> None: ...


class EventStream:
    """Fan events out to sinks. A failing sink is dropped from nothing else's path.

    Sinks that can wait (``process``/``batch_done``, as the built-in JSONL, OpenTelemetry
    and metrics sinks) are not called at emit on a running event loop: the stream queues
    the event once and works the queue through at the end of the loop iteration (or once
    64 events wait), one event at a time across those sinks, then calls each one's
    ``batch_done`` (see ``baton.observe.capture`` for why). Other sinks and listeners are
    called at once.
    Without a running loop every sink is called at once; ``flush``/``close`` work the
    queue through immediately.
    """

    __slots__ = ("_sinks", "_listeners", "_batched", "_immediate", "_root_hooks", "_pending", "_loop",
                 "_delta_fns", "_delta_listeners", "_wanted", "_batched_kinds")

    def __init__(self, sinks: list[Sink] | None = None) -> None:
        self._sinks: list[Sink] = list(sinks or [])
        self._listeners: list[Callable[[Event], None]] = []
        self._pending: list[Event] = []
        self._loop: Any = None
        self._delta_listeners: list[Callable[[Event], None]] = []
        self._sort_sinks()

    def _sort_sinks(self) -> None:
        self._batched: list[Any] = [s for s in self._sinks if _batched(s)]
        self._immediate = [s for s in self._sinks if not _batched(s)]
        # Each batched sink with the kinds it takes (None: all); immediate ones are filtered at emit.
        self._batched_kinds: list[tuple[Any, frozenset[str] | None]] = [
            (s, getattr(s, "event_kinds", None)) for s in self._batched]
        # Called at emit for run-level events: e.g. the OTel sink notes the caller's current span.
        self._root_hooks = [s.note_root for s in self._batched if callable(getattr(s, "note_root", None))]
        self._delta_fns: list[Callable[[Event], None]] = [
            *(s.handle for s in self._sinks if getattr(s, "wants_deltas", False)), *self._delta_listeners]
        # The kinds someone takes, when every sink says which it takes (``event_kinds``); None: all of them.
        kinds: list[frozenset[str] | None] = [getattr(s, "event_kinds", None) for s in self._sinks]
        self._wanted: frozenset[str] | None = None
        if not self._listeners and all(k is not None for k in kinds):
            self._wanted = frozenset(kind for k in kinds if k is not None for kind in k)

    def wants(self, kind: str) -> bool:
        """Whether a sink or listener takes events of ``kind``: the runtime builds an event's data
        only then (the CLI's progress sinks take neither ``model.request`` nor step starts)."""
        wanted = self._wanted
        return kind in wanted if wanted is not None else bool(self._sinks or self._listeners)

    @property
    def wants_deltas(self) -> bool:
        """Whether anyone takes ``text.delta`` events (the runtime streams model calls only then)."""
        return bool(self._delta_fns)

    def emit_delta(self, event: Event) -> None:
        """A ``text.delta`` event, to the sinks and listeners that asked for deltas only: logs,
        spans and metrics keep whole responses."""
        for fn in self._delta_fns:
            try:
                fn(event)
            except Exception:
                log.exception("baton delta listener failed")

    @property
    def active(self) -> bool:
        return bool(self._sinks or self._listeners)

    def add_sink(self, sink: Sink) -> None:
        self.flush()  # the new sink sees events from its arrival on, as before batching
        self._sinks.append(sink)
        self._sort_sinks()

    def listen(self, fn: Callable[[Event], None], *, deltas: bool = False) -> None:
        """Call ``fn`` with every event; with ``deltas=True`` also with each ``text.delta``."""
        self._listeners.append(fn)
        self._wanted = None  # a listener takes every kind
        if deltas:
            self._delta_listeners.append(fn)
            self._delta_fns.append(fn)

    def emit(self, event: Event) -> None:
        if self._wanted is not None and event.kind not in self._wanted:
            return
        if self._batched:
            if event.parent_id is None:
                for hook in self._root_hooks:
                    hook(event)
            pending = self._pending
            if pending and self._loop.is_running():  # the usual case: the iteration's flush is scheduled
                pending.append(event)
                if len(pending) >= _FLUSH_AT:
                    self.flush()
            else:
                self._first(event)
        for sink in self._immediate:
            kinds = getattr(sink, "event_kinds", None)
            if kinds is None or event.kind in kinds:
                sink.handle(event)
        for fn in self._listeners:
            fn(event)

    def _first(self, event: Event) -> None:
        """The first event of an iteration: schedule the flush (one running-loop lookup per iteration)."""
        if self._pending:  # queued on a loop that stopped before working them through: they go first
            self.flush()
        loop = asyncio._get_running_loop()  # None outside a loop, without raising
        self._pending.append(event)
        if loop is None:
            self.flush()
        else:
            self._loop = loop
            loop.call_soon(self.flush)

    def flush(self) -> None:
        """Work the queued events through the waiting sinks now."""
        if not self._pending:
            return
        events = self._pending[:]
        self._pending.clear()  # events emitted by a sink from here on start the next queue
        pairs = self._batched_kinds
        run_batch(((sink, event) for event in events for sink, kinds in pairs
                   if kinds is None or event.kind in kinds), self._batched)

    def close(self) -> None:
        self.flush()
        for sink in self._sinks:
            sink.close()


def run_batch(work: Iterable[tuple[Any, Event]], sinks: Iterable[Any]) -> None:
    """``sink.process(event)`` for each pair in order, then each of ``sinks``' ``batch_done``.
    A sink that fails is logged; the others and the run go on."""
    for sink, event in work:
        try:
            sink.process(event)
        except Exception:
            log.exception("baton event sink %s failed on %s", type(sink).__name__, event.kind)
    for sink in sinks:
        try:
            sink.batch_done()
        except Exception:
            log.exception("baton event sink %s failed to finish a batch", type(sink).__name__)


def _batched(sink: Any) -> bool:
    return callable(getattr(sink, "process", None)) and callable(getattr(sink, "batch_done", None))
