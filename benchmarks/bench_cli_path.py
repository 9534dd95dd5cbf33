"""CPU per call of ``baton run`` (the CLI) against the library and the bare aiohttp floor (issue 20).

The job: a journaled fan-out (``each: {agent: worker, over: lines}``) over the lines of a
file, SQLite store, every call to the fake Messages API (its own process, zero latency),
``--concurrency`` calls in flight. Three variants, each a fresh process, measured by the
kernel's accounting of that process (user + system CPU, every thread, via ``wait4``):

  a. floor: the same number of bare aiohttp POSTs + orjson decodes, same concurrency;
  b. library: ``baton.run`` of the same workflow file, journaled to SQLite, no sinks;
  c. CLI: ``python -m baton run WORKFLOW --input-file LINES --store sqlite:///... --json``,
     with its default sinks (progress on stderr, not a terminal here, and the run tally).

CPU per call is marginal: (CPU at ``--calls`` - CPU at ``--small``) / the difference in
calls, so interpreter start, imports and the first connections cancel out. Median of
``--rounds`` rounds; the variants alternate within a round.

    python benchmarks/bench_cli_path.py                          # 1,000 calls, 3 rounds
    python benchmarks/bench_cli_path.py --calls 3000 --rounds 5
    python benchmarks/bench_cli_path.py --profile                # also cProfile the CLI once
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _harness import FakeServerProcess

TARGET_MS = 0.4
TARGET_RATIO = 1.6
WORKFLOW = """\
version: 1
name: bench-cli-fan-out
defaults: {{model: claude-haiku-4-5, max_tokens: 64, temperature: 0}}
agents:
  worker: {{system: "Summarise this line in a few words."}}
workflow:
  pattern: fan_out
  each: {{agent: worker, over: lines}}
  max_items: 1000000
limits: {{concurrency: {concurrency}, max_model_calls: 10000000, budget_usd: 100000}}
"""
VARIANTS = ("floor", "library", "cli")


async def child_floor(url: str, calls: int, concurrency: int) -> None:
    import aiohttp
    import orjson

    headers = {"x-api-key": "sk-bench", "anthropic-version": "2023-06-01", "content-type": "application/json"}
    remaining = calls
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                body = {"model": "claude-haiku-4-5", "max_tokens": 64, "temperature": 0,
                        "system": "Summarise this line in a few words.",
                        "messages": [{"role": "user", "content": f"line number {remaining} of the input"}]}
                async with session.post(url + "/v1/messages", data=orjson.dumps(body), headers=headers) as resp:
                    data = orjson.loads(await resp.read())
                    if resp.status != 200:
                        raise RuntimeError(f"HTTP {resp.status}: {data}")

        await asyncio.gather(*(worker() for _ in range(min(calls, concurrency))))


async def child_library(workflow_path: str, text: str, store: str) -> None:
    import baton
    from baton.models.resolve import close_models
    from baton.spec import load_workflow_file

    workflow = load_workflow_file(workflow_path)
    result = await baton.run(workflow, text, store=store)
    await close_models()
    if result.status != "succeeded":
        raise RuntimeError(f"library run {result.status}: {result.error}")


def cpu_of(cmd: list[str], env: dict[str, str], stderr_path: str) -> float:
    """User + system CPU seconds of ``cmd`` (all its threads), from the kernel."""
    with open(stderr_path, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[2:4]} exited {proc.returncode}: {Path(stderr_path).read_text()[-1500:]}")
    return usage.ru_utime + usage.ru_stime


def command(variant: str, n: int, url: str, tmp: Path, concurrency: int) -> list[str]:
    lines, wf = str(tmp / f"lines{n}.txt"), str(tmp / "fan_out.yaml")
    store = f"sqlite:///{tmp}/{variant}-{n}-{os.urandom(4).hex()}.db"
    if variant == "cli":
        return [sys.executable, "-m", "baton", "run", wf, "--input-file", lines, "--store", store, "--json"]
    args = ["--calls", str(n)] if variant == "floor" else ["--workflow", wf, "--lines", lines, "--store", store]
    return [sys.executable, __file__, "--child", variant, "--url", url, "--concurrency", str(concurrency), *args]


def measure(url: str, tmp: Path, args: argparse.Namespace, env: dict[str, str]) -> dict[str, list[float]]:
    marginal: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        order = VARIANTS if r % 2 == 0 else tuple(reversed(VARIANTS))
        for variant in order:
            cpu = {n: cpu_of(command(variant, n, url, tmp, args.concurrency), env, str(tmp / "stderr.txt"))
                   for n in (args.small, args.calls)}
            marginal[variant].append((cpu[args.calls] - cpu[args.small]) * 1000 / (args.calls - args.small))
        print(f"  round {r + 1}: " + ", ".join(f"{v} {marginal[v][-1]:.3f}" for v in VARIANTS) + " ms/call",
              file=sys.stderr, flush=True)
    return marginal


def profile_cli(url: str, tmp: Path, args: argparse.Namespace, env: dict[str, str]) -> str:
    cmd = command("cli", args.calls, url, tmp, args.concurrency)
    cmd[1:3] = ["-m", "cProfile", "-s", "tottime", "-m", "baton"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    start = out.find("   ncalls")
    return "\n".join(out[start:].splitlines()[:30]) if start >= 0 else out[-3000:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--small", type=int, default=100, help="the smaller run the marginal cost is taken against")
    parser.add_argument("--concurrency", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="also print cProfile's top functions of one CLI run")
    parser.add_argument("--child", choices=("floor", "library"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--workflow", help=argparse.SUPPRESS)
    parser.add_argument("--lines", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "floor":
        asyncio.run(child_floor(args.url, args.calls, args.concurrency))
        return
    if args.child == "library":
        asyncio.run(child_library(args.workflow, Path(args.lines).read_text(), args.store))
        return
    if args.small >= args.calls:
        parser.error("--small must be below --calls")
    with tempfile.TemporaryDirectory() as tmp_name, FakeServerProcess() as url:
        tmp = Path(tmp_name)
        (tmp / "fan_out.yaml").write_text(WORKFLOW.format(concurrency=args.concurrency))
        for n in (args.small, args.calls):
            (tmp / f"lines{n}.txt").write_text("".join(f"line number {i} of the input\n" for i in range(n)))
        env = {**os.environ, "ANTHROPIC_API_KEY": "sk-bench", "ANTHROPIC_BASE_URL": url, "BATON_PROVIDER": ""}
        marginal = measure(url, tmp, args, env)
        profile = profile_cli(url, tmp, args, env) if args.profile else None
    med = {v: statistics.median(marginal[v]) for v in VARIANTS}
    print(f"\njournaled fan-out over lines, SQLite, zero-latency fake API in another process, concurrency "
          f"{args.concurrency}; CPU per call = (CPU at {args.calls} - CPU at {args.small}) / {args.calls - args.small}, "
          f"median of {args.rounds} rounds, whole process (all threads)\n")
    names = {"floor": "bare aiohttp + orjson (floor)", "library": "baton.run (library, journaled)",
             "cli": "baton run (CLI, journaled)"}
    print(f"{'variant':<32} {'CPU ms/call':>11} {'vs floor':>8}  rounds")
    for v in VARIANTS:
        print(f"{names[v]:<32} {med[v]:>11.3f} {med[v] / med['floor']:>8.2f}  "
              + ", ".join(f"{x:.3f}" for x in marginal[v]))
    if profile:
        print(f"\ncProfile of one CLI run ({args.calls} calls), by own time:\n{profile}")
    ratio = med["cli"] / med["floor"]
    ok = med["cli"] <= TARGET_MS or ratio <= TARGET_RATIO
    print(f"\nSUMMARY cli_path: CLI {med['cli']:.3f} ms/call ({ratio:.2f}x the aiohttp floor {med['floor']:.3f}; "
          f"library {med['library']:.3f}, CLI/library {med['cli'] / med['library']:.2f}x), "
          f"target <= {TARGET_MS} ms or <= {TARGET_RATIO}x floor: {'OK' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
