"""Shared pieces for baton's benchmarks: a fake API in its own process and ``measure``.

``measure(name, coro_factory)`` runs ``coro_factory()`` ``calls`` times with at most
``concurrency`` in flight and reports the CPU time this process spent per call
(``time.process_time``) plus wall time. The fake server runs in a separate process so
its CPU is not counted.

    from _harness import FakeServerProcess, measure, print_table
    with FakeServerProcess() as url:
        result = asyncio.run(measure("my variant", lambda: model.complete(req)))
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from baton.runtime.engine import Engine


@dataclass
class Result:
    name: str
    calls: int
    cpu_s: float
    wall_s: float
    errors: int
    first_error: str | None = None

    @property
    def cpu_ms_per_call(self) -> float:
        return self.cpu_s * 1000.0 / max(1, self.calls)


async def _drive(factory: Callable[[], Awaitable[Any]], calls: int, concurrency: int) -> tuple[int, str | None]:
    remaining = calls
    errors = 0
    first: str | None = None

    async def worker() -> None:
        nonlocal remaining, errors, first
        while remaining > 0:
            remaining -= 1
            try:
                await factory()
            except Exception as exc:  # noqa: BLE001 - counted and reported, never hidden
                errors += 1
                first = first or f"{type(exc).__name__}: {exc}"

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, calls)))))
    return errors, first


async def measure(name: str, coro_factory: Callable[[], Awaitable[Any]], *, calls: int = 5000,
                  concurrency: int = 1000, warmup: int | None = None) -> Result:
    """CPU ms per call of ``coro_factory()`` at ``concurrency`` (after a warm-up round).

    The warm-up (default: ``concurrency`` calls, at least 200) opens the connection pool
    so the measured round reuses it, as a long-running process would.
    """
    await _drive(coro_factory, warmup if warmup is not None else max(200, concurrency), concurrency)
    gc.collect()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    errors, first = await _drive(coro_factory, calls, concurrency)
    cpu1, wall1 = time.process_time(), time.perf_counter()
    return Result(name, calls, cpu1 - cpu0, wall1 - wall0, errors, first)


def print_table(results: Sequence[Result], *, baseline: str | None = None, file: Any = None) -> None:
    """A plain-text table; ``ratio`` is CPU per call relative to the ``baseline`` row."""
    out = file or sys.stdout
    base = next((r for r in results if r.name == baseline), results[0] if results else None)
    width = max([len("variant")] + [len(r.name) for r in results])
    print(f"{'variant':<{width}}  {'calls':>6}  {'CPU ms/call':>11}  {'wall s':>7}  {'ratio':>6}  errors", file=out)
    for r in results:
        ratio = r.cpu_ms_per_call / base.cpu_ms_per_call if base and base.cpu_ms_per_call else float("nan")
        print(f"{r.name:<{width}}  {r.calls:>6}  {r.cpu_ms_per_call:>11.3f}  {r.wall_s:>7.2f}  {ratio:>6.2f}  "
              f"{r.errors}" + (f"  ({r.first_error})" if r.first_error else ""), file=out)


class UnjournaledEngine(Engine):
    """An engine that keeps no journal (the run record still goes to the store): the bare
    call path, to measure what journaling costs on top of it."""

    def _new_journal(self, store: Any, run_id: str, owner_token: str) -> None:
        return None


class FakeServerProcess:
    """``python -m baton.testing.fake_anthropic`` in a child process; the context value is its URL."""

    def __init__(self, *args: str, timeout_s: float = 30.0) -> None:
        self.args = list(args)
        self.timeout_s = timeout_s
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> str:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "baton.testing.fake_anthropic", "--port", "0", *self.args],
            stdout=subprocess.PIPE, text=True, env=env)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("READY "):
                self.url = line.split()[1]
                return self.url
            if not line and self.proc.poll() is not None:
                break
        self.__exit__(None, None, None)
        raise RuntimeError("fake Anthropic server did not print READY")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
