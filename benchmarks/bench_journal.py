"""What durability costs: journaled vs unjournaled agent calls, and resume-start latency (issue 3).

1. CPU per agent call in a 1,000-way fan-out (``ctx.gather`` of 1,000 ``ctx.call``s in one
   run), measured over whole runs (store writes, batch commits and the SQLite worker
   thread included: ``time.process_time`` counts every thread of this process):

     a. ``UnjournaledEngine`` (no journal; the run record still goes to the store)
     b. ``Engine`` on a SQLite store file (every model and agent step journaled)

2. Resume start of a run with 1,000 completed agent calls (2,000 journal records: one
   model step and one agent step each) in a SQLite file. A fresh ``Engine`` (opening
   the store by URL, as ``baton resume`` does) resumes it; the workflow records when it
   is entered and when its first journaled call returns (replayed from the journal):

     entered:     Engine.resume called -> workflow function entered (open store, load
                  the run and all its steps, claim ownership, mark running)
     first step:  -> the first ``ctx.call`` returned its journaled result
     all replayed: -> every one of the 1,000 calls returned from the journal

The fake API runs in another process with zero latency.

    .venv/bin/python benchmarks/bench_journal.py                      # 3 runs x 1,000 calls each
    .venv/bin/python benchmarks/bench_journal.py --runs 10 --fanout 2000 --resume-calls 5000
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import FakeServerProcess, UnjournaledEngine
from bench_transport import MODEL, SYSTEM

import baton
from baton.models.anthropic import AnthropicModel
from baton.runtime.engine import Engine
from baton.stores.memory import MemoryStore
from baton.stores.sqlite import SQLiteStore

TARGET_RATIO = 1.5
TARGET_RESUME_MS = 200.0

agent = baton.Agent("greeter", system=SYSTEM, model=MODEL, max_tokens=64)


def verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


def fan_out(n: int) -> Any:
    async def workflow(ctx: baton.RunContext, _: Any) -> int:
        results = await ctx.gather(*(ctx.call(agent, f"item {i}: say hello") for i in range(n)))
        return len(results)

    return workflow


async def fanout_cpu(url: str, args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    """CPU ms per agent call for each variant; variants alternate run by run so drift hits both."""
    model = AnthropicModel(api_key="sk-bench", base_url=url, max_connections=args.fanout)
    sqlite = SQLiteStore(f"sqlite:///{tmp / 'fanout.db'}")
    await sqlite.open()
    engines = {"unjournaled": UnjournaledEngine(store=MemoryStore(), model=model),
               "journaled (SQLite)": Engine(store=sqlite, model=model)}
    limits = baton.Limits(concurrency=args.fanout)
    workflow = fan_out(args.fanout)
    samples: dict[str, list[float]] = {name: [] for name in engines}
    try:
        for engine in engines.values():  # warm-up: connection pool, imports, SQLite schema
            await engine.run(workflow, None, limits=limits)
        for _ in range(args.runs):
            for name, engine in engines.items():
                gc.collect()
                cpu0 = time.process_time()
                result = await engine.run(workflow, None, limits=limits)
                cpu = time.process_time() - cpu0
                if result.status != "succeeded" or result.output != args.fanout:
                    raise RuntimeError(f"{name}: run {result.status}: {result.error}")
                samples[name].append(cpu * 1000.0 / args.fanout)
    finally:
        await model.aclose()
        await sqlite.close()
    return {name: statistics.median(values) for name, values in samples.items()}


async def prepare_run(url: str, db: Path, calls: int) -> str:
    """A failed run whose journal holds ``calls`` completed agent calls."""
    model = AnthropicModel(api_key="sk-bench", base_url=url, max_connections=min(calls, 1000))
    box: dict[str, bool] = {"fail": True}

    async def workflow(ctx: baton.RunContext, _: Any) -> int:
        await ctx.gather(*(ctx.call(agent, f"item {i}: say hello") for i in range(calls)))
        if box["fail"]:
            raise RuntimeError("stopped on purpose after the fan-out")
        return calls

    try:
        result = await Engine(store=f"sqlite:///{db}", model=model).run(
            workflow, None, limits=baton.Limits(concurrency=min(calls, 1000)))
    finally:
        await model.aclose()
    if result.status != "failed":
        raise RuntimeError(f"preparing the resume run: expected failed, got {result.status}")
    return result.run_id


async def resume_latency(url: str, db: Path, run_id: str, calls: int) -> dict[str, float]:
    """Milliseconds from ``Engine.resume`` to: workflow entered, first step back, all replayed."""
    model = AnthropicModel(api_key="sk-bench", base_url=url)
    marks: dict[str, float] = {}

    async def workflow(ctx: baton.RunContext, _: Any) -> int:
        marks["entered"] = time.perf_counter()
        first = ctx.call(agent, "item 0: say hello")
        rest = [ctx.call(agent, f"item {i}: say hello") for i in range(1, calls)]
        await first
        marks["first step"] = time.perf_counter()
        await asyncio.gather(*rest)
        marks["all replayed"] = time.perf_counter()
        return calls

    engine = Engine(store=f"sqlite:///{db}", model=model)  # opened by URL, as `baton resume` does
    try:
        t0 = time.perf_counter()
        result = await engine.resume(run_id, workflow)
        marks["run settled"] = time.perf_counter()
    finally:
        await model.aclose()
    if result.status != "succeeded" or result.model_calls != calls:
        raise RuntimeError(f"resume: {result.status} {result.error}")
    return {name: (t - t0) * 1000.0 for name, t in marks.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fanout", type=int, default=1000, help="agent calls gathered in one run")
    parser.add_argument("--runs", type=int, default=3, help="measured runs per variant (median reported)")
    parser.add_argument("--resume-calls", type=int, default=1000, help="completed agent calls in the resumed run")
    parser.add_argument("--resume-repeats", type=int, default=3, help="resumes timed (median reported)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmpdir, FakeServerProcess() as url:
        tmp = Path(tmpdir)
        cpu = asyncio.run(fanout_cpu(url, args, tmp))
        print("  measured fan-out", file=sys.stderr, flush=True)
        timings: list[dict[str, float]] = []
        for i in range(args.resume_repeats):
            db = tmp / f"resume{i}.db"
            run_id = asyncio.run(prepare_run(url, db, args.resume_calls))
            timings.append(asyncio.run(resume_latency(url, db, run_id, args.resume_calls)))
        print("  measured resume", file=sys.stderr, flush=True)

    base_name, durable_name = list(cpu)
    ratio = cpu[durable_name] / cpu[base_name]
    print(f"\njournal cost: {args.fanout}-way ctx.gather fan-out, median of {args.runs} runs per variant, "
          "zero-latency fake server in another process\n")
    width = max(len(n) for n in cpu)
    print(f"{'variant':<{width}}  {'CPU ms/call':>11}  {'ratio':>6}")
    for name, ms in cpu.items():
        print(f"{name:<{width}}  {ms:>11.3f}  {ms / cpu[base_name]:>6.2f}")
    median = {k: statistics.median(t[k] for t in timings) for k in timings[0]}
    print(f"\nresume of a run with {args.resume_calls} completed agent calls "
          f"({2 * args.resume_calls} journal records, SQLite), median of {args.resume_repeats}:")
    for name, ms in median.items():
        print(f"  Engine.resume -> {name:<13} {ms:8.1f} ms")
    first = median["first step"]
    print(f"\nSUMMARY journal: journaled/unjournaled CPU {ratio:.2f}x, target <= {TARGET_RATIO}x: "
          f"{verdict(ratio <= TARGET_RATIO)}; resume to first journaled step {first:.0f} ms "
          f"({args.resume_calls} calls), target <= {TARGET_RESUME_MS:.0f} ms: {verdict(first <= TARGET_RESUME_MS)}")


if __name__ == "__main__":
    main()
