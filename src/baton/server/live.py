"""Per-run event buffers for Server-Sent Events, fed by the one event stream.

The service adds one ``LiveEvents`` sink to every run it executes. Each run keeps its
last ``per_run`` events, numbered from 1 in this process, so a subscriber that
reconnects with ``Last-Event-ID: N`` gets what followed N (while still buffered).
Only the last ``max_runs`` runs keep a buffer."""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from baton.observe import events as ev
from baton.observe.events import Event
from baton.observe.redact import redact


@dataclass
class RunBuffer:
    events: deque[tuple[int, str, dict[str, Any]]]
    seq: int = 0
    ended: bool = False
    """The last event is the run's own ``run.end`` (a resume starts a new stretch)."""
    trace_id: str | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    deltas: deque[tuple[int, str, dict[str, Any]]] | None = None
    """``text.delta`` events, kept apart so that a long answer's many pieces never push the
    run's other events out of ``events`` (a reconnect with ``Last-Event-ID`` still finds them)."""


class LiveEvents:
    """A sink: keeps each run's recent events and wakes whoever waits for them."""

    wants_deltas = True
    """``text.delta`` events reach the SSE stream too (the UI shows agents writing)."""

    def __init__(self, per_run: int = 2000, max_runs: int = 2000) -> None:
        self.per_run, self.max_runs = per_run, max_runs
        self.runs: OrderedDict[str, RunBuffer] = OrderedDict()

    def buffer(self, run_id: str) -> RunBuffer:
        buf = self.runs.get(run_id)
        if buf is None:
            buf = self.runs[run_id] = RunBuffer(deque(maxlen=self.per_run))
            while len(self.runs) > self.max_runs:
                self.runs.popitem(last=False)
        else:
            self.runs.move_to_end(run_id)
        return buf

    def handle(self, event: Event) -> None:
        buf = self.buffer(event.run_id)
        buf.seq += 1
        buf.trace_id = buf.trace_id or event.trace_id
        item = (buf.seq, event.kind, redact(event.to_dict()))
        if event.kind == ev.TEXT_DELTA:
            if buf.deltas is None:
                buf.deltas = deque(maxlen=self.per_run)
            buf.deltas.append(item)
        else:
            buf.events.append(item)
        buf.ended = event.kind == ev.RUN_END and event.parent_id is None
        buf.changed.set()
        buf.changed = asyncio.Event()

    def close(self) -> None:
        """Called at the end of every run's stream: the buffers outlive it."""

    def trace_id(self, run_id: str) -> str | None:
        buf = self.runs.get(run_id)
        return buf.trace_id if buf else None

    def since(self, run_id: str, last: int) -> tuple[list[tuple[int, str, dict[str, Any]]], RunBuffer]:
        buf = self.buffer(run_id)
        found = [e for e in buf.events if e[0] > last]
        if buf.deltas:
            found = sorted(found + [e for e in buf.deltas if e[0] > last], key=lambda e: e[0])
        return found, buf
