"""Run the ``baton`` CLI with a crash hook: SIGKILL this very process at an exact journal point.

Used by tests/test_crash_matrix.py instead of ``python -m baton`` (runtime code is not
touched; the hook wraps the store classes' methods in this process only)::

    BATON_CRASH_AT=PHASE:KIND:N python tests/crash/run_with_hooks.py run WORKFLOW ...

PHASE
    ``before_write``  kill right before the store write (``put_steps`` batch) that holds the
                      N-th matching record: the work is done, its record is not durable.
    ``after_write``   kill right after that write returned: the record is durable, nothing after it ran.
    ``after_group``   kill right after the first write whose batch holds at least N matching
                      records (a group commit of N+ parallel branches).
    ``after_create``  kill right after ``create_run`` returned (KIND and N are ignored): the run
                      is accepted and recorded, no step has run.
    ``before_settle`` kill right before the run's final status is written (KIND and N are
                      ignored): every step is journaled, the run still reads ``running``.
KIND
    ``model``, ``agent``, ``tool``, ``step``: completed records of that kind; ``tool_started``: the
    ``started`` record a non-idempotent tool writes before it runs; ``any``: every record.
N
    1-based ordinal among matching records written by this process.

``BATON_CRASH_REPORT=PATH`` (optional): before the kill, write (and fsync) a JSON object
``{"phase", "kind", "n", "batch": [{"key", "kind", "status"}...]}`` describing the write.
Without ``BATON_CRASH_AT`` this is exactly ``python -m baton`` (any subcommand: ``run``,
``resume``...), so a resumed process can be killed again the same way.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from typing import Any

PHASES = ("before_write", "after_write", "after_group", "after_create", "before_settle")
KINDS = ("model", "agent", "tool", "step", "tool_started", "any")


def parse(spec: str) -> tuple[str, str, int]:
    parts = spec.split(":")
    phase = parts[0]
    if phase not in PHASES:
        raise SystemExit(f"run_with_hooks: unknown phase {phase!r} in BATON_CRASH_AT={spec!r} (use {PHASES})")
    if phase in ("after_create", "before_settle"):
        return phase, "any", 1
    if len(parts) != 3 or parts[1] not in KINDS or not parts[2].isdigit() or int(parts[2]) < 1:
        raise SystemExit(f"run_with_hooks: BATON_CRASH_AT={spec!r} must be PHASE:KIND:N with KIND in {KINDS}")
    return phase, parts[1], int(parts[2])


def matches(kind: str, record: Any) -> bool:
    if kind == "any":
        return True
    if kind == "tool_started":
        return bool(record.kind == "tool" and record.status == "started")
    return bool(record.kind == kind and record.status == "completed")


def die(report: dict[str, Any]) -> None:
    path = os.environ.get("BATON_CRASH_REPORT")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, json.dumps(report).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


def install(spec: str) -> None:
    from baton.stores.memory import MemoryStore
    from baton.stores.postgres import PostgresStore
    from baton.stores.sqlite import SQLiteStore

    phase, kind, n = parse(spec)
    seen = 0

    def batch_info(steps: list[Any]) -> list[dict[str, str]]:
        return [{"key": s.key, "kind": s.kind, "status": s.status} for s in steps]

    def wrap_put(original: Any) -> Any:
        @functools.wraps(original)
        async def put_steps(self: Any, steps: list[Any], *, owner_token: str | None = None) -> None:
            nonlocal seen
            hits = sum(1 for s in steps if matches(kind, s))
            before = seen
            seen += hits
            report = {"phase": phase, "kind": kind, "n": n, "batch": batch_info(steps)}
            target = (phase in ("before_write", "after_write") and before < n <= seen)
            if target and phase == "before_write":
                die(report)
            await original(self, steps, owner_token=owner_token)
            if (target and phase == "after_write") or (phase == "after_group" and hits >= n):
                die(report)

        return put_steps

    def wrap_create(original: Any) -> Any:
        @functools.wraps(original)
        async def create_run(self: Any, run: Any) -> None:
            await original(self, run)
            die({"phase": phase, "kind": kind, "n": n, "batch": [], "run_id": run.run_id})

        return create_run

    def wrap_update(original: Any) -> Any:
        @functools.wraps(original)
        async def update_run(self: Any, run: Any, *, transition: str | None = None,
                             detail: dict[str, Any] | None = None, owner_token: str | None = None) -> None:
            if transition is not None and transition != "running":
                die({"phase": phase, "kind": kind, "n": n, "batch": [], "run_id": run.run_id,
                     "status": transition})
            await original(self, run, transition=transition, detail=detail, owner_token=owner_token)

        return update_run

    for cls in (MemoryStore, SQLiteStore, PostgresStore):
        if phase == "after_create":
            cls.create_run = wrap_create(cls.create_run)  # type: ignore[method-assign]
        elif phase == "before_settle":
            cls.update_run = wrap_update(cls.update_run)  # type: ignore[method-assign]
        else:
            cls.put_steps = wrap_put(cls.put_steps)  # type: ignore[method-assign]


def main() -> int:
    spec = os.environ.get("BATON_CRASH_AT")
    if spec:
        install(spec)
    from baton.cli.main import main as baton_main

    return baton_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
