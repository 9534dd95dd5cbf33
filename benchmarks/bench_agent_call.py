"""CPU cost of one complete baton agent call at 1,000 concurrent calls (issue 2).

A "complete agent call" is ``ctx.call(agent, prompt)`` of a one-turn agent inside a
running workflow: the context's key and depth bookkeeping, the agent loop, the call
path (budget reservation, concurrency slot, rate governor with limits configured but
not binding, circuit breaker, retry loop), the Anthropic adapter over a real socket,
cost accounting and the event stream (no sinks attached). ``UnjournaledEngine``: no journal
(bench_journal.py measures that). The fake API runs in another process; CPU is this
process's ``time.process_time`` per call, measured against, in the same run:

  a. bare aiohttp POST + orjson decode (the floor any aiohttp client pays)
  b. baton's AnthropicModel.complete alone (the adapter)
  c. the full agent call

It also times ``import baton`` in fresh interpreters.

    .venv/bin/python benchmarks/bench_agent_call.py                    # 5,000 calls at concurrency 1,000
    .venv/bin/python benchmarks/bench_agent_call.py --calls 20000 --profile
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import pstats
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from _harness import FakeServerProcess, Result, UnjournaledEngine, measure, print_table
from bench_transport import MODEL, PROMPT, SYSTEM, bare_aiohttp, baton_model

import baton
from baton.models.anthropic import AnthropicModel
from baton.observe.events import Sink
from baton.runtime.ratelimit import RateGovernor, RateLimits
from baton.stores.memory import MemoryStore

TARGET_MS = 0.5
TARGET_IMPORT_MS = 150.0

agent = baton.Agent("greeter", system=SYSTEM, model=MODEL, max_tokens=64)


def verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


def generous_governor() -> RateGovernor:
    """Limits configured (so every call takes from real buckets) but far above what the run needs."""
    return RateGovernor({MODEL: RateLimits(rpm=100_000_000, itpm=10_000_000_000, otpm=1_000_000_000)})


async def agent_calls(url: str, args: argparse.Namespace, profile: cProfile.Profile | None) -> Result:
    """Measure ``ctx.call`` from inside one workflow run (what a fan-out does)."""
    model = AnthropicModel(api_key="sk-bench", base_url=url, max_connections=args.concurrency)
    engine = UnjournaledEngine(store=MemoryStore(), model=model, governor=generous_governor())
    box: dict[str, Result] = {}

    async def workflow(ctx: baton.RunContext, _: Any) -> None:
        def call() -> Awaitable[Any]:
            return ctx.call(agent, PROMPT)

        if profile is None:
            box["r"] = await measure("baton agent call (ctx.call)", call, calls=args.calls,
                                     concurrency=args.concurrency)
        else:
            await measure("warm", call, calls=args.concurrency, concurrency=args.concurrency)
            profile.enable()
            box["r"] = await measure("profiled", call, calls=args.calls, concurrency=args.concurrency, warmup=0)
            profile.disable()

    # concurrency: the run's slot limit must not be what bounds the 1,000 in flight.
    limits = baton.Limits(concurrency=args.concurrency, max_depth=5)
    try:
        result = await engine.run(workflow, None, limits=limits)
    finally:
        await model.aclose()
    if result.status != "succeeded":
        raise RuntimeError(f"benchmark run {result.status}: {result.error}")
    return box["r"]


async def transport_rows(url: str, args: argparse.Namespace) -> list[Result]:
    rows = []
    variants: list[tuple[str, Callable[..., Any]]] = [("bare aiohttp + orjson", bare_aiohttp),
                                                      ("baton AnthropicModel.complete", baton_model)]
    for name, factory in variants:
        call, close = factory(url, args.concurrency)
        try:
            rows.append(await measure(name, call, calls=args.calls, concurrency=args.concurrency))
        finally:
            await close()
        print(f"  measured {name}", file=sys.stderr, flush=True)
    return rows


async def run_cpu_ms(url: str, calls: int, concurrency: int, sinks: Callable[[], list[Sink]], *,
                     rounds: int = 1, call_agent: baton.Agent = agent, prompt: str = PROMPT) -> float:
    """CPU ms per agent call over whole runs of ``calls`` calls, ``concurrency`` in flight.

    Timed around ``Engine.run`` so that the sinks' final flush (OTel batch thread, JSONL
    file) is counted; ``sinks()`` builds a fresh set per run (a run closes its sinks).
    The first run warms the connection pool and is not counted; then ``rounds`` runs.
    """
    model = AnthropicModel(api_key="sk-bench", base_url=url, max_connections=concurrency)
    limits = baton.Limits(concurrency=concurrency)

    def workflow_of(n: int) -> Callable[[baton.RunContext, Any], Awaitable[int]]:
        async def workflow(ctx: baton.RunContext, _: Any) -> int:
            remaining = n

            async def worker() -> None:
                nonlocal remaining
                while remaining > 0:
                    remaining -= 1
                    await ctx.call(call_agent, prompt)

            await asyncio.gather(*(worker() for _ in range(min(concurrency, n))))
            return n

        return workflow

    samples = []
    try:
        for i in range(rounds + 1):
            engine = UnjournaledEngine(store=MemoryStore(), model=model, governor=generous_governor(),
                            sinks=sinks())
            n = concurrency if i == 0 else calls
            gc.collect()
            cpu0 = time.process_time()
            result = await engine.run(workflow_of(n), None, limits=limits)
            cpu = time.process_time() - cpu0
            if result.status != "succeeded":
                raise RuntimeError(f"benchmark run {result.status}: {result.error}")
            if i:
                samples.append(cpu * 1000.0 / n)
    finally:
        await model.aclose()
    return statistics.median(samples)


IMPORT_FLOOR = "asyncio, concurrent.futures, dataclasses, hashlib, inspect, json, re, orjson"
"""What baton needs anyway (the standard library parts it uses, plus orjson): the import floor."""


def _import_ms(modules: str, repeats: int) -> float:
    code = f"import time; t = time.perf_counter(); import {modules}; print((time.perf_counter() - t) * 1000)"
    return statistics.median(float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                                  check=True).stdout) for _ in range(repeats))


def import_time_ms(repeats: int) -> tuple[float, float, list[tuple[float, str]]]:
    """Median wall ms of ``import baton`` and of the floor in fresh interpreters, and the top self times."""
    baton_ms = _import_ms("baton", repeats)
    floor_ms = _import_ms(IMPORT_FLOOR, repeats)
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import baton"], capture_output=True,
                          text=True, check=True)
    top: list[tuple[float, str]] = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _cum, name = line.removeprefix("import time:").split("|", 2)
        top.append((float(self_us) / 1000.0, name.strip()))
    top.sort(reverse=True)
    return baton_ms, floor_ms, top[:8]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=5000, help="measured calls per variant")
    parser.add_argument("--concurrency", type=int, default=1000)
    parser.add_argument("--import-repeats", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="also cProfile the agent call and print top costs")
    args = parser.parse_args()

    with FakeServerProcess() as url:
        rows = asyncio.run(transport_rows(url, args))
        rows.append(asyncio.run(agent_calls(url, args, None)))
        print("  measured baton agent call", file=sys.stderr, flush=True)
        profile = cProfile.Profile() if args.profile else None
        if profile is not None:
            asyncio.run(agent_calls(url, args, profile))
    print(f"\nagent call CPU cost, {args.calls} calls at concurrency {args.concurrency}, "
          f"zero-latency fake server in another process, unjournaled, no sinks\n")
    print_table(rows, baseline="bare aiohttp + orjson")
    bare, adapter, full = rows
    extra = full.cpu_ms_per_call - bare.cpu_ms_per_call
    print(f"\nbaton on top of bare aiohttp: +{extra:.3f} ms/call "
          f"(adapter +{adapter.cpu_ms_per_call - bare.cpu_ms_per_call:.3f}, "
          f"runtime +{full.cpu_ms_per_call - adapter.cpu_ms_per_call:.3f})")
    ms, floor, top = import_time_ms(args.import_repeats)
    print(f"\nimport baton: {ms:.1f} ms, median of {args.import_repeats} fresh interpreters; the stdlib + orjson "
          f"modules it needs alone: {floor:.1f} ms (ratio {ms / floor:.2f}); largest self times: "
          + ", ".join(f"{name} {t:.1f} ms" for t, name in top[:5]))
    if profile is not None:
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(25)
        print("\ncProfile of the agent call, by own time:\n" + out.getvalue())
    ratio = full.cpu_ms_per_call / bare.cpu_ms_per_call if bare.cpu_ms_per_call else float("nan")
    print(f"SUMMARY agent_call: {full.cpu_ms_per_call:.3f} ms/call CPU ({ratio:.2f}x bare aiohttp), "
          f"target <= {TARGET_MS} ms: {verdict(full.cpu_ms_per_call <= TARGET_MS and not full.errors)}; "
          f"import baton {ms:.0f} ms, target <= {TARGET_IMPORT_MS:.0f} ms: {verdict(ms <= TARGET_IMPORT_MS)}")


if __name__ == "__main__":
    main()
