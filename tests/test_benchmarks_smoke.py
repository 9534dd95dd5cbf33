"""Every benchmark script runs end to end at its smallest settings and prints its summary line.

The numbers are not checked here (the machine may be busy): only that each benchmark
completes, exits 0, and reports its measurements next to its targets.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"

SMALLEST = {
    "bench_agent_call.py": ["--calls", "200", "--concurrency", "100", "--import-repeats", "1"],
    "bench_journal.py": ["--fanout", "100", "--runs", "1", "--resume-calls", "100", "--resume-repeats", "1"],
    "bench_dag.py": ["--subtasks", "30", "--min-latency", "0.01", "--max-latency", "0.05", "--limit", "4"],
    "bench_rate_limits.py": ["--calls", "30"],
    "bench_faults.py": ["--runs", "5"],
    "bench_prompt_cache.py": ["--workers", "5", "--context-tokens", "2000", "--latency", "0.05"],
    "bench_retrieval.py": ["--repeats", "1"],
    "bench_observe.py": ["--n", "200", "--calls", "200", "--concurrency", "50", "--rounds", "1"],
}
SUMMARY = {
    "bench_agent_call.py": "SUMMARY agent_call:",
    "bench_journal.py": "SUMMARY journal:",
    "bench_dag.py": "SUMMARY dag:",
    "bench_rate_limits.py": "SUMMARY rate_limits:",
    "bench_faults.py": "SUMMARY faults:",
    "bench_prompt_cache.py": "SUMMARY prompt_cache:",
    "bench_observe.py": "SUMMARY observe:",
    "bench_retrieval.py": "SUMMARY retrieval:",
}


def test_every_benchmark_script_is_covered() -> None:
    scripts = {p.name for p in BENCHMARKS.glob("bench_*.py")} - {"bench_transport.py"}
    assert scripts == set(SMALLEST)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("script", sorted(SMALLEST))
def test_benchmark_runs_and_prints_its_summary(script: str) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), *SMALLEST[script]], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith(SUMMARY[script])]
    assert len(lines) == 1, proc.stdout[-3000:]
    assert "OK" in lines[0] or "MISSED" in lines[0]  # the target is named next to the number


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_observe_floors_print_each_diagnostic() -> None:
    """``--floors`` patches parts of the sinks' work out of its child runs; each still exports
    every span (the benchmark checks the collector's count) and prints its extra CPU. Run with
    ``--payload large`` (working-size prompts and answers), which the other smoke run leaves out."""
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "bench_observe.py"), "--skip-events", "--floors",
                           "--payload", "large", "--calls", "100", "--concurrency", "20", "--rounds", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "payload=large" in proc.stdout, proc.stdout[-3000:]
    for name in ("no redaction or capture", "spans built, not encoded", "no span building",
                 "neither spans nor redaction"):
        lines = [line for line in proc.stdout.splitlines() if f"diag: {name}" in line]
        assert len(lines) == 1 and "%" in lines[0], proc.stdout[-3000:]
