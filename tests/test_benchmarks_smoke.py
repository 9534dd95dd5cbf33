"""Every benchmark script runs end to end at its smallest settings and prints its summary line.

Timings are not held to their targets here (the machine may be busy), but every verdict
printed must agree with the number and the target printed next to it, and the verdicts of
correctness checks (every run completes, billing equals the server's log, one cache write)
must be OK.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from _services import in_ci

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
    "bench_serve.py": ["--runs", "30", "--clients", "5", "--subscribers", "3", "--latency", "0.05", "--cli-runs", "1"],
    "bench_ui.py": ["--steps", "50", "--repeats", "1"],
    "bench_routing.py": ["--tasks", "40"],
    "bench_cli_path.py": ["--calls", "60", "--small", "20", "--concurrency", "20", "--rounds", "1"],
    "bench_many_runs.py": ["--runs", "50", "--latency", "0.3"],
    "bench_peers.py": ["--only", "baton", "--n", "30", "--small", "10", "--latency", "0.05"],  # no peer install
    "bench_temporal.py": ["--calls", "20"],
}
SUMMARY = {
    "bench_agent_call.py": "SUMMARY agent_call:",
    "bench_journal.py": "SUMMARY journal:",
    "bench_dag.py": "SUMMARY dag:",
    "bench_rate_limits.py": "SUMMARY rate_limits:",
    "bench_faults.py": "SUMMARY faults:",
    "bench_prompt_cache.py": "SUMMARY prompt_cache:",
    "bench_observe.py": "SUMMARY observe:",
    "bench_serve.py": "SUMMARY serve:",
    "bench_retrieval.py": "SUMMARY retrieval:",
    "bench_ui.py": "SUMMARY ui:",
    "bench_routing.py": "SUMMARY routing:",
    "bench_cli_path.py": "SUMMARY cli_path:",
    "bench_many_runs.py": "SUMMARY many_runs:",
    "bench_peers.py": "SUMMARY peers:",
    "bench_temporal.py": "SUMMARY temporal:",
}


def test_every_benchmark_script_is_covered() -> None:
    scripts = {p.name for p in BENCHMARKS.glob("bench_*.py")} - {"bench_transport.py"}
    assert scripts == set(SMALLEST)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("script", sorted(SMALLEST))
def test_benchmark_runs_and_prints_its_summary(script: str) -> None:
    if script == "bench_temporal.py" and importlib.util.find_spec("temporalio") is None and not in_ci():
        pytest.skip("temporalio is not installed (pip install 'baton-agents[temporal]')")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), *SMALLEST[script]], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith(SUMMARY[script])]
    assert len(lines) == 1, proc.stdout[-3000:]
    check_verdicts(script, lines[0])


NUM = r"([\d.]+)"
# Per script: (pattern with value, target and verdict groups, unit note) for each timed target.
TIMED: dict[str, list[str]] = {
    "bench_agent_call.py": [rf"{NUM} ms/call CPU \([\d.]+x bare aiohttp\), target <= {NUM} ms: (OK|MISSED)",
                            rf"import baton {NUM} ms, target <= {NUM} ms: (OK|MISSED)"],
    "bench_journal.py": [rf"CPU {NUM}x, target <= {NUM}x: (OK|MISSED)",
                         rf"resume to first journaled step {NUM} ms \(\d+ calls\), target <= {NUM} ms: (OK|MISSED)"],
    "bench_dag.py": [rf"makespan/CP {NUM} \(target <= {NUM}: (OK|MISSED)\)",
                     rf"makespan/Graham {NUM} \(target <= {NUM}: (OK|MISSED)\)"],
    "bench_prompt_cache.py": [rf"cached/uncached {NUM} \(target <= {NUM}: (OK|MISSED)\)"],
    "bench_observe.py": [rf"all sinks on add {NUM}% CPU per agent call \(median of \d+ paired rounds; "
                         rf"target <= {NUM}%: (OK|MISSED)\)"],
    "bench_rate_limits.py": [],
    "bench_faults.py": [],
    "bench_serve.py": [],
    "bench_retrieval.py": [],
    "bench_ui.py": [rf"(?:page in browser|server) {NUM} ms, target <= {NUM} ms: (OK|MISSED)"],
    "bench_routing.py": [rf"costs {NUM}x always-Opus \(target <= {NUM}: (OK|MISSED)\)"],
    "bench_cli_path.py": [],
    "bench_many_runs.py": [rf"peak RSS {NUM} MB \(target <= {NUM} MB: (OK|MISSED)\)",
                           rf"CPU per run {NUM} ms \(target <= {NUM} ms: (OK|MISSED)\)"],
    "bench_peers.py": [],
    "bench_temporal.py": [],
}


def _agrees(value: str, target: str, verdict: str) -> bool:
    """OK exactly when value <= target; a value printed equal to the target (rounded) may go either way."""
    v, t = float(value), float(target)
    return v == t or (verdict == "OK") == (v <= t)


def check_verdicts(script: str, line: str) -> None:
    for pattern in TIMED[script]:
        m = re.search(pattern, line)
        assert m, f"{script}: no '{pattern}' in {line!r}"
        assert _agrees(*m.groups()), f"{script}: verdict disagrees with its numbers: {m.group(0)!r}"
    if script == "bench_rate_limits.py":
        m = re.search(rf"= {NUM}x \(target <= {NUM}x\), {NUM}% answered 429 \(target <= {NUM}%\): (OK|MISSED)", line)
        assert m, line
        ratio, ratio_target, share, share_target, verdict = m.groups()
        both = float(ratio) <= float(ratio_target) and float(share) <= float(share_target)
        assert float(ratio) == float(ratio_target) or (verdict == "OK") == both, line
    if script == "bench_faults.py":  # correctness, not timing: must hold on any machine
        m = re.search(r"(\d+)/(\d+) runs complete \(OK\); billed \$([\d.]+) vs server log \$([\d.]+): equal, OK",
                      line)
        assert m and m.group(1) == m.group(2) and m.group(3) == m.group(4), line
    if script == "bench_serve.py":  # correctness: every run accepted over HTTP finished, every stream ended
        m = re.search(r"(\d+)/(\d+) runs, .*\((OK|MISSED): every run succeeded", line)
        assert m and m.group(1) == m.group(2) and m.group(3) == "OK", line
    if script == "bench_retrieval.py":  # quality on the committed evaluation set: not a timing
        m = re.search(rf"bm25 recall@5 {NUM} \(target >= {NUM}: (OK|MISSED)\)", line)
        assert m and (m.group(3) == "OK") == (float(m.group(1)) >= float(m.group(2))), line
    if script == "bench_routing.py":  # correctness: baton's bill is the server log's, to the cent
        assert "billed = server log: OK" in line, line
    if script == "bench_cli_path.py":  # OK when either target holds
        signed = r"(-?[\d.]+)"  # marginal costs at the smallest sizes are noise and may come out negative
        m = re.search(rf"CLI {signed} ms/call \({signed}x the aiohttp floor .*target <= {NUM} ms or <= {NUM}x floor: "
                      rf"(OK|MISSED)", line)
        assert m, line
        ms, ratio, ms_target, ratio_target, verdict = m.groups()
        assert (verdict == "OK") == (float(ms) <= float(ms_target) or float(ratio) <= float(ratio_target)), line
    if script == "bench_many_runs.py":  # correctness: every run of the burst succeeds
        m = re.search(r"(\d+)/(\d+) runs succeeded \((OK|MISSED)\)", line)
        assert m and m.group(1) == m.group(2) and m.group(3) == "OK", line
    if script == "bench_temporal.py":  # correctness: every variant's run finished with every call
        assert re.search(r"every run completed with \d+ calls: OK", line), line
    if script == "bench_prompt_cache.py":
        m = re.search(r"(\d+) write \+ (\d+) reads \(expected 1 \+ (\d+): OK\)", line)
        assert m and m.group(1) == "1" and m.group(2) == m.group(3), line


@pytest.mark.parametrize(("script", "line", "good"), [
    ("bench_dag.py", "SUMMARY dag: unbounded makespan/CP 1.201 (target <= 1.1: OK); m=4 makespan/Graham 0.695 "
                     "(target <= 1.0: OK)", False),
    ("bench_dag.py", "SUMMARY dag: unbounded makespan/CP 1.201 (target <= 1.1: MISSED); m=4 makespan/Graham "
                     "0.695 (target <= 1.0: OK)", True),
    ("bench_faults.py", "SUMMARY faults: 4/5 runs complete (OK); billed $0.001680 vs server log $0.001680: "
                        "equal, OK", False),
    ("bench_journal.py", "SUMMARY journal: OK", False),  # a verdict with no number or target
])
def test_the_verdict_check_catches_a_wrong_verdict(script: str, line: str, good: bool) -> None:
    if good:
        check_verdicts(script, line)
    else:
        with pytest.raises(AssertionError):
            check_verdicts(script, line)


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
