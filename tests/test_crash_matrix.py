"""The crash matrix: real ``baton`` processes killed with SIGKILL at exact points, then resumed.

Each case starts ``baton run`` in a subprocess with a fixed ``--run-id``, kills it at a
chosen point, reaps it, runs ``baton resume`` in a fresh process and compares with an
uninterrupted run of the same workflow and input. Model calls go to one fake
Messages-API server (a thread of this process), whose request log is the witness:

- **before a model call returns**: the server stalls that request; we kill once it arrived;
- **after it returned, before its journal write** and **after the write**: the subprocess runs
  ``tests/crash/run_with_hooks.py`` (``BATON_CRASH_AT=before_write|after_write:KIND:N``), which
  SIGKILLs itself around the store write holding the N-th matching record.

After every resume: the output, model-call count and usage equal the uninterrupted run's;
every model call whose record was durable at the kill is never sent again; every record
durable at the kill is left exactly as it was; side effects are deduplicated by
idempotency key, and a non-idempotent tool in flight makes the run wait for a decision.
Runs on SQLite (temp file) and PostgreSQL (skipped, with the reason, when unreachable).
See docs/durability.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from _services import PG_URL, require_postgres
from baton.messages import ModelRequest, ToolResultBlock
from baton.stores import open_store
from baton.stores.base import RunRecord, StepRecord
from baton.testing import FakeAnthropicServer, Fault, Reply, Rule, text, tool_call

ROOT = Path(__file__).resolve().parents[1]
CRASH = ROOT / "tests" / "crash"
HOOKS = CRASH / "run_with_hooks.py"
PIPELINE = CRASH / "pipeline5.yaml"
FANOUT = CRASH / "fanout50.yaml"
EFFECTS = CRASH / "effects.yaml"


def _load_effects() -> Any:
    # The tools module lives beside the workflow files (that is where baton imports it from);
    # load it under its own name here rather than putting tests/crash on sys.path.
    spec = importlib.util.spec_from_file_location("baton_crash_effects", CRASH / "effects.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


read_ledger = _load_effects().read_ledger

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PIPELINE_INPUT = "a field guide to tide pools"
FANOUT_ITEMS = [f"item {i:02d} about topic {i * 7 % 13}" for i in range(50)]
BURST_ITEMS = [f"burst {i:02d} of the same instant" for i in range(50)]
EFFECTS_INPUT = "widget-42"
STALL_S = 60.0


# --- the fake server and its script ----------------------------------------------------------


def _digest(s: str) -> str:
    return hashlib.sha1(s.encode()).hexdigest()[:10]


def _last_user_text(req: ModelRequest) -> str:
    return req.messages[-1].text if req.messages else ""


def _stage_reply(n: int) -> Callable[[ModelRequest], Reply]:
    # The reply depends on the whole stage input, so the final output depends on every stage.
    return lambda req: text(f"S{n}-{_digest(_last_user_text(req))}")


def _worker_reply(req: ModelRequest) -> Reply:
    return text(f"W-{_digest(_last_user_text(req))}")


def _tool_then_text(tool: str, label: str) -> Callable[[ModelRequest], Reply]:
    """First turn: call ``tool``; once its result is in, answer with the result."""

    def reply(req: ModelRequest) -> Reply:
        last = req.messages[-1]
        results = [b for b in last.content if isinstance(b, ToolResultBlock)]
        if results:
            return text(f"{label}: {results[0].content}")
        return tool_call(tool, {"item": _digest(last.text)})

    return reply


def stage_rx(n: int) -> str:
    return rf"^Crash stage {n}\."


FANOUT_RX = r"^Crash fan-out worker\."
RECORDER_RX = r"^Crash effects recorder\."
SENDER_RX = r"^Crash effects sender\."


@pytest.fixture(scope="module")
def server() -> Iterator[FakeAnthropicServer]:
    srv = FakeAnthropicServer(api_key="test-key")
    for n in range(1, 6):
        srv.add_rule(stage_rx(n), reply=_stage_reply(n))
    lat = random.Random(50)
    for i in range(50):  # small random latencies, so the 50 branches finish in a shuffled order
        srv.add_rule(rf"{FANOUT_RX}.*\nitem {i:02d} ", reply=_worker_reply, latency_s=lat.uniform(0.0, 0.03))
    srv.add_rule(FANOUT_RX, reply=_worker_reply)  # burst items: no latency at all
    srv.add_rule(RECORDER_RX, reply=_tool_then_text("record", "recorder done"))
    srv.add_rule(SENDER_RX, reply=_tool_then_text("send", "sender done"))
    srv.start_in_thread()
    yield srv
    srv.stop_thread()


@contextlib.contextmanager
def stalled(server: FakeAnthropicServer, pattern: str) -> Iterator[Rule]:
    """The next request matching ``pattern`` hangs (the rule is first and used once)."""
    rule = Rule(pattern, times=1, fault=Fault.stall(STALL_S))
    with server.script._lock:
        server.rules.insert(0, rule)
    try:
        yield rule
    finally:
        with server.script._lock:
            if rule in server.rules:
                server.rules.remove(rule)


# --- stores --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_schema_url() -> Iterator[str]:
    """A fresh PostgreSQL schema for this module (dropped afterwards)."""
    require_postgres()
    import psycopg

    schema = f"baton_crash_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/crash.db"
    return str(request.getfixturevalue("pg_schema_url"))


async def _read(url: str, run_id: str) -> tuple[RunRecord, list[StepRecord]]:
    store = open_store(url)
    await store.open()
    try:
        return await store.get_run(run_id), await store.load_steps(run_id)
    finally:
        await store.close()


def read_run(url: str, run_id: str) -> tuple[RunRecord, dict[str, StepRecord]]:
    run, steps = asyncio.run(_read(url, run_id))
    return run, {s.key: s for s in steps}


# --- running baton -------------------------------------------------------------------------


@dataclass
class Baton:
    """Runs the CLI against the fake server and one store."""

    server: FakeAnthropicServer
    store: str
    tmp: Path
    ledger: Path = field(init=False)

    def __post_init__(self) -> None:
        self.ledger = self.tmp / f"ledger-{uuid.uuid4().hex[:8]}.jsonl"

    def env(self, crash_at: str | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "BATON_"))}
        env.update({"ANTHROPIC_BASE_URL": self.server.url, "ANTHROPIC_API_KEY": "test-key",
                    "BATON_LEDGER": str(self.ledger), "BATON_CRASH_REPORT": str(self.tmp / "crash-report.json")})
        if crash_at:
            env["BATON_CRASH_AT"] = crash_at
        return env

    def start(self, workflow: Path, input_text: str, run_id: str, crash_at: str | None = None) -> subprocess.Popen[str]:
        (self.tmp / "crash-report.json").unlink(missing_ok=True)
        return subprocess.Popen(
            [sys.executable, str(HOOKS), "run", str(workflow), "--input", input_text, "--store", self.store,
             "--run-id", run_id, "--json", "--quiet"],
            env=self.env(crash_at), cwd=self.tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def cli(self, *args: str, crash_at: str | None = None, timeout: float = 60) -> tuple[int, Any, str]:
        """``baton ARGS --store URL``; with ``crash_at``, through the crash hooks."""
        entry = [str(HOOKS)] if crash_at else ["-m", "baton"]
        r = subprocess.run([sys.executable, *entry, *args, "--store", self.store], env=self.env(crash_at),
                           cwd=self.tmp, capture_output=True, text=True, timeout=timeout)
        try:
            out = json.loads(r.stdout) if r.stdout.strip() else None
        except json.JSONDecodeError:
            out = r.stdout
        return r.returncode, out, r.stderr

    def resume(self, run_id: str, *extra: str, crash_at: str | None = None) -> tuple[int, Any, str]:
        return self.cli("resume", run_id, "--json", "--quiet", *extra, crash_at=crash_at)

    def start_resume(self, run_id: str, *extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "baton", "resume", run_id, "--json", "--quiet", *extra,
                                 "--store", self.store], env=self.env(), cwd=self.tmp, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def report(self) -> dict[str, Any]:
        return dict(json.loads((self.tmp / "crash-report.json").read_text()))


@pytest.fixture
def baton(server: FakeAnthropicServer, store_url: str, tmp_path: Path) -> Baton:
    return Baton(server, store_url, tmp_path)


def new_run_id(tag: str) -> str:
    return f"crash-{tag}-{uuid.uuid4().hex[:8]}"


def wait_for_request(server: FakeAnthropicServer, mark: int, pattern: str, proc: subprocess.Popen[str],
                     timeout_s: float = 30.0) -> None:
    rx = re.compile(pattern, re.S)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(rx.search(r.text) for r in server.requests[mark:]):
            return
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"baton exited ({proc.returncode}) before sending {pattern!r}:\n{out}\n{err}")
        time.sleep(0.005)
    pytest.fail(f"no request matching {pattern!r} arrived within {timeout_s}s")


def kill_and_reap(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)  # reap: no zombie left to look alive


def settle(server: FakeAnthropicServer, quiet_s: float = 0.3, limit_s: float = 10.0) -> None:
    """Wait until the server has taken in everything a killed client wrote before dying.

    The server runs in this process; on a loaded machine it may parse requests from a
    killed client's sockets only after the kill. Counted after that, they would look like
    calls the resumed run sent twice."""
    deadline = time.monotonic() + limit_s
    seen, quiet_since = len(server.requests), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = len(server.requests)
        if now != seen or server.in_flight:
            seen, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return


def expect_killed_by_hook(proc: subprocess.Popen[str]) -> None:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, (
        f"the crash hook never fired (exit {proc.returncode}); the run finished instead:\n{out}\n{err[-2000:]}")


# --- uninterrupted baselines ----------------------------------------------------------------


@pytest.fixture(scope="module")
def baselines(server: FakeAnthropicServer, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., dict[str, Any]]:
    """Uninterrupted runs (SQLite), once per (workflow, input): the reference every resume must equal."""
    cache: dict[tuple[str, str], dict[str, Any]] = {}

    def get(workflow: Path, input_text: str) -> dict[str, Any]:
        key = (str(workflow), input_text)
        if key not in cache:
            tmp = tmp_path_factory.mktemp("baseline")
            b = Baton(server, f"sqlite:///{tmp}/baseline.db", tmp)
            mark = len(server.requests)
            proc = b.start(workflow, input_text, new_run_id("baseline"))
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            result = json.loads(out)
            assert result["status"] == "succeeded"
            result["requests"] = [r.text for r in server.requests[mark:]]
            result["ledger"] = read_ledger(b.ledger)
            cache[key] = result
        return cache[key]

    return get


# --- the generic checks ------------------------------------------------------------------------


@dataclass
class Witness:
    """Which model calls a run sent, before and after the kill, by a stable identity."""

    before: Counter[str]
    after: Counter[str]


def idents(server: FakeAnthropicServer, start: int, end: int | None, ident: Callable[[str], str | None]) -> Counter[str]:
    return Counter(i for r in server.requests[start:end] if (i := ident(r.text)) is not None)


def check_resume(*, baton: Baton, run_id: str, mark: int, crashed_at: int, baseline: dict[str, Any],
                 ident_of_request: Callable[[str], str | None], ident_of_record: Callable[[StepRecord], str],
                 expect_status: str = "succeeded") -> tuple[dict[str, Any], dict[str, StepRecord], set[str]]:
    """Resume ``run_id`` and check the invariants. Returns (resume json, durable-at-kill records, their idents)."""
    server = baton.server
    _, durable = read_run(baton.store, run_id)
    durable_models = {ident_of_record(s) for s in durable.values() if s.kind == "model" and s.status == "completed"}
    settle(server)
    second = len(server.requests)
    code, out, err = baton.resume(run_id)
    assert out is not None and out["status"] == expect_status, f"resume exited {code}:\n{out}\n{err[-3000:]}"
    witness = Witness(idents(server, mark, crashed_at, ident_of_request), idents(server, second, None, ident_of_request))
    assert code == {"succeeded": 0, "awaiting_approval": 4}[expect_status]
    if expect_status == "succeeded":
        assert out["output"] == baseline["output"]
        assert out["model_calls"] == baseline["model_calls"]
        assert out["usage"] == baseline["usage"]
        expected = Counter(i for t in baseline["requests"] if (i := ident_of_request(t)) is not None)
        # Every model call of the uninterrupted run was made at least once, and no call ever twice
        # in one segment.
        assert set(witness.before) | set(witness.after) == set(expected)
        twice = {seg: sorted(i for i, c in counts.items() if c != 1)
                 for seg, counts in (("before the kill", witness.before), ("after resume", witness.after))}
        assert not any(twice.values()), f"model calls sent more than once in one segment: {twice}\n{err[-3000:]}"
    # A call whose record was durable at the kill is never sent again ...
    resent = sorted(i for i in durable_models if witness.after[i])
    assert not resent, f"completed model calls sent again after resume: {resent}"
    # ... each of them was sent exactly once before the kill ...
    assert all(witness.before[i] == 1 for i in durable_models)
    # ... and no durable record was rewritten by the resumed process.
    _, final = read_run(baton.store, run_id)
    rewritten = sorted(k for k, s in durable.items() if s.status == "completed" and final[k].to_dict() != s.to_dict())
    assert not rewritten, f"completed journal records rewritten on resume: {rewritten}"
    return out, durable, durable_models


# --- 5-stage pipeline: every stage x {before return, before write, after write} ---------------


def pipeline_ident(text_: str) -> str | None:
    m = re.match(r"Crash stage (\d)\.", text_)
    return f"s{m.group(1)}" if m else None


POINTS = ["before_return", "before_write", "after_write"]


@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("stage", [1, 2, 3, 4, 5])
def test_pipeline_crash_matrix(baton: Baton, baselines: Any, stage: int, point: str) -> None:
    baseline = baselines(PIPELINE, PIPELINE_INPUT)
    assert [pipeline_ident(t) for t in baseline["requests"]] == ["s1", "s2", "s3", "s4", "s5"]
    server = baton.server
    run_id = new_run_id(f"pipe-s{stage}-{point}")
    mark = len(server.requests)
    if point == "before_return":
        with stalled(server, stage_rx(stage)):
            proc = baton.start(PIPELINE, PIPELINE_INPUT, run_id)
            wait_for_request(server, mark, stage_rx(stage), proc)
            kill_and_reap(proc)
    else:
        proc = baton.start(PIPELINE, PIPELINE_INPUT, run_id, crash_at=f"{point}:model:{stage}")
        expect_killed_by_hook(proc)
        assert [b["key"] for b in baton.report()["batch"]] == [f"{2 * (stage - 1)}/m0"]
    crashed_at = len(server.requests)
    run, _ = read_run(baton.store, run_id)
    assert run.status == "running"  # the kill left it mid-flight, owned by a dead process
    _, _, durable = check_resume(baton=baton, run_id=run_id, mark=mark, crashed_at=crashed_at, baseline=baseline,
                                 ident_of_request=pipeline_ident, ident_of_record=lambda s: s.name)
    done = stage if point == "after_write" else stage - 1
    assert durable == {f"s{i}" for i in range(1, done + 1)}
    witness_after = idents(server, crashed_at, None, pipeline_ident)
    # The stage that was in flight (or whose answer was lost with its unwritten record) is
    # sent once more; the ones after it once; the ones before it never.
    assert sorted(witness_after) == [f"s{i}" for i in range(done + 1, 6)]


# --- 50-node parallel fan-out: seeded random kill points --------------------------------------


def fanout_ident(text_: str) -> str | None:
    m = re.search(r"\n(item|burst) (\d\d) ", text_)
    return f"{m.group(1)}{m.group(2)}" if m and text_.startswith("Crash fan-out worker.") else None


def fanout_record_ident(prefix: str) -> Callable[[StepRecord], str]:
    return lambda s: f"{prefix}{int(s.key.split('/')[0]):02d}"


_rng = random.Random(20240601)
FANOUT_POINTS = [(kind, _rng.randint(1, 49))  # item 49 is held back in the write points
                 for kind in ("in_flight", "before_write", "after_write", "in_flight", "after_write")]


@pytest.mark.parametrize(("point", "n"), FANOUT_POINTS, ids=[f"{p}-{n}" for p, n in FANOUT_POINTS])
def test_fanout50_crash_at_random_points(baton: Baton, baselines: Any, point: str, n: int) -> None:
    text_in = "\n".join(FANOUT_ITEMS)
    baseline = baselines(FANOUT, text_in)
    assert len(baseline["output"]) == 50 and baseline["model_calls"] == 50
    server = baton.server
    run_id = new_run_id(f"fan-{point}-{n}")
    mark = len(server.requests)
    target = n - 1  # the n-th item (0-based index), or the n-th model record written
    if point == "in_flight":
        with stalled(server, rf"{FANOUT_RX}.*\nitem {target:02d} "):
            proc = baton.start(FANOUT, text_in, run_id)
            wait_for_request(server, mark, rf"{FANOUT_RX}.*\nitem {target:02d} ", proc)
            kill_and_reap(proc)
        batch: list[str] = []
    else:
        # The last item's answer is held back, so the kill always interrupts the fan-out: on a
        # loaded machine all 50 answers could otherwise land in the group commit of record n.
        with stalled(server, rf"{FANOUT_RX}.*\nitem 49 "):
            proc = baton.start(FANOUT, text_in, run_id, crash_at=f"{point}:model:{n}")
            expect_killed_by_hook(proc)
        batch = [b["key"] for b in baton.report()["batch"] if b["kind"] == "model"]
        assert batch
    crashed_at = len(server.requests)
    _, durable_records, durable = check_resume(
        baton=baton, run_id=run_id, mark=mark, crashed_at=crashed_at, baseline=baseline,
        ident_of_request=fanout_ident, ident_of_record=fanout_record_ident("item"))
    if point == "in_flight":
        assert f"item{target:02d}" not in durable
    elif point == "before_write":
        assert not any(k in durable_records for k in batch)  # the whole batch was lost with the process
    else:
        assert all(durable_records[k].status == "completed" for k in batch)
    assert len(durable) < 50  # the kill really interrupted the fan-out


# --- the three known failure shapes of other frameworks ----------------------------------------


def _ledger_of(baton: Baton, tool: str, event: str) -> list[dict[str, Any]]:
    return [e for e in read_ledger(baton.ledger) if e["tool"] == tool and e["event"] == event]


@pytest.mark.parametrize("point", ["before_write", "after_write"])
def test_a_effect_and_record_ordered_rerun_keeps_idempotency_key(baton: Baton, baselines: Any, point: str) -> None:
    """(a) A step re-run because its effect and its checkpoint were not ordered.

    Kill between the idempotent tool's effect and its journal record: on resume the tool
    runs again with the same idempotency key and the ledger keeps one effect. Kill right
    after the record: the tool does not run again at all.
    """
    baseline = baselines(EFFECTS, EFFECTS_INPUT)
    server = baton.server
    run_id = new_run_id(f"a-{point}")
    mark = len(server.requests)
    proc = baton.start(EFFECTS, EFFECTS_INPUT, run_id, crash_at=f"{point}:tool:1")
    expect_killed_by_hook(proc)
    assert baton.report()["batch"] == [{"key": "0/t0.0", "kind": "tool", "status": "completed"}]
    assert len(_ledger_of(baton, "record", "effect")) == 1  # the effect happened before the kill
    crashed_at = len(server.requests)
    check_resume(baton=baton, run_id=run_id, mark=mark, crashed_at=crashed_at, baseline=baseline,
                 ident_of_request=effects_ident, ident_of_record=effects_record_ident)
    attempts = _ledger_of(baton, "record", "attempt")
    effects = _ledger_of(baton, "record", "effect")
    assert len(effects) == 1 and effects[0]["key"] == f"{run_id}:0/t0.0"
    if point == "before_write":
        assert [a["key"] for a in attempts] == [f"{run_id}:0/t0.0"] * 2  # re-run, same key, deduped
        assert attempts[0]["pid"] != attempts[1]["pid"]
    else:
        assert len(attempts) == 1  # durable record: never re-run
    assert len(_ledger_of(baton, "send", "effect")) == 1


def effects_ident(text_: str) -> str | None:
    """Each effects agent makes two model calls: m0 asks for its tool, m1 sees the tool's result."""
    if re.match(RECORDER_RX, text_):
        return "recorder/m1" if "\nrecorded " in text_ else "recorder/m0"
    if re.match(SENDER_RX, text_):
        return "sender/m1" if "\nsent " in text_ else "sender/m0"
    return None


def effects_record_ident(s: StepRecord) -> str:
    return f"{s.name}/{s.key.rsplit('/', 1)[1]}"


def test_b_parallel_branches_committed_together_all_survive(baton: Baton, baselines: Any) -> None:
    """(b) Pending writes of parallel branches lost when they commit concurrently.

    50 branches answer in the same instant; the journal commits several of them in one
    store transaction. Kill right after such a group commit: every branch in it is durable
    and none of them is sent again on resume.

    Which answers share a group depends on when they arrive: the first group of 3+ can
    hold all 50 (the rest arrived while the first write was in flight), and then nothing
    is left for the resume to do. Every invariant is checked on each run anyway; up to
    five runs are made until one is killed with branches still pending.
    """
    text_in = "\n".join(BURST_ITEMS)
    baseline = baselines(FANOUT, text_in)
    server = baton.server
    for attempt in range(5):
        run_id = new_run_id(f"b-group-{attempt}")
        mark = len(server.requests)
        proc = baton.start(FANOUT, text_in, run_id, crash_at="after_group:model:3")
        expect_killed_by_hook(proc)
        group = [b["key"] for b in baton.report()["batch"] if b["kind"] == "model"]
        assert len(group) >= 3
        crashed_at = len(server.requests)
        _, durable_records, durable = check_resume(
            baton=baton, run_id=run_id, mark=mark, crashed_at=crashed_at, baseline=baseline,
            ident_of_request=fanout_ident, ident_of_record=fanout_record_ident("burst"))
        assert all(durable_records[k].status == "completed" for k in group)
        after = idents(server, crashed_at, None, fanout_ident)
        assert not any(after[fanout_record_ident("burst")(durable_records[k])] for k in group)
        if len(durable) < 50:
            break
    assert len(durable) < 50, "five runs in a row had all 50 branches durable at the first group commit"


def test_c_run_killed_before_first_checkpoint_is_listed_and_resumable(baton: Baton, baselines: Any) -> None:
    """(c) An accepted run lost because the crash came before the first checkpoint.

    Kill right after ``create_run``: ``baton runs`` lists the run (pending), and ``baton
    resume`` completes it with the uninterrupted output.
    """
    baseline = baselines(PIPELINE, PIPELINE_INPUT)
    server = baton.server
    run_id = new_run_id("c-accepted")
    mark = len(server.requests)
    proc = baton.start(PIPELINE, PIPELINE_INPUT, run_id, crash_at="after_create")
    expect_killed_by_hook(proc)
    assert len(server.requests) == mark  # no work had started
    code, runs, err = baton.cli("runs", "--json")
    assert code == 0, err
    listed = {r["run_id"]: r for r in runs}
    assert run_id in listed and listed[run_id]["status"] == "pending"
    out, _, durable = check_resume(baton=baton, run_id=run_id, mark=mark, crashed_at=len(server.requests),
                                   baseline=baseline, ident_of_request=pipeline_ident,
                                   ident_of_record=lambda s: s.name)
    assert durable == set()
    code, runs, _ = baton.cli("runs", "--json")
    assert {r["run_id"]: r for r in runs}[run_id]["status"] == "succeeded"


# --- a non-idempotent tool in flight: a decision, never a blind re-run -------------------------


@pytest.mark.parametrize("point", ["after_write:tool_started:1", "before_write:tool:2"],
                         ids=["started-not-run", "ran-not-recorded"])
def test_non_idempotent_tool_in_flight_waits_for_a_decision(baton: Baton, baselines: Any, point: str) -> None:
    baseline = baselines(EFFECTS, EFFECTS_INPUT)
    server = baton.server
    run_id = new_run_id("send")
    mark = len(server.requests)
    proc = baton.start(EFFECTS, EFFECTS_INPUT, run_id, crash_at=point)
    expect_killed_by_hook(proc)
    ran = point.startswith("before_write")
    assert len(_ledger_of(baton, "send", "effect")) == (1 if ran else 0)
    crashed_at = len(server.requests)
    out, durable_records, _ = check_resume(
        baton=baton, run_id=run_id, mark=mark, crashed_at=crashed_at, baseline=baseline,
        ident_of_request=effects_ident, ident_of_record=effects_record_ident, expect_status="awaiting_approval")
    code, _, _ = baton.resume(run_id)  # asking again changes nothing: still a decision, no send
    assert code == 4
    started = [k for k, s in durable_records.items() if s.kind == "tool" and s.status == "started"]
    assert started == ["2/t0.0"]
    assert "2/t0.0#decision" in out["error"]["message"]
    assert len(_ledger_of(baton, "send", "effect")) == (1 if ran else 0)  # not re-run blindly
    if ran:
        # The operator checked: it was sent. Reject the re-run and give the tool's result.
        code, _, err = baton.cli("approve", run_id, "2/t0.0#decision", "--reject", "--edit",
                                 f"sent {_digest(EFFECTS_INPUT)} (confirmed by operator)")
        assert code == 0, err
        code, out, err = baton.resume(run_id)
        assert code == 0, err
        assert out["output"] == f"sender done: sent {_digest(EFFECTS_INPUT)} (confirmed by operator)"
    else:
        # Nothing was sent: approve running it again.
        code, _, err = baton.cli("approve", run_id, "2/t0.0#decision", "--approve")
        assert code == 0, err
        code, out, err = baton.resume(run_id)
        assert code == 0, err
        assert out["output"] == baseline["output"]
    assert len(_ledger_of(baton, "send", "effect")) == 1  # exactly one notice, ever
    assert len(_ledger_of(baton, "record", "effect")) == 1


# --- more ways to die -------------------------------------------------------------------------


def test_pipeline_killed_again_while_resuming(baton: Baton, baselines: Any) -> None:
    """Crash, resume, crash the resume, resume again: each segment continues where the last stopped."""
    baseline = baselines(PIPELINE, PIPELINE_INPUT)
    server = baton.server
    run_id = new_run_id("twice")
    mark = len(server.requests)
    expect_killed_by_hook(baton.start(PIPELINE, PIPELINE_INPUT, run_id, crash_at="after_write:model:2"))
    first = len(server.requests)
    # The resumed process writes stage 3's model record, then dies just before stage 4's.
    code, _, err = baton.resume(run_id, crash_at="before_write:model:2")
    assert code == -signal.SIGKILL, err
    assert dict(idents(server, first, None, pipeline_ident)) == {"s3": 1, "s4": 1}
    _, _, durable = check_resume(baton=baton, run_id=run_id, mark=mark, crashed_at=len(server.requests),
                                 baseline=baseline, ident_of_request=pipeline_ident,
                                 ident_of_record=lambda s: s.name)
    assert durable == {"s1", "s2", "s3"}
    assert dict(idents(server, mark, None, pipeline_ident)) == {"s1": 1, "s2": 1, "s3": 1, "s4": 2, "s5": 1}


def test_killed_before_the_final_status_resumes_with_no_model_call(baton: Baton, baselines: Any) -> None:
    baseline = baselines(PIPELINE, PIPELINE_INPUT)
    server = baton.server
    run_id = new_run_id("settle")
    mark = len(server.requests)
    expect_killed_by_hook(baton.start(PIPELINE, PIPELINE_INPUT, run_id, crash_at="before_settle"))
    assert baton.report()["status"] == "succeeded"
    run, _ = read_run(baton.store, run_id)
    assert run.status == "running"
    crashed_at = len(server.requests)
    check_resume(baton=baton, run_id=run_id, mark=mark, crashed_at=crashed_at, baseline=baseline,
                 ident_of_request=pipeline_ident, ident_of_record=lambda s: s.name)
    assert len(server.requests) == crashed_at  # everything was replayed from the journal


def test_owner_killed_but_not_yet_reaped_counts_as_dead(baton: Baton, baselines: Any) -> None:
    """A SIGKILLed owner that its parent has not reaped is a zombie: resume must not wait for it."""
    baseline = baselines(PIPELINE, PIPELINE_INPUT)
    server = baton.server
    run_id = new_run_id("zombie")
    mark = len(server.requests)
    with stalled(server, stage_rx(2)):
        proc = baton.start(PIPELINE, PIPELINE_INPUT, run_id)
        wait_for_request(server, mark, stage_rx(2), proc)
        proc.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the killed process never became a zombie"
            time.sleep(0.01)
    try:
        check_resume(baton=baton, run_id=run_id, mark=mark, crashed_at=len(server.requests), baseline=baseline,
                     ident_of_request=pipeline_ident, ident_of_record=lambda s: s.name)
    finally:
        proc.communicate(timeout=30)


def test_two_resumes_of_one_run_only_one_executes(baton: Baton, baselines: Any) -> None:
    """Two operators resume the same crashed run at once: one executes it, the other is refused."""
    baseline = baselines(PIPELINE, PIPELINE_INPUT)
    server = baton.server
    run_id = new_run_id("race")
    mark = len(server.requests)
    expect_killed_by_hook(baton.start(PIPELINE, PIPELINE_INPUT, run_id, crash_at="after_write:model:1"))
    crashed_at = len(server.requests)
    slow = Rule(stage_rx(3), reply=_stage_reply(3), times=1, latency_s=4.0)
    with server.script._lock:
        server.rules.insert(0, slow)
    try:
        first = baton.start_resume(run_id)
        wait_for_request(server, crashed_at, stage_rx(3), first)  # the first resume owns the run now
        code, out, err = baton.resume(run_id)
        assert code == 2 and out["status"] == "error" and out["error"]["type"] == "RunOwnedElsewhere", err
        assert f"pid {first.pid}" in out["error"]["message"]
        stdout, stderr = first.communicate(timeout=60)
    finally:
        with server.script._lock:
            if slow in server.rules:
                server.rules.remove(slow)
    assert first.returncode == 0, stderr
    assert json.loads(stdout)["output"] == baseline["output"]
    assert dict(idents(server, mark, None, pipeline_ident)) == {"s1": 1, "s2": 1, "s3": 1, "s4": 1, "s5": 1}


# --- a displaced owner; a re-run that dies again ------------------------------------------------


def test_owner_displaced_by_force_takeover_stops_writing(baton: Baton, baselines: Any) -> None:
    """``resume --force`` (or an expired lease on another host) takes a run from a live owner.

    The displaced owner must not send the rest of the run's model calls again, overwrite
    completed records the new owner wrote, or overwrite the run's final status.
    """
    baseline = baselines(PIPELINE, PIPELINE_INPUT)
    server = baton.server
    run_id = new_run_id("fence")
    mark = len(server.requests)
    # The old owner hangs on stage 3; when its answer finally comes it differs (a real model
    # is not deterministic), so a rewrite of stage 3's record is visible.
    hung = Rule(stage_rx(3), reply=lambda req: text("STALE"), times=1, latency_s=3.0)
    with server.script._lock:
        server.rules.insert(0, hung)
    try:
        old = baton.start(PIPELINE, PIPELINE_INPUT, run_id)
        wait_for_request(server, mark, stage_rx(3), old)
        code, out, err = baton.resume(run_id, "--force")
        assert code == 0 and out["output"] == baseline["output"], err
        _, taken_over = read_run(baton.store, run_id)
        old.communicate(timeout=60)
    finally:
        with server.script._lock:
            if hung in server.rules:
                server.rules.remove(hung)
    run, final = read_run(baton.store, run_id)
    sent = dict(idents(server, mark, None, pipeline_ident))
    problems = []
    if sent != {"s1": 1, "s2": 1, "s3": 2, "s4": 1, "s5": 1}:
        problems.append(f"model calls sent again by the displaced owner: {sent}")
    rewritten = [k for k, rec in taken_over.items() if rec.status == "completed" and final[k].to_dict() != rec.to_dict()]
    if rewritten:
        problems.append(f"completed records rewritten by the displaced owner: {rewritten} "
                        f"(4/m0 now {final['4/m0'].result['content']})")
    if run.output != baseline["output"]:
        problems.append(f"final output overwritten: {run.output!r} (the new owner returned {baseline['output']!r})")
    assert not problems, "\n".join(problems)


def test_non_idempotent_rerun_killed_again_asks_again(baton: Baton) -> None:
    """An approval covers one re-run: if that re-run dies in flight too, the next resume asks again."""
    run_id = new_run_id("send-twice")
    expect_killed_by_hook(baton.start(EFFECTS, EFFECTS_INPUT, run_id, crash_at="after_write:tool_started:1"))
    assert baton.resume(run_id)[0] == 4
    assert baton.cli("approve", run_id, "2/t0.0#decision", "--approve")[0] == 0
    # The approved re-run sends the notice, and the process dies before recording it.
    code, _, err = baton.resume(run_id, crash_at="before_write:tool:1")
    assert code == -signal.SIGKILL, err
    assert len(_ledger_of(baton, "send", "effect")) == 1
    code, out, err = baton.resume(run_id)
    assert len(_ledger_of(baton, "send", "effect")) == 1, "the notice was sent twice"
    assert code == 4 and out["status"] == "awaiting_approval", err
    # A new crash needs a new decision, under a new key (the first one is spent).
    assert "2/t0.0#decision-2" in out["error"]["message"]
    confirmed = f"sent {_digest(EFFECTS_INPUT)} (confirmed by operator)"
    code, _, err = baton.cli("approve", run_id, "2/t0.0#decision-2", "--reject", "--edit", confirmed)
    assert code == 0, err
    code, out, err = baton.resume(run_id)
    assert code == 0 and out["output"] == f"sender done: {confirmed}", err
    assert len(_ledger_of(baton, "send", "effect")) == 1
