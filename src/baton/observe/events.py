"""The one event stream. Journal views, JSONL logs, spans, metrics and the CLI read it.

Emitting is cheap when nobody listens: ``EventStream.emit`` returns at once with no
sinks, so the hot path pays for observability only when it is switched on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

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
HANDOFF = "handoff"
BUS_MESSAGE = "bus.message"
APPROVAL_REQUESTED = "approval.requested"
APPROVAL_DECIDED = "approval.decided"
CACHE_HIT = "cache.hit"
PLAN_INVALID = "plan.invalid"
STATE_CHANGE = "state.change"
ROUTER_DECISION = "router.decision"
FAN_OUT_DONE = "fan_out.done"
CONSENSUS_RESULT = "consensus.result"
REFINE_ROUND = "refine.round"


def new_id(nbytes: int = 8) -> str:
    return os.urandom(nbytes).hex()


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
    """Fan events out to sinks. A failing sink is dropped from nothing else's path."""

    __slots__ = ("_sinks", "_listeners")

    def __init__(self, sinks: list[Sink] | None = None) -> None:
        self._sinks: list[Sink] = list(sinks or [])
        self._listeners: list[Callable[[Event], None]] = []

    @property
    def active(self) -> bool:
        return bool(self._sinks or self._listeners)

    def add_sink(self, sink: Sink) -> None:
        self._sinks.append(sink)

    def listen(self, fn: Callable[[Event], None]) -> None:
        self._listeners.append(fn)

    def emit(self, event: Event) -> None:
        for sink in self._sinks:
            sink.handle(event)
        for fn in self._listeners:
            fn(event)

    def close(self) -> None:
        for sink in self._sinks:
            sink.close()
