"""Watch a run as it happens: ``async for item in baton.stream(workflow, input)``.

The iterator yields the run's events (``baton.observe.events.Event``), ``text.delta``
events included, in the order they were emitted, and ends with the run's ``RunResult``.
Deltas are a view: the journal keeps whole responses, and a resumed run replays its
completed steps without streaming them again.

Leaving the loop early (``break``, an exception, ``aclose()``) stops the run: it is
recorded ``interrupted`` (resumable) before the iterator finishes closing. Wrap the
iterator in ``contextlib.aclosing`` to have that happen at once rather than when the
iterator is collected.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from baton.api import _engine
from baton.observe.events import Event, Sink
from baton.runtime.engine import RunResult, Workflow

__all__ = ["stream", "stream_resume"]

_END = object()


class _QueueSink:
    """Every event of the run, deltas included, into the iterator's queue."""

    wants_deltas = True

    def __init__(self, queue: asyncio.Queue[Any]) -> None:
        self.queue = queue

    def handle(self, event: Event) -> None:
        self.queue.put_nowait(event)

    def close(self) -> None:
        return None


async def _iterate(start: Callable[[list[Sink]], Awaitable[RunResult]],
                   sinks: list[Sink] | None) -> AsyncIterator[Event | RunResult]:
    queue: asyncio.Queue[Any] = asyncio.Queue()
    task = asyncio.ensure_future(start([*(sinks or []), _QueueSink(queue)]))
    task.add_done_callback(lambda _: queue.put_nowait(_END))
    try:
        while (item := await queue.get()) is not _END:
            yield item
        yield task.result()  # the run's own exception (a usage error, an owner conflict) is raised here
    finally:
        if not task.done():  # the consumer left early: the run stops and is recorded interrupted
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def stream(workflow: Workflow, input: Any = None, *, run_id: str | None = None, limits: Any = None,
           metadata: dict[str, Any] | None = None, **options: Any) -> AsyncIterator[Event | RunResult]:
    """``baton.run``, watched: its events (text deltas included) as they happen, then its ``RunResult``.

    Takes the options of ``baton.run``."""
    sinks = options.pop("sinks", None)

    def start(all_sinks: list[Sink]) -> Awaitable[RunResult]:
        return _engine({**options, "sinks": all_sinks}).run(workflow, input, run_id=run_id, limits=limits,
                                                            metadata=metadata)

    return _iterate(start, sinks)


def stream_resume(run_id: str, workflow: Workflow | None = None, *, force: bool = False,
                  **options: Any) -> AsyncIterator[Event | RunResult]:
    """``baton.resume``, watched. Completed steps replay from the journal: no deltas for them."""
    sinks = options.pop("sinks", None)
    overrides = {k: options.pop(k) for k in ("budget_usd", "budget_tokens", "max_model_calls", "timeout_s")
                 if k in options}

    def start(all_sinks: list[Sink]) -> Awaitable[RunResult]:
        return _engine({**options, "sinks": all_sinks}).resume(run_id, workflow, force=force, **overrides)

    return _iterate(start, sinks)
