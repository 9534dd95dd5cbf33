"""Side-effecting tools for the crash tests, with an fsynced append-only ledger.

The ledger (path in ``$BATON_LEDGER``) is one JSON object per line: every invocation
appends an ``attempt``; a real side effect appends an ``effect``. ``record`` is
idempotent: it looks its ``ctx.idempotency_key`` up first and performs the effect at
most once per key. ``send`` is not: every invocation is a new effect (like an email).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from baton.tools import ToolContext


def _ledger() -> Path:
    path = os.environ.get("BATON_LEDGER")
    if not path:
        raise RuntimeError("BATON_LEDGER is not set: the crash tests' tools need a ledger file")
    return Path(path)


def read_ledger(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def _append(path: Path, entry: dict[str, Any]) -> None:
    # O_APPEND + fsync: once this returns, the line survives a SIGKILL of this process.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(entry, sort_keys=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def record(ctx: ToolContext, item: str) -> str:
    """Record an item in the ledger (idempotent: once per idempotency key).

    Args:
        item: what to record.
    """
    ledger = _ledger()
    _append(ledger, {"tool": "record", "event": "attempt", "key": ctx.idempotency_key, "pid": os.getpid()})
    for entry in read_ledger(ledger):
        if entry["event"] == "effect" and entry["key"] == ctx.idempotency_key:
            return str(entry["result"])  # already done under this key: same answer, no new effect
    result = f"recorded {item}"
    _append(ledger, {"tool": "record", "event": "effect", "key": ctx.idempotency_key, "item": item,
                     "result": result, "pid": os.getpid()})
    return result


def send(ctx: ToolContext, item: str) -> str:
    """Send a notice about an item (not idempotent: every call sends again).

    Args:
        item: what the notice is about.
    """
    ledger = _ledger()
    _append(ledger, {"tool": "send", "event": "attempt", "key": ctx.idempotency_key, "pid": os.getpid()})
    _append(ledger, {"tool": "send", "event": "effect", "key": ctx.idempotency_key, "item": item,
                     "result": f"sent {item}", "pid": os.getpid()})
    return f"sent {item}"
