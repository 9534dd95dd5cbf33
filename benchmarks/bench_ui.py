"""The web UI's run page for a big run: is a 500-step run's page up in under a second?

A synthetic finished orchestrator run of N steps (``baton.server.ui.sample``: a plan of
(N-4)/3 subtasks in 8 parallel chains, each an agent step, a model call and a tool call)
is written to a temporary SQLite store; ``baton ui`` serves it from its own process.
Measured, each as the median of ``--repeats``:

- server: one HTTP GET of ``/ui/runs/ID`` (load the run and its N steps, render the
  page), against the baseline of the same run's ``baton show --json`` object built in
  this process from the same store (load + ``show_json``);
- browser (when Chromium is installed): Chromium's navigation timing of the same page,
  from the request to the end of ``load`` (HTML parsed, CSS applied, the SVG timeline
  and plan laid out, the script run). Target: <= 1000 ms.

    .venv/bin/python benchmarks/bench_ui.py [--steps 500] [--repeats 5] [--no-browser]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_MS = 1000.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _prepare(store_url: str, steps: int, repeats: int) -> tuple[str, float]:
    """Write the run; return its id and the median ms of the ``baton show --json`` baseline."""
    from baton.cli.views import show_json
    from baton.server.ui.sample import synthetic_run
    from baton.stores import open_store

    run, records = synthetic_run("bench-ui", steps)
    store = open_store(store_url)
    await store.open()
    try:
        await store.create_run(run)
        await store.put_steps(records)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            got = await store.get_run(run.run_id)
            show_json(got, await store.load_steps(run.run_id), await store.transitions(run.run_id))
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        await store.close()
    return run.run_id, statistics.median(times)


def _server_ms(url: str, repeats: int) -> tuple[float, int]:
    times, size = [], 0
    for _ in range(repeats + 1):  # the first request warms the process up (imports, caches)
        t0 = time.perf_counter()
        with urllib.request.urlopen(url, timeout=60) as resp:
            size = len(resp.read())
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times[1:]), size


def _browser_ms(url: str, repeats: int) -> float | None:
    chromium, driver_path = "/usr/bin/chromium", "/usr/bin/chromedriver"
    if not (os.path.exists(chromium) and os.path.exists(driver_path)):
        return None
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return None
    opts = Options()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        times = []
        for _ in range(repeats + 1):
            driver.get(url)
            times.append(float(driver.execute_script(
                "const t = performance.getEntriesByType('navigation')[0]; return t.loadEventEnd - t.startTime;")))
        return statistics.median(times[1:])
    finally:
        driver.quit()


def _wait_up(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"baton ui exited {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("baton ui did not answer")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-browser", action="store_true")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-ui-"))
    store_url = f"sqlite:///{tmp}/ui.db"
    try:
        run_id, baseline_ms = asyncio.run(_prepare(store_url, args.steps, args.repeats))
        port = _free_port()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.Popen([sys.executable, "-m", "baton", "ui", "--store", store_url, "--port", str(port)],
                                env=env, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}/ui/runs/{run_id}"
            _wait_up(f"http://127.0.0.1:{port}/ui/", proc)
            server_ms, size = _server_ms(url, args.repeats)
            browser_ms = None if args.no_browser else _browser_ms(url, args.repeats)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"run page of {args.steps} steps: {size / 1024:.0f} KiB of HTML")
    print(f"server GET (load + render): {server_ms:.1f} ms median of {args.repeats}; "
          f"baton show --json of the same run: {baseline_ms:.1f} ms ({server_ms / max(baseline_ms, 1e-6):.1f}x)")
    if browser_ms is None:
        verdict = f"browser not measured (no Chromium or --no-browser); server {server_ms:.0f} ms, " \
                  f"target <= {TARGET_MS:.0f} ms: {'OK' if server_ms <= TARGET_MS else 'MISSED'}"
    else:
        print(f"Chromium navigation to load end: {browser_ms:.0f} ms median of {args.repeats}")
        verdict = (f"page in browser {browser_ms:.0f} ms, target <= {TARGET_MS:.0f} ms: "
                   f"{'OK' if browser_ms <= TARGET_MS else 'MISSED'}")
    print(f"SUMMARY ui: {args.steps} steps, server {server_ms:.0f} ms ({server_ms / max(baseline_ms, 1e-6):.1f}x "
          f"baton show --json); {verdict}")


if __name__ == "__main__":
    main()
