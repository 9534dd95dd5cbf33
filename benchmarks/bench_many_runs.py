"""Many runs in one process: N concurrent ``baton.run`` calls, each awaiting a slow model (issue 20).

What ``baton serve`` does under load: every run is a one-agent workflow whose model call
takes ``--latency`` seconds at the fake Messages API (its own process, so it can hold
10,000 open requests without costing this process CPU). All N runs start at once; they
share the process's connection pool (``--connections`` connections; the rest queue), rate
governor and breaker set. Measured in a fresh child process per variant:

  * RSS per run: (RSS once every run is waiting for its model - RSS before) / N, and the peak;
  * CPU per run start: CPU from launching the runs until all N wait on the model or the pool;
  * CPU per run: the whole run, start to result; runs succeeded / failed;

twice: with CPython's default garbage-collector thresholds, and with ``baton.runtime.gcpolicy.
tune_gc()``, which the ``baton`` command (so ``baton serve``) applies to its own process.

Baseline in the same invocation: the same N requests sent with bare aiohttp (one session,
same connection limit) from a child process of its own.

    python benchmarks/bench_many_runs.py                           # 1,000 runs at 2 s latency
    python benchmarks/bench_many_runs.py --runs 10000 --latency 8  # the issue's target
    python benchmarks/bench_many_runs.py --runs 10000 --latency 8 --store sqlite
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

from _harness import FakeServerProcess

MODEL = "claude-haiku-4-5"
TARGET_RSS_MB = 300.0
TARGET_CPU_MS = 1.0
_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def _until(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def _measure(n: int, launch: Callable[[int], Awaitable[Any]], waiting: Callable[[], int],
                   timeout_s: float) -> dict[str, Any]:
    """Start ``n`` tasks of ``launch(i)``, note CPU and RSS when all ``n`` wait, then when all end."""
    gc.collect()
    rss0, cpu0, t0 = rss_mb(), time.process_time(), time.perf_counter()
    tasks = [asyncio.ensure_future(launch(i)) for i in range(n)]
    all_waiting = await _until(lambda: waiting() >= n, timeout_s)
    cpu_start, rss_waiting, t_waiting = time.process_time() - cpu0, rss_mb(), time.perf_counter() - t0
    results = await asyncio.gather(*tasks, return_exceptions=True)
    cpu_total, wall = time.process_time() - cpu0, time.perf_counter() - t0
    return {"n": n, "all_waiting": all_waiting, "wait_reached_s": t_waiting, "rss_before_mb": rss0,
            "rss_waiting_mb": rss_waiting, "peak_rss_mb": peak_rss_mb(), "cpu_start_s": cpu_start,
            "cpu_total_s": cpu_total, "wall_s": wall, "results": results}


async def child_baton(args: argparse.Namespace) -> dict[str, Any]:
    import baton
    from baton.models.anthropic import AnthropicModel
    from baton.models.pool import pool_stats
    from baton.stores import open_store

    agent = baton.Agent("worker", system="Answer in one word.", model=MODEL, max_tokens=16)

    async def workflow(ctx: baton.RunContext, text: str) -> str:
        return (await ctx.call(agent, text)).text

    if args.gc == "tuned":
        from baton.runtime.gcpolicy import tune_gc

        tune_gc()  # what the baton command (and so baton serve) sets for its own process
    store = open_store(args.store_url)
    await store.open()
    options: dict[str, Any] = {"store": store}
    model = None
    if args.connections:  # an explicit adapter shared by every run; otherwise the provider's default one
        model = AnthropicModel(base_url=args.url, api_key="sk-bench", max_connections=args.connections)
        options["model"] = model
    warm = await asyncio.gather(*(baton.run(workflow, f"warm {i}", **options) for i in range(20)))
    assert all(r.ok for r in warm), warm[0].error

    def waiting() -> int:
        return sum(p.in_use + p.waiting for p in pool_stats())

    # A run that finished warming released the provider's adapter: lease it again for the count.
    m = await _measure(args.runs, lambda i: baton.run(workflow, f"question {i}", **options), waiting,
                       args.latency * (args.runs / max(1, args.connections or 1000) + 2) + 120)
    results = m.pop("results")
    ok = [r for r in results if not isinstance(r, BaseException) and r.ok]
    errors = [r if isinstance(r, BaseException) else RuntimeError(str(r.error)) for r in results
              if isinstance(r, BaseException) or not r.ok]
    m.update(ok=len(ok), failed=len(errors), first_error=f"{type(errors[0]).__name__}: {errors[0]}"[:300]
             if errors else None)
    if model is not None:
        await model.aclose()
    await store.close()
    return m


async def child_bare(args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp
    import orjson

    connections = args.connections or 1000
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections))
    headers = {"x-api-key": "sk-bench", "anthropic-version": "2023-06-01", "content-type": "application/json"}
    waiting = 0

    async def call(i: int) -> Any:
        nonlocal waiting
        body = {"model": MODEL, "max_tokens": 16, "system": "Answer in one word.",
                "messages": [{"role": "user", "content": f"question {i}"}]}
        waiting += 1
        async with session.post(args.url + "/v1/messages", data=orjson.dumps(body), headers=headers) as resp:
            data = orjson.loads(await resp.read())
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}")
            return data

    await asyncio.gather(*(call(-i) for i in range(1, 21)))
    waiting = 0
    m = await _measure(args.runs, call, lambda: waiting, 600)
    results = m.pop("results")
    errors = [r for r in results if isinstance(r, BaseException)]
    m.update(ok=len(results) - len(errors), failed=len(errors),
             first_error=f"{type(errors[0]).__name__}: {errors[0]}"[:300] if errors else None)
    await session.close()
    return m


def run_child(variant: str, url: str, args: argparse.Namespace, store_url: str, gc: str = "default") -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", variant, "--url", url, "--runs", str(args.runs),
           "--latency", str(args.latency), "--connections", str(args.connections), "--store-url", store_url,
           "--gc", gc]
    env = {**os.environ, "ANTHROPIC_API_KEY": "sk-bench", "ANTHROPIC_BASE_URL": url}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{variant} child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def per_run(m: dict[str, Any]) -> tuple[float, float, float, float]:
    """KB of RSS, CPU ms to start and CPU ms in all, per run; and the peak RSS in MB."""
    n = m["n"]
    return ((m["rss_waiting_mb"] - m["rss_before_mb"]) * 1024 / n, m["cpu_start_s"] * 1000 / n,
            m["cpu_total_s"] * 1000 / n, m["peak_rss_mb"])


def report(rows: list[tuple[str, dict[str, Any]]], args: argparse.Namespace) -> None:
    n = args.runs
    print(f"\n{n} concurrent runs, one agent call each, fake API latency {args.latency:g}s in its own process, "
          f"{args.connections or 1000} connections, store {args.store}\n")
    print(f"{'variant':<34} {'ok':>6} {'failed':>6} {'wall s':>7} {'KB RSS/run':>10} {'peak RSS MB':>11} "
          f"{'CPU ms/start':>12} {'CPU ms/run':>10} {'x bare':>6}")
    b_total = per_run(rows[0][1])[2]
    for name, m in rows:
        rss, start, total, peak = per_run(m)
        print(f"{name:<34} {m['ok']:>6} {m['failed']:>6} {m['wall_s']:>7.1f} {rss:>10.1f} {peak:>11.0f} "
              f"{start:>12.3f} {total:>10.3f} {total / b_total if b_total else float('nan'):>6.1f}"
              + (f"  ({m['first_error']})" if m["first_error"] else ""))
    default, tuned = rows[1][1], rows[2][1]
    rss, start, total, peak = per_run(tuned)
    ok = all(m["failed"] == 0 and m["ok"] == n for m in (default, tuned))
    print(f"\nall runs waited on the model at once: {tuned['all_waiting']} (after {tuned['wait_reached_s']:.1f}s)")
    print(f"SUMMARY many_runs: {min(default['ok'], tuned['ok'])}/{n} runs succeeded ({'OK' if ok else 'MISSED'}), "
          f"peak RSS {max(peak, per_run(default)[3]):.0f} MB (target <= {TARGET_RSS_MB:.0f} MB: "
          f"{'OK' if max(peak, per_run(default)[3]) <= TARGET_RSS_MB else 'MISSED'}), {rss:.1f} KB RSS per run, "
          f"CPU per run {total:.3f} ms (target <= {TARGET_CPU_MS} ms: {'OK' if total <= TARGET_CPU_MS else 'MISSED'}) "
          f"with tune_gc(), {per_run(default)[2]:.3f} ms with CPython's default GC; CPU per run start {start:.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=2.0, help="fake API latency per call, seconds")
    parser.add_argument("--connections", type=int, default=0,
                        help="pool size (0: the provider's default adapter, 1,000 connections)")
    parser.add_argument("--store", choices=("memory", "sqlite"), default="memory",
                        help="one store shared by all runs: in memory, or a SQLite file (journaled)")
    parser.add_argument("--child", choices=("baton", "bare"), help=argparse.SUPPRESS)
    parser.add_argument("--gc", choices=("default", "tuned"), default="default", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--store-url", default="memory://", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one socket per open connection
        fn = child_baton if args.child == "baton" else child_bare
        print(json.dumps(asyncio.run(fn(args))))
        return
    with tempfile.TemporaryDirectory() as tmp, FakeServerProcess("--latency", str(args.latency)) as url:
        store_url = f"sqlite:///{tmp}/runs.db" if args.store == "sqlite" else "memory://"
        rows = [("bare aiohttp request (baseline)", run_child("bare", url, args, store_url))]
        print("  measured bare aiohttp", file=sys.stderr, flush=True)
        rows.append(("baton.run, default GC", run_child("baton", url, args, store_url)))
        print("  measured baton.run", file=sys.stderr, flush=True)
        rows.append(("baton.run, tune_gc() (as `baton`)", run_child("baton", url, args, store_url, gc="tuned")))
    report(rows, args)


if __name__ == "__main__":
    main()
