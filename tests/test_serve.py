"""``baton serve``: a real service process over HTTP and SSE, against the fake Messages API,
on PostgreSQL (and Redis for the queue). See docs/service.md."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _serve import Serve, poll, serving, signed
from _services import PG_URL, REDIS_URL, postgres_problem, redis_problem
from baton.messages import ModelRequest, ToolResultBlock
from baton.stores import open_store
from baton.testing import FakeAnthropicServer, Reply, text, tool_call

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[1]
STAGE_RX = r"^Serve stage ([A-C])\."

PIPE3 = """\
version: 1
name: pipe3
description: Three stages, each a model call.
defaults: {model: claude-haiku-4-5, max_tokens: 64, temperature: 0}
agents:
  a: {system: "Serve stage A. You outline."}
  b: {system: "Serve stage B. You draft."}
  c: {system: "Serve stage C. You edit."}
workflow: {pattern: pipeline, stages: [a, b, c]}
limits: {budget_usd: 1.0, max_model_calls: 20}
"""

SHAPED = """\
version: 1
name: shaped
description: One call; the input must name a topic.
input:
  type: object
  required: [topic]
  properties: {topic: {type: string, minLength: 1}, depth: {type: integer, minimum: 1}}
defaults: {model: claude-haiku-4-5, max_tokens: 64, temperature: 0}
agents:
  w: {system: "Serve shaped. You write."}
workflow: {pattern: agent, agent: w}
"""

SLOW = """\
version: 1
name: slow
defaults: {model: claude-haiku-4-5, max_tokens: 64, temperature: 0}
agents:
  s: {system: "Serve slow. You take your time."}
workflow: {pattern: agent, agent: s}
"""


def _last_text(req: ModelRequest) -> str:
    """The first line of the last message (a pipeline adds a handoff note below the previous output)."""
    return req.messages[-1].text.split("\n", 1)[0] if req.messages else ""


@pytest.fixture(scope="module")
def model() -> Iterator[FakeAnthropicServer]:
    srv = FakeAnthropicServer(api_key="test-key")
    for letter in "ABC":
        srv.add_rule(rf"^Serve stage {letter}\.", reply=lambda req, x=letter: text(f"{x}:{_last_text(req)}"),
                     latency_s=0.25)
    srv.add_rule(r"^Serve shaped\.", reply=lambda req: text(f"wrote: {_last_text(req)[:40]}"))
    srv.add_rule(r"^Serve slow\.", reply=lambda req: text(f"slow: {_last_text(req)}"), latency_s=1.0)
    srv.start_in_thread()
    yield srv
    srv.stop_thread()


@pytest.fixture(scope="module")
def workflows(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("workflows")
    for name, body in (("pipe3", PIPE3), ("shaped", SHAPED), ("slow", SLOW)):
        (d / f"{name}.yaml").write_text(body)
    return d


@pytest.fixture
def pg_store() -> Iterator[str]:
    """A fresh PostgreSQL schema per test (dropped afterwards)."""
    if problem := postgres_problem():
        pytest.skip(problem)
    import psycopg

    schema = f"baton_serve_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def service(model: FakeAnthropicServer, workflows: Path, store: str, tmp: Path, *extra: str,
            env: dict[str, str] | None = None) -> Serve:
    return Serve(workflows, store, model.url, tmp, list(extra), dict(env or {}))


def stored_runs(store: str) -> list[Any]:
    async def go() -> list[Any]:
        st = open_store(store)
        await st.open()
        try:
            return await st.list_runs(1000)
        finally:
            await st.close()

    return asyncio.run(go())


def stored_steps(store: str, run_id: str) -> list[Any]:
    async def go() -> list[Any]:
        st = open_store(store)
        await st.open()
        try:
            return await st.load_steps(run_id)
        finally:
            await st.close()

    return asyncio.run(go())


def cli(store: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "baton", *args, "--store", store], capture_output=True,
                          text=True, timeout=60)


# --- intake, inspection, bad input -----------------------------------------------------------


def test_api_run_is_stored_runs_and_shows_in_the_cli(model: FakeAnthropicServer, workflows: Path, pg_store: str,
                                                     tmp_path: Path) -> None:
    with serving(service(model, workflows, pg_store, tmp_path)) as (srv,):
        listed = srv.call("GET", "/v1/workflows").body["workflows"]
        assert {w["name"] for w in listed} == {"pipe3", "shaped", "slow"}
        assert next(w for w in listed if w["name"] == "shaped")["input_schema"]["required"] == ["topic"]

        r = srv.call("POST", "/v1/runs", {"workflow": "pipe3", "input": "tide pools"})
        assert r.status == 202 and r.body["status"] == "pending"
        run_id = r.body["run_id"]
        # Stored before the answer: the row is there whatever happens next.
        assert run_id in {x.run_id for x in stored_runs(pg_store)}
        done = srv.wait(run_id)
        assert done["output"] == "C:B:A:tide pools" and done["model_calls"] == 3
        assert [s["name"] for s in done["steps"] if s["kind"] == "agent"] == ["a", "b", "c"]
        assert set(done) >= {"run_id", "status", "output", "usage", "cost_usd", "model_calls", "duration_s", "error"}

        shown = cli(pg_store, "show", run_id, "--json")
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["output"] == "C:B:A:tide pools"
        assert json.loads(shown.stdout)["metadata"]["tenant"] == "tenant-a"

        listed_runs = srv.call("GET", "/v1/runs").body["runs"]
        assert [x["run_id"] for x in listed_runs] == [run_id]
        access = [json.loads(line) for line in srv.output().splitlines() if line.startswith("{")]
        assert any(a["run_id"] == run_id and a["tenant"] == "tenant-a" for a in access)


def test_bad_input_is_refused_with_a_json_error_and_nothing_stored(model: FakeAnthropicServer, workflows: Path,
                                                                   pg_store: str, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# operators' keys\nkey-c = tenant-c\n")
    with serving(service(model, workflows, pg_store, tmp_path, "--max-body", "4096", "--keys-file", str(keys))) \
            as (srv,):
        assert srv.call("GET", "/v1/runs", key="key-c").body == {"runs": []}  # from the keys file
        cases = [
            (srv.call("POST", "/v1/runs", raw=b'{"workflow": "pipe3",'), 400, "invalid_json"),
            (srv.call("POST", "/v1/runs", {"workflow": "nope", "input": "x"}), 404, "unknown_workflow"),
            (srv.call("POST", "/v1/runs", {"workflow": "shaped", "input": {"topic": ""}}), 422, "invalid_input"),
            (srv.call("POST", "/v1/runs", {"workflow": "shaped", "input": {"topic": "t", "depth": 0}}), 422,
             "invalid_input"),
            (srv.call("POST", "/v1/runs", {"workflow": "pipe3", "input": "x", "colour": 1}), 422, "invalid_request"),
            (srv.call("POST", "/v1/runs", {"workflow": "pipe3", "input": "x", "limits": {"budget_usd": "lots"}}),
             422, "invalid_request"),
            (srv.call("POST", "/v1/runs", {"workflow": "pipe3", "input": "x" * 5000}), 413, "body_too_large"),
            (srv.call("POST", "/v1/runs", {"workflow": "pipe3", "input": "x"}, key=None), 401, "unauthorized"),
            (srv.call("POST", "/v1/runs", {"workflow": "pipe3", "input": "x"}, key="wrong"), 401, "unauthorized"),
            (srv.call("GET", "/v1/runs/no-such-run"), 404, "run_not_found"),
            (srv.call("POST", "/v1/runs/no-such-run/cancel"), 404, "run_not_found"),
            (srv.call("GET", "/v1/workflows", key=None), 401, "unauthorized"),
        ]
        for reply, status, kind in cases:
            assert isinstance(reply.body, dict), reply
            assert (reply.status, reply.body["error"]["type"]) == (status, kind), reply
            assert reply.body["error"]["message"]
        assert "input.topic" in cases[2][0].body["error"]["message"]
        assert "input.depth" in cases[3][0].body["error"]["message"]
        assert stored_runs(pg_store) == []
        assert srv.call("GET", "/v1/health", key=None).body == {"status": "ok"}

        clash = subprocess.run([sys.executable, "-m", "baton", "serve", "--port", str(srv.port), "--workflows",
                                str(workflows), "--store", pg_store], capture_output=True, text=True, timeout=60,
                               env={**os.environ, "BATON_API_KEYS": "k=t"})
        assert clash.returncode == 2, clash.stderr
        assert "cannot listen on" in clash.stderr and "Traceback" not in clash.stderr


def test_idempotency_key_returns_the_same_run(model: FakeAnthropicServer, workflows: Path, pg_store: str,
                                              tmp_path: Path) -> None:
    with serving(service(model, workflows, pg_store, tmp_path)) as (srv,):
        body = {"workflow": "shaped", "input": {"topic": "retries"}}
        first = srv.call("POST", "/v1/runs", body, headers={"Idempotency-Key": "order-17"})
        again = srv.call("POST", "/v1/runs", body, headers={"Idempotency-Key": "order-17"})
        other = srv.call("POST", "/v1/runs", body, headers={"Idempotency-Key": "order-17"}, key="key-b")
        assert first.status == 202 and again.status == 200
        assert again.body["run_id"] == first.body["run_id"] and again.body["created"] is False
        assert other.status == 202 and other.body["run_id"] != first.body["run_id"]  # keys are per tenant
        changed = srv.call("POST", "/v1/runs", {"workflow": "shaped", "input": {"topic": "other"}},
                           headers={"Idempotency-Key": "order-17"})
        assert changed.status == 409 and "different input" in changed.body["error"]["message"]
        srv.wait(first.body["run_id"])
        assert len(stored_runs(pg_store)) == 2
        assert len(model.requests_matching(r"^Serve shaped\..*retries")) == 2


def test_another_tenants_run_is_404_on_every_route(model: FakeAnthropicServer, workflows: Path, pg_store: str,
                                                   tmp_path: Path) -> None:
    with serving(service(model, workflows, pg_store, tmp_path)) as (srv,):
        run_id = srv.submit("shaped", {"topic": "secret plans"})
        done = srv.wait(run_id)
        probes = [srv.call("GET", f"/v1/runs/{run_id}", key="key-b"),
                  srv.call("POST", f"/v1/runs/{run_id}/cancel", key="key-b"),
                  srv.call("POST", f"/v1/runs/{run_id}/approvals/0", {"approved": True}, key="key-b"),
                  srv.call("GET", f"/v1/runs/{run_id}/events", key="key-b")]
        for reply in probes:
            assert reply.status == 404 and reply.body["error"]["type"] == "run_not_found", reply
            assert "secret" not in json.dumps(reply.body)
        assert srv.call("GET", "/v1/runs", key="key-b").body["runs"] == []
        assert srv.wait(run_id)["output"] == done["output"]  # untouched


# --- SSE, cancel, approvals ----------------------------------------------------------------------


def test_sse_streams_the_run_and_resumes_after_last_event_id(model: FakeAnthropicServer, workflows: Path,
                                                             pg_store: str, tmp_path: Path) -> None:
    with serving(service(model, workflows, pg_store, tmp_path)) as (srv,):
        run_id = srv.submit("pipe3", "sse")
        events = srv.events(run_id)  # returns only once the run ended
        kinds = [k for _, k, _ in events]
        assert kinds[0] == "run.start" and kinds[-1] == "run.end"
        assert kinds.count("model.response") == 3
        assert events[-1][2]["status"] == "succeeded"
        # Agents' text as it was generated (issue 21): the last stage's deltas make up the run's output.
        deltas = [d for _, k, d in events if k == "text.delta"]
        last_key = deltas[-1]["key"] if deltas else None
        assert "".join(d["text"] for d in deltas if d["key"] == last_key) == srv.wait(run_id)["output"]
        ids = [int(i) for i, _, _ in events if i is not None]
        assert ids == list(range(1, len(events) + 1))
        cut = ids[len(ids) // 2]
        rest = srv.events(run_id, last_id=str(cut))
        assert [int(i) for i, _, _ in rest if i] == ids[cut:]
        assert srv.wait(run_id)["status"] == "succeeded"


def test_cancel_stops_a_running_run_and_a_finished_run_is_409(model: FakeAnthropicServer, workflows: Path,
                                                              pg_store: str, tmp_path: Path) -> None:
    with serving(service(model, workflows, pg_store, tmp_path)) as (srv,):
        run_id = srv.submit("slow", "cancel me")
        poll(lambda: model.requests_matching(r"^Serve slow\..*cancel me"), what="the slow call")
        r = srv.call("POST", f"/v1/runs/{run_id}/cancel")
        assert r.status == 202 and r.body["status"] == "cancelled", r
        assert srv.wait(run_id, ("cancelled",))["status"] == "cancelled"
        again = srv.call("POST", f"/v1/runs/{run_id}/cancel")
        assert again.status == 409 and again.body["error"]["type"] == "conflict"

        finished = srv.submit("shaped", {"topic": "done"})
        srv.wait(finished)
        late = srv.call("POST", f"/v1/runs/{finished}/cancel")
        assert late.status == 409 and "succeeded" in late.body["error"]["message"]
        not_waiting = srv.call("POST", f"/v1/runs/{finished}/approvals/0", {"approved": True})
        assert not_waiting.status == 409 and not_waiting.body["error"]["type"] == "conflict"
        assert srv.wait(finished)["status"] == "succeeded"


# --- crash, restart, scale-out -----------------------------------------------------------------


def _ident(text_: str) -> tuple[str, str] | None:
    """A pipe3 request's identity: (stage, the run's topic): each is sent once per run."""
    m = re.match(r"Serve stage ([ABC])\.", text_)
    topics = re.findall(r"\bk\d+\b", text_)
    return (m.group(1), topics[-1]) if m and topics else None


def _settle(model: FakeAnthropicServer, quiet_s: float = 0.5) -> int:
    """Let the fake server log what a killed client already sent; returns the log's length."""
    seen, since = -1, time.monotonic()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        n = len(model.requests)
        if n != seen:
            seen, since = n, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
        time.sleep(0.05)
    return seen


def test_kill9_mid_run_then_a_new_service_finishes_every_run_without_resending(
        model: FakeAnthropicServer, workflows: Path, pg_store: str, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:4]
    topics = {f"k{n}{tag}": None for n in range(6)}
    first = service(model, workflows, pg_store, tmp_path, "--max-runs", "3")
    with serving(first):
        ids = {first.submit("pipe3", t.replace(tag, "") + " " + tag): t for t in topics}
        poll(lambda: journaled_calls(pg_store, list(ids)) >= 2, what="some calls journaled")
        assert first.proc is not None
        first.proc.kill()  # SIGKILL: no checkpoint, no goodbye
        first.proc.wait(timeout=30)
    killed_at = _settle(model)
    durable = set()
    for run_id in ids:
        topic = stored_runs_by_id(pg_store)[run_id].input.split()[0]
        for step in stored_steps(pg_store, run_id):
            if step.kind == "model" and step.status == "completed":
                durable.add((step.name.upper(), topic))
    assert durable, "the kill came before any call was journaled; the test proves nothing"
    assert any(r.status in ("running", "pending") for r in stored_runs(pg_store))

    second = service(model, workflows, pg_store, tmp_path, "--max-runs", "3")
    with serving(second):
        for run_id in ids:
            done = second.wait(run_id)
            topic = done["input"].split()[0]
            assert done["output"].startswith(f"C:B:A:{topic}"), done["output"]
            assert done["model_calls"] == 3
    after = Counter(i for r in model.requests[killed_at:] if (i := _ident(r.text)))
    resent = sorted(i for i in durable if after[i])
    assert not resent, f"completed model calls sent again after the restart: {resent}"
    assert all(c == 1 for c in after.values()), after


def journaled_calls(store: str, run_ids: list[str]) -> int:
    return sum(1 for run_id in run_ids for s in stored_steps(store, run_id)
               if s.kind == "model" and s.status == "completed")


def stored_runs_by_id(store: str) -> dict[str, Any]:
    return {r.run_id: r for r in stored_runs(store)}


def test_two_services_on_one_store_run_each_run_once_and_take_over_from_a_dead_one(
        model: FakeAnthropicServer, workflows: Path, pg_store: str, tmp_path: Path) -> None:
    start = len(model.requests)
    tag = uuid.uuid4().hex[:4]
    one = service(model, workflows, pg_store, tmp_path, "--max-runs", "2")
    two = service(model, workflows, pg_store, tmp_path, "--max-runs", "2")
    with serving(one, two):
        ids = [(one if n % 2 else two).submit("pipe3", f"k{n} {tag}") for n in range(8)]
        for run_id in ids:
            assert one.wait(run_id)["status"] == "succeeded"  # either service answers for any run
            assert two.call("GET", f"/v1/runs/{run_id}").body["status"] == "succeeded"
        sent = Counter(i for r in model.requests[start:] if (i := _ident(r.text)))
        assert len(sent) == 24 and set(sent.values()) == {1}, sent

        # Now one of them dies mid-run: the other's recovery sweep finishes its runs, unasked.
        later = [one.submit("pipe3", f"k{n} {tag}") for n in range(10, 14)]
        poll(lambda: journaled_calls(pg_store, later) >= 1, what="a call of the later runs journaled")
        assert one.proc is not None
        one.proc.kill()
        one.proc.wait(timeout=30)
        killed_at = _settle(model)
        durable = {(s.name.upper(), f"k{n}") for n, run_id in zip(range(10, 14), later, strict=True)
                   for s in stored_steps(pg_store, run_id) if s.kind == "model" and s.status == "completed"}
        for run_id in later:
            assert two.wait(run_id)["model_calls"] == 3
    after = Counter(i for r in model.requests[killed_at:] if (i := _ident(r.text)))
    assert not [i for i in durable if after[i]], (durable, after)
    assert all(c == 1 for c in after.values()), after


def test_sigterm_checkpoints_running_runs_and_the_next_service_resumes_them(
        model: FakeAnthropicServer, workflows: Path, pg_store: str, tmp_path: Path) -> None:
    first = service(model, workflows, pg_store, tmp_path)
    with serving(first):
        run_id = first.submit("slow", "graceful")
        poll(lambda: model.requests_matching(r"^Serve slow\..*graceful"), what="the slow call")
        assert first.stop(signal.SIGTERM) == 0, first.output()
    assert stored_runs_by_id(pg_store)[run_id].status == "interrupted"
    with serving(service(model, workflows, pg_store, tmp_path)) as (second,):
        done = second.wait(run_id)
        assert done["output"] == "slow: graceful"


def test_max_runs_queues_in_order_and_tenant_limit_answers_429(model: FakeAnthropicServer, workflows: Path,
                                                               pg_store: str, tmp_path: Path) -> None:
    limits = tmp_path / "limits.json"
    limits.write_text(json.dumps({"tenant-b": {"max_active_runs": 1, "usd_per_day": 0.000001}}))
    srv = service(model, workflows, pg_store, tmp_path, "--max-runs", "1", "--tenant-limits", str(limits))
    with serving(srv):
        replies = [srv.call("POST", "/v1/runs", {"workflow": "slow", "input": f"line {n}"}) for n in range(3)]
        assert [r.status for r in replies] == [202, 202, 202]
        assert [r.body["queue_position"] for r in replies[1:]] == [1, 2]
        third = srv.call("GET", f"/v1/runs/{replies[2].body['run_id']}").body
        assert third["status"] == "pending" and third["queue_position"] >= 1

        b_first = srv.call("POST", "/v1/runs", {"workflow": "shaped", "input": {"topic": "b"}}, key="key-b")
        b_second = srv.call("POST", "/v1/runs", {"workflow": "shaped", "input": {"topic": "b2"}}, key="key-b")
        assert b_first.status == 202
        assert b_second.status == 429 and b_second.body["error"]["type"] == "too_many_runs"
        assert int(b_second.headers["retry-after"]) > 0

        started = []
        for r in replies:
            run = srv.wait(r.body["run_id"])
            started.append(next(t["at"] for t in run["transitions"] if t["status"] == "running"))
        assert started == sorted(started)  # first come, first served
        assert srv.wait(b_first.body["run_id"], key="key-b")["cost_usd"] > 0.000001
        spent = srv.call("POST", "/v1/runs", {"workflow": "shaped", "input": {"topic": "b3"}}, key="key-b")
        assert spent.status == 429 and spent.body["error"]["type"] == "daily_budget_spent", spent
        assert 0 < int(spent.headers["retry-after"]) <= 86401
        assert srv.call("POST", "/v1/runs", {"workflow": "shaped", "input": {"topic": "a"}}).status == 202


# --- webhooks and the queue ----------------------------------------------------------------------


def test_webhook_needs_a_fresh_valid_signature(model: FakeAnthropicServer, workflows: Path, pg_store: str,
                                               tmp_path: Path) -> None:
    env = {"BATON_WEBHOOK_SECRET_SHAPED": "s3cret", "BATON_WEBHOOK_TENANT_SHAPED": "tenant-b"}
    with serving(service(model, workflows, pg_store, tmp_path, env=env)) as (srv,):
        body = json.dumps({"topic": "pushed"}).encode()
        headers = signed("s3cret", body)
        ok = srv.call("POST", "/v1/hooks/shaped", raw=body, headers=headers, key=None)
        assert ok.status == 202, ok
        run_id = ok.body["run_id"]
        replay = srv.call("POST", "/v1/hooks/shaped", raw=body, headers=headers, key=None)
        assert replay.status == 200 and replay.body["run_id"] == run_id  # the same delivery: the same run
        refused = [
            srv.call("POST", "/v1/hooks/shaped", raw=body, headers=signed("wrong", body), key=None),
            srv.call("POST", "/v1/hooks/shaped", raw=body, headers=signed("s3cret", body, int(time.time()) - 3600),
                     key=None),
            srv.call("POST", "/v1/hooks/shaped", raw=body, key=None),
            srv.call("POST", "/v1/hooks/shaped", raw=body + b" ", headers=signed("s3cret", body), key=None),
            srv.call("POST", "/v1/hooks/pipe3", raw=body, headers=signed("s3cret", body), key=None),  # no secret
            srv.call("POST", "/v1/hooks/nope", raw=body, headers=signed("s3cret", body), key=None),
        ]
        assert [r.status for r in refused] == [401] * 6, refused
        assert {r.body["error"]["type"] for r in refused} == {"bad_signature"}
        bad_json = srv.call("POST", "/v1/hooks/shaped", raw=b"{nope", headers=signed("s3cret", b"{nope"), key=None)
        assert bad_json.status == 400
        bad_input = json.dumps({"topic": 7}).encode()
        invalid = srv.call("POST", "/v1/hooks/shaped", raw=bad_input, headers=signed("s3cret", bad_input), key=None)
        assert invalid.status == 422 and "input.topic" in invalid.body["error"]["message"]

        done = srv.wait(run_id, key="key-b")
        assert done["output"].startswith("wrote:") and done["source"] == "webhook"
        assert srv.call("GET", f"/v1/runs/{run_id}").status == 404  # tenant-a cannot see it
    assert [r.run_id for r in stored_runs(pg_store)] == [run_id]


def test_queue_acks_after_storing_claims_a_dead_consumers_messages_and_dead_letters(
        model: FakeAnthropicServer, workflows: Path, pg_store: str, tmp_path: Path) -> None:
    if problem := redis_problem():
        pytest.skip(problem)
    import redis

    stream, group = f"baton:test:{uuid.uuid4().hex[:8]}", "baton"
    r = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        r.xgroup_create(stream, group, id="0", mkstream=True)
        orphan = r.xadd(stream, {"body": json.dumps({"workflow": "shaped", "input": {"topic": "orphan"},
                                                     "tenant": "tenant-b"})})
        r.xreadgroup(group, "dead-consumer", {stream: ">"}, count=1)  # read, never acknowledged
        assert r.xpending(stream, group)["pending"] == 1
        base = REDIS_URL.split("?")[0]
        url = f"{base}?stream={stream}&group={group}&claim_idle_ms=300"
        with serving(service(model, workflows, pg_store, tmp_path, "--queue", url)) as (srv,):
            good = r.xadd(stream, {"body": json.dumps({"workflow": "shaped", "input": {"topic": "queued"},
                                                       "tenant": "tenant-b"})})
            flat = r.xadd(stream, {"workflow": "pipe3", "input": "k9 flat", "tenant": "tenant-a"})
            r.xadd(stream, {"body": "{not json"})
            r.xadd(stream, {"body": json.dumps({"workflow": "missing", "input": "x"})})
            r.xadd(stream, {"body": json.dumps({"workflow": "shaped", "input": {"topic": ""}})})
            dead = poll(lambda: (d := r.xrange(f"{stream}:dead")) and len(d) >= 3 and d, what="dead letters")
            reasons = " | ".join(fields["reason"] for _, fields in dead)
            assert "not JSON" in reasons and "unknown workflow 'missing'" in reasons and "input.topic" in reasons
            poll(lambda: r.xpending(stream, group)["pending"] == 0, what="every message acknowledged")
            by_msg = {x.metadata.get("queue_message"): x for x in stored_runs(pg_store)}
            assert set(by_msg) == {orphan, good, flat}
            for msg_id, key in ((orphan, "key-b"), (good, "key-b"), (flat, "key-a")):
                assert srv.wait(by_msg[msg_id].run_id, key=key)["status"] == "succeeded"
            assert "baton_queue_messages_total" in srv.call("GET", "/metrics", key=None).body
    finally:
        r.delete(stream, f"{stream}:dead")
        r.close()


SENDER = """\
version: 1
name: sender
defaults: {model: claude-haiku-4-5, max_tokens: 64, temperature: 0}
agents:
  s: {system: "Serve sender. You send the notice.", tools: [send]}
tools:
  send: {python: "serve_effects:send", idempotent: false}
workflow: {pattern: agent, agent: s}
"""

EFFECTS = '''\
"""A non-idempotent tool: the first call hangs (the test kills the service meanwhile)."""
import os
import time
from pathlib import Path


def send(item: str) -> str:
    ledger = Path(os.environ["SERVE_LEDGER"])
    first = not ledger.exists()
    with ledger.open("a") as f:
        f.write(item + "\\n")
    if first:
        time.sleep(120)
    return f"sent {item}"
'''


def test_tool_in_flight_at_kill9_waits_for_an_approval_over_http_then_continues(
        model: FakeAnthropicServer, pg_store: str, tmp_path: Path) -> None:
    """A non-idempotent tool was running when the service died: the next service does not
    re-run it blindly; the run waits, and an approval over the API continues it."""
    wf = tmp_path / "wf"
    wf.mkdir()
    (wf / "sender.yaml").write_text(SENDER)
    (wf / "serve_effects.py").write_text(EFFECTS)
    ledger = tmp_path / "ledger.txt"

    def reply(req: ModelRequest) -> Reply:
        results = [b for b in req.messages[-1].content if isinstance(b, ToolResultBlock)]
        return text(f"done: {results[0].content}") if results else tool_call("send", {"item": "notice-7"})

    rule = model.add_rule(r"^Serve sender\.", reply=reply)
    env = {"SERVE_LEDGER": str(ledger)}
    try:
        first = service(model, wf, pg_store, tmp_path, env=env)
        with serving(first):
            run_id = first.submit("sender", "go")
            poll(ledger.exists, what="the tool to start")
            assert first.proc is not None
            first.proc.kill()
            first.proc.wait(timeout=30)
        with serving(service(model, wf, pg_store, tmp_path, env=env)) as (second,):
            paused = second.wait(run_id, ("awaiting_approval",))
            assert len(paused["awaiting"]) == 1 and paused["awaiting"][0].endswith("#decision"), paused
            step = urllib.parse.quote(paused["awaiting"][0])  # '#' would start a URL fragment
            assert ledger.read_text().splitlines() == ["notice-7"]  # not re-run blindly
            wrong = second.call("POST", f"/v1/runs/{run_id}/approvals/0", {"approved": True})
            assert wrong.status == 409
            ok = second.call("POST", f"/v1/runs/{run_id}/approvals/{step}", {"approved": True, "note": "resend"})
            assert ok.status == 202, ok
            done = second.wait(run_id)
            assert done["output"] == "done: sent notice-7"
            assert ledger.read_text().splitlines() == ["notice-7", "notice-7"]  # re-run once, as approved
            again = second.call("POST", f"/v1/runs/{run_id}/approvals/{step}", {"approved": True})
            assert again.status == 409
    finally:
        with model.script._lock:
            model.rules.remove(rule)
