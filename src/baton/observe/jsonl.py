"""JSONL event log: one JSON object per line, appended, readable after a crash.

Lines are written with ``os.write`` on an ``O_APPEND`` descriptor (whole lines per
call), so lines from several processes sharing a file do not interleave. With the
default ``flush_interval_s=0`` an event is in the file by the end of the event-loop
iteration in which it was emitted: the sink's work is batched per iteration (see
``baton.observe.capture``) and the lines of one iteration, under load the events of
many concurrent agent calls, go out in one write. Outside a running loop each line is
written at once. A run killed with SIGKILL leaves a log that ends at the last event
emitted before its last ``await``; ``run.end`` and error events are written as soon as
they are handled.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from baton.errors import UsageError
from baton.observe.capture import defer, drain, sanitized, sanitized_text
from baton.observe.events import MODEL_ERROR, RUN_END, Event
from baton.observe.redact import Capture, check_capture

log = logging.getLogger("baton.observe")

_ENVELOPE = frozenset({"ts", "kind", "run_id", "trace_id", "span_id", "parent_id"})
_OPTIONS = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS
# Written at once even when batching: the run is over or something went wrong.
_URGENT = frozenset({RUN_END, MODEL_ERROR})


class JSONLSink:
    """Append every event to ``path`` as JSON lines.

    ``capture`` decides how much content is kept (see ``apply_capture``); secrets are
    always masked. ``flush_interval_s=0`` writes each event by the end of the current
    event-loop iteration (at once outside a loop); a positive value holds lines back
    for up to that long, checked once per iteration (still writing at ``run.end``, on
    errors and on ``close``). The file is created with mode 0600: it may hold content.
    """

    def __init__(self, path: str | os.PathLike[str], capture: Capture = "metadata", *,
                 flush_interval_s: float = 0.0) -> None:
        self.path = Path(path)
        self.capture: Capture = check_capture(capture)
        self.flush_interval_s = flush_interval_s
        self.lines_written = 0
        self._pending: list[bytes] = []
        self._last_flush = time.monotonic()
        self._lock = threading.Lock()
        self._failed = False
        self._run_id = ("", "")  # the last run id and its redacted form
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise UsageError(f"cannot open JSONL log {self.path}: {exc.strerror or exc}") from exc

    def handle(self, event: Event) -> None:
        if self._fd is None or self._failed:
            return
        if not defer(self, event):  # no event loop here: write it now
            self.process(event)
            self.batch_done()

    def process(self, event: Event) -> None:
        if self._fd is None or self._failed:
            return
        line = self._encode(event)
        with self._lock:
            self._pending.append(line)
            if event.kind in _URGENT or event.data.get("status") == "error":
                self._flush_pending()

    def batch_done(self) -> None:
        with self._lock:
            if self._fd is None or self._failed or not self._pending:
                return
            if self.flush_interval_s > 0:
                now = time.monotonic()
                if now - self._last_flush < self.flush_interval_s:
                    return
                self._last_flush = now
            self._flush_pending()

    def _encode(self, event: Event) -> bytes:
        data = sanitized(event, self.capture)
        run_id = self._run_id  # read once: another thread may replace it
        if run_id[0] != event.run_id:
            run_id = self._run_id = (event.run_id, sanitized_text(event.run_id))
        record: dict[str, Any] = {
            "ts": event.ts, "kind": event.kind, "run_id": run_id[1],
            "trace_id": event.trace_id, "span_id": event.span_id, "parent_id": event.parent_id,
        }
        if _ENVELOPE.isdisjoint(data):
            record.update(data)
        else:
            for key, value in data.items():
                if key not in record:  # the envelope is authoritative
                    record[key] = value
        return orjson.dumps(record, option=_OPTIONS, default=str)

    def _flush_pending(self) -> None:
        pending = self._pending
        if pending:
            data = pending[0] if len(pending) == 1 else b"".join(pending)
            count = len(pending)
            pending.clear()
            self._write(data, count)

    def _write(self, data: bytes, count: int = 1) -> None:
        assert self._fd is not None
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            self.lines_written += count
        except OSError as exc:
            # A full disk must not crash the run; say so once and stop logging.
            self._failed = True
            log.warning("JSONL event log %s stopped: %s", self.path, exc)

    def flush(self) -> None:
        drain()
        with self._lock:
            if self._fd is not None and not self._failed:
                self._flush_pending()

    def close(self) -> None:
        drain()
        with self._lock:
            if self._fd is None:
                return
            if not self._failed:
                self._flush_pending()
            os.close(self._fd)
            self._fd = None


def read_events(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Yield the events of a JSONL log in order. A torn last line (crash mid-write) is skipped."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read JSONL log {p}: {exc.strerror or exc}") from exc
    lines = raw.split(b"\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            if number == len(lines):  # no newline after it: the writer died mid-line
                return
            raise UsageError(f"{p}:{number}: not a JSON object: {exc}") from exc
        if not isinstance(record, dict):
            raise UsageError(f"{p}:{number}: expected a JSON object, got {type(record).__name__}")
        yield record
