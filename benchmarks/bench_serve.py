"""``baton serve`` under load (issue 16).

A real ``baton serve`` process (its own store, ``--max-runs`` high enough not to throttle)
runs a one-call workflow against the fake Messages API in another process, the model
answering after ``--latency`` seconds (200 ms by default). ``--clients`` concurrent
HTTP clients submit ``--runs`` runs between them (``POST /v1/runs``) while
``--subscribers`` SSE clients follow the first runs' event streams to their end.

Reported:
  intake:   requests per second over the submission phase; p50/p99 latency of a POST
  drain:    seconds until every run succeeded (from the first POST), runs per second
  SSE:      streams that ended with ``run.end``, events received
  CPU:      the service process's CPU (user+system, /proc) per run, against ``baton run``
            of the same workflow in a fresh process (interpreter start included: what a
            CLI run really costs) and against the CLI minus a bare ``python -c 'import
            baton.cli.main'`` start
  memory:   the service's peak RSS (VmHWM) and RSS at the end

    .venv/bin/python benchmarks/bench_serve.py                      # 1,000 runs, 100 clients, 100 SSE
    .venv/bin/python benchmarks/bench_serve.py --runs 200 --clients 20 --subscribers 20
    .venv/bin/python benchmarks/bench_serve.py --store postgresql://postgres@127.0.0.1/bench
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from _harness import FakeServerProcess

WORKFLOW = """\
version: 1
name: bench-one
defaults: {model: claude-haiku-4-5, max_tokens: 64, temperature: 0}
agents:
  w: {system: "Bench serve worker. Answer briefly."}
workflow: {pattern: agent, agent: w}
"""
KEY = "bench-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _mem_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _env(model_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "BATON_"))}
    env.update({"ANTHROPIC_BASE_URL": model_url, "ANTHROPIC_API_KEY": "bench", "BATON_API_KEYS": f"{KEY}=bench",
                "PYTHONUNBUFFERED": "1"})
    return env


async def _wait_ready(session: aiohttp.ClientSession, url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"baton serve exited {proc.returncode}")
        try:
            async with session.get(f"{url}/v1/health") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError("baton serve did not start")


async def _submit_all(session: aiohttp.ClientSession, url: str, runs: int, clients: int,
                      ids: list[str], latencies: list[float], enough: asyncio.Event, wanted: int) -> int:
    headers = {"Authorization": f"Bearer {KEY}"}
    counter = iter(range(runs))
    errors = 0

    async def client() -> None:
        nonlocal errors
        for n in counter:
            t0 = time.perf_counter()
            async with session.post(f"{url}/v1/runs", json={"workflow": "bench-one", "input": f"item {n}"},
                                    headers=headers) as r:
                body = await r.json()
            latencies.append(time.perf_counter() - t0)
            if r.status == 202:
                ids.append(body["run_id"])
                if len(ids) >= wanted:
                    enough.set()
            else:
                errors += 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return errors


async def _follow(session: aiohttp.ClientSession, url: str, run_id: str) -> tuple[bool, int]:
    """Read one run's SSE stream to its end: (ended with run.end, events received)."""
    n, last = 0, ""
    async with session.get(f"{url}/v1/runs/{run_id}/events", headers={"Authorization": f"Bearer {KEY}"},
                           timeout=aiohttp.ClientTimeout(total=600)) as r:
        async for raw in r.content:
            line = raw.decode().strip()
            if line.startswith("event: "):
                n, last = n + 1, line[7:]
    return last == "run.end", n


async def _succeeded(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(f"{url}/metrics") as r:
        text = await r.text()
    for line in text.splitlines():
        if line.startswith('baton_runs_total{status="succeeded"}'):
            return int(float(line.split()[-1]))
    return 0


async def _load(args: argparse.Namespace, url: str, pid: int) -> dict[str, Any]:
    conn = aiohttp.TCPConnector(limit=args.clients + args.subscribers + 10)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=600)) as session:
        await _wait_ready(session, url, proc=args.proc)
        ids: list[str] = []
        latencies: list[float] = []
        cpu0, t0 = _cpu_s(pid), time.perf_counter()
        enough = asyncio.Event()
        submit = asyncio.create_task(_submit_all(session, url, args.runs, args.clients, ids, latencies,
                                                 enough, min(args.subscribers, args.runs)))
        await asyncio.wait([submit, asyncio.create_task(enough.wait())], return_when=asyncio.FIRST_COMPLETED)
        follows = [asyncio.create_task(_follow(session, url, rid)) for rid in ids[:args.subscribers]]
        errors = await submit
        intake_s = time.perf_counter() - t0
        deadline = t0 + args.max_wait
        while time.perf_counter() < deadline:
            if await _succeeded(session, url) >= len(ids):
                break
            await asyncio.sleep(0.2)
        drain_s = time.perf_counter() - t0
        done = await _succeeded(session, url)
        cpu = _cpu_s(pid) - cpu0
        streams = await asyncio.gather(*follows)
    lat = sorted(latencies)
    return {"intake_rps": len(lat) / intake_s, "p50_ms": 1000 * statistics.median(lat),
            "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))], "errors": errors,
            "drain_s": drain_s, "succeeded": done, "accepted": len(ids), "cpu_per_run_ms": 1000 * cpu / max(1, done),
            "sse_ended": sum(1 for ok, _ in streams if ok), "sse_streams": len(streams),
            "sse_events": sum(n for _, n in streams),
            "peak_rss_mb": _mem_kb(pid, "VmHWM") / 1024, "rss_mb": _mem_kb(pid, "VmRSS") / 1024}


def _cli_cpu_ms(args: argparse.Namespace, model_url: str, wf: Path, tmp: Path) -> tuple[float, float]:
    """CPU ms of ``baton run`` (whole process) and of a bare ``import baton.cli.main`` process."""
    env = _env(model_url)

    def children_cpu(cmd: list[str]) -> float:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(cmd, env=env, cwd=tmp, check=True, capture_output=True, timeout=120)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000

    runs = [children_cpu([sys.executable, "-m", "baton", "run", str(wf), "--input", f"cli {n}", "--quiet",
                          "--store", f"sqlite:///{tmp}/cli.db"]) for n in range(args.cli_runs)]
    bare = [children_cpu([sys.executable, "-c", "import baton.cli.main"]) for _ in range(args.cli_runs)]
    return statistics.median(runs), statistics.median(bare)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--subscribers", type=int, default=100)
    p.add_argument("--latency", type=float, default=0.2, help="fake model latency, seconds")
    p.add_argument("--max-runs", type=int, default=500, help="the service's --max-runs")
    p.add_argument("--store", help="store URL (default: a temporary SQLite file)")
    p.add_argument("--cli-runs", type=int, default=5)
    p.add_argument("--max-wait", type=float, default=600.0)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d, FakeServerProcess("--latency", str(args.latency)) as model_url:
        tmp = Path(d)
        (tmp / "wf").mkdir()
        wf = tmp / "wf" / "bench.yaml"
        wf.write_text(WORKFLOW)
        port = _free_port()
        store = args.store or f"sqlite:///{tmp}/serve.db"
        args.proc = subprocess.Popen(
            [sys.executable, "-m", "baton", "serve", "--port", str(port), "--workflows", str(tmp / "wf"),
             "--store", store, "--max-runs", str(args.max_runs), "--no-access-log"],
            env=_env(model_url), cwd=tmp, stdout=subprocess.DEVNULL, stderr=open(tmp / "serve.log", "wb"))
        try:
            res = asyncio.run(_load(args, f"http://127.0.0.1:{port}", args.proc.pid))
        finally:
            args.proc.terminate()
            args.proc.wait(30)
        cli_ms, bare_ms = _cli_cpu_ms(args, model_url, wf, tmp)
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in res.items()}))
    print(f"runs {args.runs} by {args.clients} clients, {args.subscribers} SSE subscribers, model latency "
          f"{args.latency * 1000:.0f} ms, store {'temporary SQLite' if not args.store else 'given'}")
    print(f"intake: {res['intake_rps']:.0f} req/s, p50 {res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms, "
          f"{res['errors']} errors")
    print(f"drain: all {res['succeeded']}/{res['accepted']} succeeded {res['drain_s']:.1f} s after the first POST "
          f"({res['succeeded'] / res['drain_s']:.0f} runs/s)")
    print(f"SSE: {res['sse_ended']}/{res['sse_streams']} streams ended with run.end, {res['sse_events']} events")
    print(f"CPU per run: service {res['cpu_per_run_ms']:.1f} ms; baton run {cli_ms:.0f} ms per process "
          f"({cli_ms - bare_ms:.0f} ms beyond a bare 'import baton.cli.main' process of {bare_ms:.0f} ms)")
    print(f"memory: service peak RSS {res['peak_rss_mb']:.0f} MB, at the end {res['rss_mb']:.0f} MB")
    ok = res["succeeded"] == args.runs and res["errors"] == 0 and res["sse_ended"] == res["sse_streams"]
    print(f"SUMMARY serve: {res['succeeded']}/{args.runs} runs, intake {res['intake_rps']:.0f} req/s "
          f"p99 {res['p99_ms']:.0f} ms, CPU/run {res['cpu_per_run_ms']:.1f} ms vs CLI {cli_ms:.0f} ms "
          f"({'OK' if ok else 'MISSED'}: every run succeeded and every SSE stream ended)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
