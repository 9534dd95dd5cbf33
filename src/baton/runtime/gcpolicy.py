"""Garbage-collector thresholds for a process that hosts many runs at once.

Thousands of runs in flight keep a few hundred objects each alive for as long as their
model calls take, and CPython's default thresholds (700, 10, 10) then collect so often
that the collector becomes the largest single cost of a run: in
``benchmarks/bench_many_runs.py`` (3,000 concurrent runs) a run cost 1.2 ms of CPU with
the defaults and 0.8-0.9 ms with ``THRESHOLDS``; with the collector off, 0.7 ms.

baton applies them only in processes it owns (the ``baton`` command, which includes
``baton serve``). A library call never changes its host's collector: a service that hosts
many ``baton.run`` calls can call ``tune_gc()`` itself at start-up.
"""

from __future__ import annotations

import gc

__all__ = ["THRESHOLDS", "tune_gc"]

THRESHOLDS = (10_000, 50, 100)
"""Collect the young generation every 10,000 net allocations instead of 700 (short-lived request
objects are freed by reference counting before a collection sees them), and the older ones less often."""


def tune_gc() -> tuple[int, int, int]:
    """Raise the collector's thresholds to at least ``THRESHOLDS`` (never lower one); returns the
    previous ones, for ``gc.set_threshold(*previous)``."""
    previous = gc.get_threshold()
    gc.set_threshold(*(max(old, new) for old, new in zip(previous, THRESHOLDS, strict=True)))
    return previous
