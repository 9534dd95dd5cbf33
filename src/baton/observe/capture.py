"""What sinks share: an event's data with capture mode applied and secrets masked, and
the end-of-iteration batch in which the built-in sinks do their work.

Several sinks usually see the same event one after another, so the last result per
mode is kept and reused: with JSONL, OpenTelemetry and metrics on, each event is
redacted once per capture mode rather than once per sink. Emitted events are treated
as immutable (the runtime builds a fresh ``data`` dict per event).

Batching: on a running event loop, ``JSONLSink``, ``OTelSink`` and ``MetricsSink`` only
queue an event when it is emitted; the queue is worked through, in emit order and one
event at a time across the sinks, at the end of the current loop iteration. Under load
an iteration carries the events of many concurrent agent calls, and doing them in one
tight run instead of between network callbacks keeps the sinks' code and data in the
CPU caches. The output is the same (events carry their own timestamps). An
``EventStream`` (what the runtime emits into) keeps that queue itself, one entry per
event for all its sinks (see ``EventStream``); ``defer`` below is the same for a sink
whose ``handle`` is called directly, with one ``call_soon`` per iteration shared by
all such sinks. Without a running loop, events are handled at once. ``drain()``
(called by each sink's ``close``) works the queue through immediately.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Protocol

from baton.observe.events import Event, run_batch
from baton.observe.redact import Capture, apply_capture, generation, redact_text

# mode -> (event, data, secrets generation, result). Replaced whole, so readers on other
# threads see either the old entry or the new one, never a mix.
_last: dict[str, tuple[Event, dict[str, Any], int, dict[str, Any]]] = {}


def sanitized(event: Event, mode: Capture) -> dict[str, Any]:
    """``event.data`` after ``apply_capture(data, mode)``. Read-only: never mutate the result."""
    entry = _last.get(mode)
    if entry is not None and entry[0] is event and entry[1] is event.data and entry[2] == generation():
        return entry[3]
    result = apply_capture(event.data, mode)
    _last[mode] = (event, event.data, generation(), result)
    return result


def sanitized_text(value: str) -> str:
    """Redact one identifier-like string (names, ids) before it is shown or used as a label."""
    return redact_text(value)


class Batched(Protocol):
    """A sink whose work can wait for the end of the loop iteration."""

    def process(self, event: Event) -> None:
        """Do the sink's work for one event (in emit order)."""

    def batch_done(self) -> None:
        """Called once per worked-through queue, after its last event (e.g. write the lines)."""


_local = threading.local()  # per thread: (the loop, its queue) while a queue waits for its loop


def defer(sink: Batched, event: Event) -> bool:
    """Queue ``sink.process(event)`` for the end of this loop iteration.

    False when no event loop runs in this thread: the caller handles the event itself.
    """
    loop = asyncio._get_running_loop()  # None outside a loop, without raising
    state: tuple[asyncio.AbstractEventLoop, list[tuple[Batched, Event]]] | None = getattr(_local, "state", None)
    if state is not None and state[0] is loop:
        state[1].append((sink, event))
        return True
    if state is not None:  # left by a loop that stopped before running it: those events come first
        _run_queue(state[1])
    if loop is None:
        return False
    queue = [(sink, event)]
    _local.state = (loop, queue)
    loop.call_soon(_run_queue, queue)
    return True


def drain() -> None:
    """Work through this thread's queue now (a sink is closing, or its data is wanted)."""
    state = getattr(_local, "state", None)
    if state is not None:
        _run_queue(state[1])


def _run_queue(queue: list[tuple[Batched, Event]]) -> None:
    state = getattr(_local, "state", None)
    if state is not None and state[1] is queue:
        _local.state = None  # events emitted from here on start the next queue
    items = queue[:]
    queue.clear()  # drain() and the scheduled callback may both reach the same queue
    run_batch(items, {id(sink): sink for sink, _ in items}.values())
