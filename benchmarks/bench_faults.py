"""Runs complete, and are billed right, when 20 % of requests fail.

The fake API (its own process) fails requests at random (seeded): each request draws
one fault kind by its prompt (500, 529, 429 with ``retry-after``, connection reset) and
that fault fires with probability ``--p`` (default 0.2) per attempt. N workflow runs
(default 50, concurrently, journaled to SQLite) each fan out 3 researcher calls and
then one writer call over their results.

It prints how many runs succeeded, what the server saw (attempts, failures by kind),
and the money check: the sum of the runs' ``cost_usd`` against the cost of the
successful responses' usage in the server's request log (a retried call must be
billed once: only its final, successful response). Tokens are compared the same way.

    .venv/bin/python benchmarks/bench_faults.py                  # 50 runs x 4 calls, 20 % faults
    .venv/bin/python benchmarks/bench_faults.py --runs 200 --p 0.3
    .venv/bin/python benchmarks/bench_faults.py --shared-breakers   # one BreakerRegistry for every run
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from _harness import FakeServerProcess

import baton
from baton.messages import Usage
from baton.models.anthropic import AnthropicModel, usage_from_wire
from baton.models.pricing import cost_of
from baton.runtime.breaker import BreakerRegistry
from baton.runtime.engine import Engine, RunResult
from baton.runtime.retry import RetryPolicy
from baton.stores.sqlite import SQLiteStore

MODEL = "claude-sonnet-4-6"
KINDS = ("500", "529", "429", "reset")

researcher = baton.Agent("researcher", system="You research one angle.", model=MODEL, max_tokens=128)
writer = baton.Agent("writer", system="You write the summary.", model=MODEL, max_tokens=256)


def script(p: float, retry_after_s: float) -> dict[str, Any]:
    faults = {"500": {"kind": "server_error", "p": p},
              "529": {"kind": "overloaded", "p": p},
              "429": {"kind": "rate_limit", "retry_after_s": retry_after_s, "p": p},
              "reset": {"kind": "connection_reset", "p": p}}
    return {"rules": [{"match": f"fault={kind}\\b", "text": f"answer ({kind})", "fault": fault}
                      for kind, fault in faults.items()]}


async def workflow(ctx: baton.RunContext, topic: str) -> str:
    # Each call names a fault kind in its prompt; the server fails it with probability p.
    notes = await ctx.gather(*(ctx.call(researcher, f"{topic}, angle {k} fault={KINDS[k]}") for k in range(3)))
    joined = "\n".join(n.text for n in notes)
    return (await ctx.call(writer, f"{topic} fault={KINDS[3]}\n{joined}")).text


async def run_all(url: str, db: Path, args: argparse.Namespace) -> list[RunResult]:
    model = AnthropicModel(api_key="sk-bench", base_url=url)
    store = SQLiteStore(f"sqlite:///{db}")
    await store.open()
    retry = RetryPolicy(max_attempts=args.attempts, initial_delay_s=0.05, max_delay_s=1.0)
    # Every run goes through this one adapter, so by default they share its breakers (the engine's
    # default); --shared-breakers passes one registry explicitly, as the first version of this
    # benchmark did when runs had breakers of their own.
    breakers = BreakerRegistry() if args.shared_breakers else None
    engine = Engine(store=store, model=model, retry=retry, breakers=breakers)
    try:
        return list(await asyncio.gather(*(engine.run(workflow, f"topic {i}") for i in range(args.runs))))
    finally:
        await model.aclose()
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--p", type=float, default=0.2, help="chance that an attempt fails")
    parser.add_argument("--retry-after", type=float, default=0.2, help="retry-after seconds of the 429s")
    parser.add_argument("--attempts", type=int, default=8, help="RetryPolicy.max_attempts")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--shared-breakers", action="store_true", help="one BreakerRegistry for all runs")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "script.json").write_bytes(orjson.dumps(script(args.p, args.retry_after)))
        log = tmp / "requests.jsonl"
        t0 = time.monotonic()
        with FakeServerProcess("--script", str(tmp / "script.json"), "--log", str(log),
                               "--seed", str(args.seed)) as url:
            results = asyncio.run(run_all(url, tmp / "runs.db", args))
        wall = time.monotonic() - t0
        entries = [orjson.loads(line) for line in log.read_bytes().splitlines()]

    ok = [r for r in results if r.status == "succeeded"]
    failures: collections.Counter[str] = collections.Counter()
    served = Usage()
    served_usd = 0.0
    for e in entries:
        if e["status"] == 200:
            usage = usage_from_wire(e["usage"])
            served.add(usage)
            served_usd += cost_of(e["body"]["model"], usage) or 0.0
        else:
            kind = e["fault"]
            failures[f"HTTP {e['status']}" if kind == "status" else kind or f"HTTP {e['status']}"] += 1
    billed = Usage()
    for r in results:
        billed.add(r.usage)
    billed_usd = sum(r.cost_usd for r in results)
    calls = sum(r.model_calls for r in results)
    failed = sum(failures.values())

    print(f"\nfaults: {args.runs} runs x 4 agent calls, each attempt fails with p={args.p} "
          f"(500 / 529 / 429 retry-after {args.retry_after:g} s / connection reset), "
          f"RetryPolicy(max_attempts={args.attempts}), seed {args.seed}, {wall:.1f} s\n")
    print(f"runs succeeded:      {len(ok)} / {len(results)}")
    print(f"server attempts:     {len(entries)} ({failed} failed = {failed / max(1, len(entries)) * 100:.1f}%: "
          + ", ".join(f"{k} {v}" for k, v in sorted(failures.items())) + ")")
    print(f"model calls billed:  {calls} (successful responses in the log: {len(entries) - failed})")
    print(f"cost, baton report:  ${billed_usd:.6f}  ({billed.input_tokens} in / {billed.output_tokens} out tokens)")
    print(f"cost, server log:    ${served_usd:.6f}  ({served.input_tokens} in / {served.output_tokens} out tokens)")
    for r in results:
        if r.status != "succeeded":
            print(f"  run {r.run_id} {r.status}: {r.error}", file=sys.stderr)
    same = abs(billed_usd - served_usd) < 1e-9 and billed == served and calls == len(entries) - failed
    complete = len(ok) == len(results)
    print(f"\nSUMMARY faults: {len(ok)}/{len(results)} runs complete ({'OK' if complete else 'MISSED'}); "
          f"billed ${billed_usd:.6f} vs server log ${served_usd:.6f}: {'equal, OK' if same else 'DIFFERENT, MISSED'}")


if __name__ == "__main__":
    main()
