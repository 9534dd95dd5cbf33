"""DAG scheduling quality of the Orchestrator: makespan vs the critical path and Graham's bound (issue 4).

A seeded random DAG of 200 subtasks (each depends on up to ``--max-deps`` random earlier
ones) gets a random latency per subtask. The fake API, in its own process, answers the
planner with exactly that DAG (structured output) and each worker request after its
subtask's latency (one rule per subtask id, matched on the worker prompt). The server's
request log gives each worker call's start and end.

Makespan = first worker request start -> last worker response end (planner and
synthesizer excluded: they are sequential and the same for any scheduler).

1. Unbounded concurrency: makespan vs the critical path (the longest latency chain),
   which no scheduler can beat. Target ratio <= 1.1.
2. Concurrency limit m (default 8): makespan vs Graham's list-scheduling bound
   W/m + (1 - 1/m) * CP (W = total work, CP = critical path), which every greedy
   schedule must meet; also shown against the lower bound max(W/m, CP). Target <= 1.0.

    .venv/bin/python benchmarks/bench_dag.py                    # 200 subtasks, latencies 20..200 ms
    .venv/bin/python benchmarks/bench_dag.py --subtasks 200 --max-latency 1.0 --limit 4 --seed 7
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson
from _harness import FakeServerProcess, UnjournaledEngine

import baton
from baton.models.anthropic import AnthropicModel
from baton.patterns.orchestrator import Orchestrator
from baton.runtime.scheduler import critical_paths
from baton.stores.memory import MemoryStore

MODEL = "claude-haiku-4-5"
PLANNER_SYSTEM = "PLANNER-BENCH: you plan."
WORKER_SYSTEM = "WORKER-BENCH: you do one subtask."
SYNTH_SYSTEM = "SYNTH-BENCH: you combine results."
TARGET_CP_RATIO = 1.1
TARGET_GRAHAM_RATIO = 1.0


def random_dag(n: int, max_deps: int, min_latency: float, max_latency: float,
               seed: int) -> tuple[dict[str, list[str]], dict[str, float]]:
    rng = random.Random(seed)
    deps: dict[str, list[str]] = {}
    latency: dict[str, float] = {}
    for i in range(n):
        sid = f"s{i}"
        k = rng.randint(0, min(i, max_deps))
        deps[sid] = [f"s{j}" for j in sorted(rng.sample(range(i), k))]
        latency[sid] = round(rng.uniform(min_latency, max_latency), 3)
    return deps, latency


def critical_chain(deps: dict[str, list[str]], latency: dict[str, float]) -> list[str]:
    """The subtasks on the longest latency chain, first to last."""
    finish: dict[str, float] = {}
    via: dict[str, str | None] = {}
    for sid, ds in deps.items():  # ids are in topological order (deps point to earlier ids)
        before = max(ds, key=lambda d: finish[d], default=None)
        finish[sid] = latency[sid] + (finish[before] if before else 0.0)
        via[sid] = before
    node: str | None = max(finish, key=lambda k: finish[k])
    chain = []
    while node is not None:
        chain.append(node)
        node = via[node]
    return chain[::-1]


def script(deps: dict[str, list[str]], latency: dict[str, float]) -> dict[str, Any]:
    plan = {"subtasks": [{"id": sid, "worker": "worker", "instruction": f"Work on part {sid}.", "depends_on": ds}
                         for sid, ds in deps.items()],
            "synthesis_instructions": "Combine the parts."}
    rules: list[dict[str, Any]] = [{"match": "^PLANNER-BENCH", "json": plan},
                                   {"match": "^SYNTH-BENCH", "text": "All parts combined."}]
    rules += [{"match": rf"^WORKER-BENCH.*Your subtask \({sid}\):", "text": f"result of {sid}",
               "latency_s": latency[sid]} for sid in deps]
    return {"rules": rules}


def worker_window(log: Path) -> tuple[float, float, int]:
    """(first worker start, last worker end, worker requests) from the server's request log."""
    starts, ends = [], []
    for line in log.read_bytes().splitlines():
        entry = orjson.loads(line)
        body = entry.get("body") or {}
        if str(body.get("system", "")).startswith("WORKER-BENCH") and entry["status"] == 200:
            starts.append(entry["time_start"])
            ends.append(entry["time_end"])
    return min(starts), max(ends), len(starts)


async def run_orchestrator(url: str, n: int, limit: int | None) -> None:
    model = AnthropicModel(api_key="sk-bench", base_url=url)
    planner = baton.Agent("planner", system=PLANNER_SYSTEM, model=MODEL, max_tokens=8192)
    worker = baton.Agent("worker", system=WORKER_SYSTEM, model=MODEL, max_tokens=256)
    synth = baton.Agent("synthesizer", system=SYNTH_SYSTEM, model=MODEL, max_tokens=256)
    orchestrator = Orchestrator(planner, {"worker": worker}, synth, max_subtasks=n, concurrency=limit)
    engine = UnjournaledEngine(store=MemoryStore(), model=model)
    try:
        result = await engine.run(orchestrator, "Build the thing.",
                                  limits=baton.Limits(concurrency=max(n, 1), max_model_calls=n + 10))
    finally:
        await model.aclose()
    if result.status != "succeeded":
        raise RuntimeError(f"orchestrator run {result.status}: {result.error}")


def measure(args: argparse.Namespace, tmp: Path, deps: dict[str, list[str]], latency: dict[str, float],
            limit: int | None) -> float:
    """Makespan in seconds of one orchestrator run with a fresh server."""
    script_path = tmp / "script.json"
    script_path.write_bytes(orjson.dumps(script(deps, latency)))
    log = tmp / f"log-{limit}.jsonl"
    with FakeServerProcess("--script", str(script_path), "--log", str(log)) as url:
        asyncio.run(run_orchestrator(url, len(deps), limit))
    start, end, count = worker_window(log)
    if count != len(deps):
        raise RuntimeError(f"expected {len(deps)} worker calls, the server saw {count}")
    return end - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subtasks", type=int, default=200)
    parser.add_argument("--max-deps", type=int, default=3, help="each subtask depends on 0..N earlier ones")
    parser.add_argument("--min-latency", type=float, default=0.02, help="seconds")
    parser.add_argument("--max-latency", type=float, default=0.2, help="seconds")
    parser.add_argument("--limit", type=int, default=8, help="the concurrency limit m of the second run")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    deps, latency = random_dag(args.subtasks, args.max_deps, args.min_latency, args.max_latency, args.seed)
    cp = max(critical_paths(deps, latency).values())
    chain = critical_chain(deps, latency)
    work = sum(latency.values())
    m = args.limit
    graham = work / m + (1 - 1 / m) * cp
    lower = max(work / m, cp)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        unbounded = measure(args, tmp, deps, latency, None)
        print("  measured unbounded", file=sys.stderr, flush=True)
        bounded = measure(args, tmp, deps, latency, m)
        print(f"  measured limit {m}", file=sys.stderr, flush=True)

    edges = sum(len(d) for d in deps.values())
    print(f"\nOrchestrator over a random DAG: {args.subtasks} subtasks, {edges} edges (seed {args.seed}), "
          f"worker latencies {args.min_latency * 1000:.0f}..{args.max_latency * 1000:.0f} ms "
          f"on the fake server (another process)")
    print(f"total work W = {work:.3f} s, critical path CP = {cp:.3f} s ({len(chain)} subtasks: "
          f"{' > '.join(chain[:6])}{' > ...' if len(chain) > 6 else ''})\n")
    print(f"unbounded concurrency: makespan {unbounded:.3f} s vs CP {cp:.3f} s -> ratio {unbounded / cp:.3f} "
          f"(target <= {TARGET_CP_RATIO}: {'OK' if unbounded / cp <= TARGET_CP_RATIO else 'MISSED'})")
    print(f"limit m = {m}:          makespan {bounded:.3f} s vs Graham bound W/m + (1 - 1/m)*CP = {graham:.3f} s "
          f"-> ratio {bounded / graham:.3f} (target <= {TARGET_GRAHAM_RATIO}: "
          f"{'OK' if bounded / graham <= TARGET_GRAHAM_RATIO else 'MISSED'})")
    print(f"                       vs lower bound max(W/m, CP) = {lower:.3f} s -> ratio {bounded / lower:.3f} "
          "(1.0 would be optimal)")
    print(f"\nSUMMARY dag: unbounded makespan/CP {unbounded / cp:.3f} (target <= {TARGET_CP_RATIO}: "
          f"{'OK' if unbounded / cp <= TARGET_CP_RATIO else 'MISSED'}); m={m} makespan/Graham "
          f"{bounded / graham:.3f} (target <= {TARGET_GRAHAM_RATIO}: "
          f"{'OK' if bounded / graham <= TARGET_GRAHAM_RATIO else 'MISSED'})")


if __name__ == "__main__":
    main()
