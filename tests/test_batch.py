"""Batch mode end to end: the fake server's Message Batches endpoints, the adapter, the call path.

A fan-out with ``batch: true`` goes out as one batch at half price; the batch id is
journaled before the run waits, so a detached or crashed run is resumed by collecting
the batch, never by submitting it again; per-request failures are retried as normal
calls (errored, expired) or reported per branch (invalid, canceled).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import baton
from _events import EventLog
from baton.errors import BatchRequestFailed, ProviderError
from baton.messages import Usage
from baton.models import anthropic_batch as api
from baton.models.anthropic import AnthropicModel, usage_from_wire
from baton.models.pricing import cost_of
from baton.patterns.fan_out import FanOut
from baton.runtime.batch import BatchOptions, custom_id
from baton.runtime.breaker import BreakerRegistry
from baton.runtime.engine import Engine
from baton.runtime.ratelimit import RateGovernor
from baton.runtime.retry import RetryPolicy
from baton.stores.memory import MemoryStore
from baton.stores.sqlite import SQLiteStore
from baton.testing import FakeAnthropicServer, Fault, Rule, ScriptedModel, text

pytestmark = pytest.mark.timeout(60)

SONNET = "claude-sonnet-4-6"
QUICK = RetryPolicy(max_attempts=3, initial_delay_s=0.01, max_delay_s=0.02)
FAST_POLL = BatchOptions(poll_s=0.02, max_poll_s=0.05)
ROOT = Path(__file__).resolve().parents[1]

worker = baton.Agent("worker", system="You summarise one item.", model=SONNET, max_tokens=64, batch=True)


def engine(model: Any, *, store: Any = None, batch: BatchOptions = FAST_POLL, **options: Any) -> Engine:
    return Engine(store=store or MemoryStore(), model=model, governor=RateGovernor(), breakers=BreakerRegistry(),
                  retry=QUICK, batch=batch, **options)


def batch_billed(server: FakeAnthropicServer) -> tuple[Usage, float]:
    """Usage and batch-price cost of every ``succeeded`` request in the server's batches."""
    total, usd = Usage(), 0.0
    for b in server.batches.created:
        for outcome in b.outcomes.values():
            if outcome["type"] == "succeeded":
                u = usage_from_wire(outcome["message"]["usage"])
                total.add(u)
                usd += cost_of(outcome["message"]["model"], u, batch=True) or 0.0
    return total, usd


ITEMS = "\n".join(f"item {i}" for i in range(1, 6))


# --- the fake server's endpoints and the adapter ---------------------------------------------


async def test_fake_server_batch_lifecycle_and_validation(server: FakeAnthropicServer, model: AnthropicModel) -> None:
    server.batches.processing_s = 100.0
    server.add_rule(reply=text("ok"))
    req = baton.messages.ModelRequest(model=SONNET, messages=[baton.messages.Message.user("hi")], max_tokens=16)
    with pytest.raises(ProviderError, match="custom_id 'a' is used twice"):
        await api.create_batch(model, [("a", req), ("a", req)])
    with pytest.raises(ProviderError, match="custom_id"):
        await api.create_batch(model, [("not/valid", req)])
    status = await api.create_batch(model, [("a", req), ("b", req)])
    assert status.processing_status == "in_progress" and status.counts["processing"] == 2
    with pytest.raises(ProviderError, match="still in_progress"):
        await api.batch_results(model, status.id)
    server.advance_clock(60)  # half the processing time: the first request is done
    half = await api.retrieve_batch(model, status.id)
    assert (half.counts["succeeded"], half.counts["processing"]) == (1, 1)
    cancelled = await api.cancel_batch(model, status.id)
    assert cancelled.ended and cancelled.counts == {"processing": 0, "succeeded": 1, "errored": 0, "canceled": 1,
                                                    "expired": 0}
    results = await api.batch_results(model, status.id)
    assert results["a"].response is not None and results["a"].response.text == "ok"
    assert results["a"].response.usage.output_tokens > 0
    assert results["b"].kind == "canceled" and results["b"].error is not None
    assert not results["b"].error.retryable  # cancelled on purpose: not sent again
    with pytest.raises(ProviderError) as missing:
        await api.retrieve_batch(model, "msgbatch_nope")
    assert missing.value.status == 404
    with pytest.raises(ProviderError, match="not a message batch id"):
        await api.retrieve_batch(model, "../../v1/messages")  # an id from a journal never reshapes the URL
    assert [c.op for c in server.batches.log].count("create") == 3
    assert not server.requests  # nothing went through the Messages endpoint


async def test_batch_endpoints_need_a_key(server: FakeAnthropicServer) -> None:
    async with aiohttp.ClientSession() as http, http.post(f"{server.url}/v1/messages/batches",
                                                         json={"requests": []}) as resp:
        assert resp.status == 401
    assert not server.batches.created


def test_errored_results_map_to_retry_verdicts() -> None:
    def outcome(error_type: str) -> api.BatchOutcome:
        return api.outcome_from_wire("c1", {"type": "errored", "error": {
            "type": "error", "error": {"type": error_type, "message": "boom"}}}, "msgbatch_1")

    assert outcome("overloaded_error").error is not None and outcome("overloaded_error").error.retryable
    invalid = outcome("invalid_request_error").error
    assert invalid is not None and not invalid.retryable and invalid.status == 400
    expired = api.outcome_from_wire("c2", {"type": "expired"}, "msgbatch_1").error
    assert isinstance(expired, BatchRequestFailed) and expired.retryable


# --- the runtime: one batch, batch prices, progress ---------------------------------------------


async def test_fan_out_goes_out_as_one_batch_at_half_price(server: FakeAnthropicServer,
                                                           model: AnthropicModel) -> None:
    server.batches.processing_s = 0.3
    server.add_rule(reply=text("summary"))
    sink = EventLog()
    result = await engine(model, sinks=[sink]).run(FanOut(each=worker), ITEMS)
    assert result.status == "succeeded", result.error
    assert result.output == ["summary"] * 5
    creates = server.batches.calls("create")
    assert len(creates) == 1 and creates[0].requests == 5  # the five branches, one batch
    assert not server.requests  # and no Messages call
    usage, usd = batch_billed(server)
    assert result.usage.to_dict() == usage.to_dict()
    assert result.cost_usd == pytest.approx(usd)
    full = cost_of(SONNET, usage)
    assert full is not None and result.cost_usd == pytest.approx(full / 2)
    assert result.model_calls == 5
    progress = sink.of("batch.progress")
    assert progress and progress[-1]["status"] == "ended" and progress[-1]["counts"]["succeeded"] == 5
    assert sink.of("batch.submitted")[0]["requests"] == 5
    assert all(r.get("batch") for r in sink.of("model.request"))


async def test_agents_without_batch_and_adapters_without_batches_call_normally(server: FakeAnthropicServer,
                                                                              model: AnthropicModel) -> None:
    server.add_rule(reply=text("now"))
    plain = worker.with_(batch=False)
    result = await engine(model).run(FanOut(each=plain), "a\nb")
    assert result.output == ["now", "now"] and len(server.requests) == 2 and not server.batches.created
    scripted = ScriptedModel([Rule(reply=text("scripted"))])  # no Message Batches: batch mode sends normally
    result = await engine(scripted).run(FanOut(each=worker), "a\nb")
    assert result.output == ["scripted", "scripted"]


# --- durability: the batch id is journaled, a resume collects it --------------------------------


async def test_detached_run_is_resumed_by_collecting_its_batch(server: FakeAnthropicServer, model: AnthropicModel,
                                                               tmp_path: Path) -> None:
    server.batches.processing_s = 3600.0
    server.add_rule(reply=text("collected"))
    url = f"sqlite:///{tmp_path}/runs.db"
    detached = await engine(model, store=SQLiteStore(url), batch=BatchOptions(detach=True)).run(
        FanOut(each=worker), ITEMS, run_id="batchrun1")
    assert detached.status == "awaiting_batch" and detached.error is not None
    assert detached.error["type"] == "BatchPending" and "baton resume batchrun1" in detached.error["message"]
    (submitted,) = server.batches.created
    store = SQLiteStore(url)
    await store.open()
    steps = {s.key: s for s in await store.load_steps("batchrun1") if s.kind == "model"}
    await store.close()
    assert len(steps) == 5 and {s.status for s in steps.values()} == {"started"}
    assert {s.meta["batch"]["id"] for s in steps.values()} == {submitted.id}
    assert {s.meta["batch"]["custom_id"] for s in steps.values()} == set(submitted.params)
    assert all(s.meta["batch"]["custom_id"] == custom_id(k) for k, s in steps.items())

    # Still processing: a detached resume polls once and stops again, submitting nothing.
    again = await engine(model, store=SQLiteStore(url), batch=BatchOptions(detach=True)).resume("batchrun1", FanOut(each=worker))
    assert again.status == "awaiting_batch"
    server.advance_clock(3600)
    # A new engine (as after a crash or in another process) finds the batch in the journal.
    done = await engine(model, store=SQLiteStore(url)).resume("batchrun1", FanOut(each=worker))
    assert done.status == "succeeded", done.error
    assert done.output == ["collected"] * 5
    assert len(server.batches.calls("create")) == 1  # never submitted twice
    assert len(server.batches.calls("results")) == 1 and not server.requests
    _, usd = batch_billed(server)
    assert done.cost_usd == pytest.approx(usd) and done.model_calls == 5


async def test_interrupted_wait_resumes_without_resubmitting(server: FakeAnthropicServer, model: AnthropicModel,
                                                            tmp_path: Path) -> None:
    """A run whose wall-time budget ends while it waits keeps the batch; resume collects it."""
    server.batches.processing_s = 3600.0
    server.add_rule(reply=text("late"))
    url = f"sqlite:///{tmp_path}/runs.db"
    limits = baton.Limits(timeout_s=0.5)
    stopped = await engine(model, store=SQLiteStore(url)).run(FanOut(each=worker), "x\ny", run_id="waited",
                                                               limits=limits)
    assert stopped.status == "budget_exceeded"
    assert server.batches.calls("retrieve")  # it was waiting on the batch when the budget ended
    server.advance_clock(3600)
    done = await engine(model, store=SQLiteStore(url)).resume("waited", FanOut(each=worker), timeout_s=30)
    assert done.status == "succeeded" and done.output == ["late", "late"]
    assert len(server.batches.calls("create")) == 1


async def test_a_batch_accepted_as_the_run_stops_is_journaled(server: FakeAnthropicServer, model: AnthropicModel,
                                                                tmp_path: Path) -> None:
    """The run's wall time ends while the batch is being created: the engine lets the submission
    journal its id before it records the run, so the resume collects it instead of submitting again."""
    server.batches.processing_s = 3600.0
    server.batches.create_latency_s = 0.5
    server.add_rule(reply=text("kept"))
    url = f"sqlite:///{tmp_path}/runs.db"
    stopped = await engine(model, store=SQLiteStore(url)).run(FanOut(each=worker), "x\ny", run_id="racing",
                                                               limits=baton.Limits(timeout_s=0.1))
    assert stopped.status == "budget_exceeded" and len(server.batches.calls("create")) == 1
    server.advance_clock(3600)
    done = await engine(model, store=SQLiteStore(url)).resume("racing", FanOut(each=worker), timeout_s=30)
    assert done.status == "succeeded" and done.output == ["kept", "kept"]
    assert len(server.batches.calls("create")) == 1


# --- per-request failures and cancellation ------------------------------------------------------


async def test_per_request_errors_retry_as_normal_calls_or_fail_their_branch(server: FakeAnthropicServer,
                                                                            model: AnthropicModel) -> None:
    server.batches.processing_s = 0.1
    server.add_rule(r"item 2", fault=Fault.overloaded(), times=1)  # errored in the batch: retried
    server.add_rule(r"item 4", fault=Fault.status(400, message="prompt is too long"))  # reported, not retried
    server.add_rule(reply=text("fine"))
    sink = EventLog()
    result = await engine(model, sinks=[sink]).run(FanOut(each=worker, policy="best_effort"), ITEMS)
    assert result.status == "succeeded", result.error
    assert result.output == ["fine"] * 4
    (done,) = sink.of("fan_out.done")
    assert len(done["failed"]) == 1 and "item 4" in done["failed"][0] and "prompt is too long" in done["failed"][0]
    retried = [r for r in server.requests if r.status == 200]
    assert len(retried) == 1 and "item 2" in retried[0].text  # the one retry went out as a normal call
    assert len(server.batches.calls("create")) == 1
    usage, batch_usd = batch_billed(server)
    normal = usage_from_wire(retried[0].usage)
    full = cost_of(SONNET, normal)
    assert full is not None and result.cost_usd == pytest.approx(batch_usd + full)


async def test_expired_requests_are_sent_again_as_normal_calls(server: FakeAnthropicServer, model: AnthropicModel,
                                                              tmp_path: Path) -> None:
    server.batches.processing_s = 100 * 3600.0  # longer than the 24 h a batch may take
    server.add_rule(reply=text("fresh"))
    url = f"sqlite:///{tmp_path}/runs.db"
    first = await engine(model, store=SQLiteStore(url), batch=BatchOptions(detach=True)).run(
        FanOut(each=worker), "a\nb", run_id="expiring")
    assert first.status == "awaiting_batch"
    server.advance_clock(25 * 3600)  # past the 24 h expiry
    done = await engine(model, store=SQLiteStore(url)).resume("expiring", FanOut(each=worker))
    assert done.status == "succeeded" and done.output == ["fresh", "fresh"]
    assert len([r for r in server.requests if r.status == 200]) == 2
    assert len(server.batches.calls("create")) == 1
    full = sum(cost_of(SONNET, usage_from_wire(r.usage)) or 0.0 for r in server.requests)
    assert done.cost_usd == pytest.approx(full)  # expired requests are not billed; the normal calls are


async def test_a_cancelled_batch_fails_its_branches_and_costs_nothing(server: FakeAnthropicServer,
                                                                      model: AnthropicModel, tmp_path: Path) -> None:
    server.batches.processing_s = 3600.0
    server.add_rule(reply=text("never"))
    url = f"sqlite:///{tmp_path}/runs.db"
    first = await engine(model, store=SQLiteStore(url), batch=BatchOptions(detach=True)).run(
        FanOut(each=worker), "a\nb\nc", run_id="cancelme")
    assert first.status == "awaiting_batch" and first.error is not None
    await api.cancel_batch(model, first.error["batch_id"])
    done = await engine(model, store=SQLiteStore(url)).resume("cancelme", FanOut(each=worker))
    assert done.status == "failed" and done.error is not None
    assert "was canceled" in done.error["message"]
    assert not server.requests  # a cancelled request is not sent again
    assert done.cost_usd == 0.0 and done.model_calls == 0


# --- the CLI and YAML ---------------------------------------------------------------------------


@pytest.fixture
def threaded_server() -> Any:
    srv = FakeAnthropicServer(api_key="test-key", batch_processing_s=3600.0)
    srv.add_rule(reply=text("from the batch"))
    srv.start_in_thread()
    yield srv
    srv.stop_thread()


def test_cli_detach_then_resume(threaded_server: FakeAnthropicServer, tmp_path: Path) -> None:
    wf = tmp_path / "wf.yaml"
    wf.write_text(f"""version: 1
name: batch-summaries
defaults: {{model: {SONNET}, max_tokens: 64, batch: true}}
agents:
  summariser: {{system: "Summarise the item."}}
workflow:
  pattern: fan_out
  each: {{agent: summariser, over: lines}}
""")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "BATON_"))}
    env.update({"ANTHROPIC_BASE_URL": threaded_server.url, "ANTHROPIC_API_KEY": "test-key",
                "BATON_STORE": f"sqlite:///{tmp_path}/cli.db", "PYTHONPATH": str(ROOT / "src")})

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "baton", *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=120)

    first = cli("run", str(wf), "--input", "one\ntwo\nthree", "--run-id", "clibatch", "--detach", "--json",
                "--provider", "anthropic")
    assert first.returncode == 4, first.stderr
    out = json.loads(first.stdout)
    assert out["status"] == "awaiting_batch" and out["error"]["type"] == "BatchPending"
    assert "agent summariser paused" in first.stderr and "failed" not in first.stderr
    assert len(threaded_server.batches.calls("create")) == 1
    threaded_server.advance_clock(3600)
    second = cli("resume", "clibatch", "--json", "--provider", "anthropic")
    assert second.returncode == 0, second.stderr
    done = json.loads(second.stdout)
    assert done["status"] == "succeeded" and done["output"] == ["from the batch"] * 3
    assert len(threaded_server.batches.calls("create")) == 1
    assert "batch" in second.stderr and "3/3 done" in second.stderr  # progress on stderr
    assert not threaded_server.requests


def test_a_killed_run_is_recovered_by_collecting_its_batch(threaded_server: FakeAnthropicServer,
                                                            tmp_path: Path) -> None:
    """kill -9 while the run waits on its batch: the resume collects it, nothing is submitted again."""
    wf = tmp_path / "wf.yaml"
    wf.write_text(f"""version: 1
name: batch-kill
defaults: {{model: {SONNET}, max_tokens: 64, batch: true}}
agents:
  summariser: {{system: "Summarise the item."}}
workflow:
  pattern: fan_out
  each: {{agent: summariser, over: lines}}
""")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "BATON_"))}
    env.update({"ANTHROPIC_BASE_URL": threaded_server.url, "ANTHROPIC_API_KEY": "test-key",
                "BATON_STORE": f"sqlite:///{tmp_path}/cli.db", "PYTHONPATH": str(ROOT / "src"),
                "PYTHONUNBUFFERED": "1"})
    proc = subprocess.Popen([sys.executable, "-m", "baton", "run", str(wf), "--input", "one\ntwo",
                             "--run-id", "killed1", "--provider", "anthropic"], cwd=tmp_path, env=env,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # the progress line comes after the batch id is journaled
            if "submitted: 2 requests" in line:
                break
        else:
            pytest.fail("the run never reported its batch")
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(threaded_server.batches.calls("create")) == 1
    threaded_server.advance_clock(3600)
    done = subprocess.run([sys.executable, "-m", "baton", "resume", "killed1", "--json", "--provider", "anthropic"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["output"] == ["from the batch"] * 2
    assert len(threaded_server.batches.calls("create")) == 1 and not threaded_server.requests


def test_yaml_batch_key_is_checked(tmp_path: Path) -> None:
    from baton.errors import WorkflowError
    from baton.spec import load_workflow_file

    good = tmp_path / "good.yaml"
    good.write_text(f"""version: 1
name: b
defaults: {{model: {SONNET}, batch: true}}
agents: {{a: {{system: s}}, b: {{system: s, batch: false}}}}
workflow: {{pattern: fan_out, agents: [a, b]}}
""")
    wf = load_workflow_file(str(good))
    agents = wf.agents
    assert agents["a"].batch is True and agents["b"].batch is False
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("batch: true", "batch: sometimes"))
    with pytest.raises(WorkflowError, match="batch"):
        load_workflow_file(str(bad))


async def test_cancelling_a_detached_run_cancels_its_batch(server: FakeAnthropicServer, model: AnthropicModel,
                                                           tmp_path: Path) -> None:
    server.batches.processing_s = 3600.0
    server.add_rule(reply=text("unwanted"))
    url = f"sqlite:///{tmp_path}/runs.db"
    first = await engine(model, store=SQLiteStore(url), batch=BatchOptions(detach=True)).run(
        FanOut(each=worker), "a\nb", run_id="dropme")
    assert first.status == "awaiting_batch"
    record = await engine(model, store=SQLiteStore(url)).cancel("dropme")
    assert record.status == "cancelled"
    (cancel,) = server.batches.calls("cancel")
    assert first.error is not None and cancel.batch_id == first.error["batch_id"]
    status = await api.retrieve_batch(model, cancel.batch_id or "")
    assert status.ended and status.counts["canceled"] == 2  # nobody pays for what nobody will collect


async def test_a_fan_out_with_batch_true_batches_plain_agents(server: FakeAnthropicServer, model: AnthropicModel,
                                                              tmp_path: Path) -> None:
    from baton.spec import load_workflow_file

    server.batches.processing_s = 0.1
    server.add_rule(reply=text("batched"))
    wf = tmp_path / "wf.yaml"
    wf.write_text(f"""version: 1
name: fan
agents: {{a: {{model: {SONNET}, system: one}}, b: {{model: {SONNET}, system: two}}}}
workflow: {{pattern: fan_out, agents: [a, b], batch: true}}
""")
    workflow = load_workflow_file(str(wf))
    assert not workflow.agents["a"].batch  # the agent itself is unchanged; the fan-out batches its calls
    result = await engine(model).run(workflow, "go")
    assert result.output == ["batched", "batched"]
    assert [c.requests for c in server.batches.calls("create")] == [2] and not server.requests


async def test_baton_run_takes_batch_options(server: FakeAnthropicServer, model: AnthropicModel) -> None:
    server.batches.processing_s = 3600.0
    server.add_rule(reply=text("later"))
    result = await baton.run(FanOut(each=worker), "a", model=model, store=MemoryStore(),
                             batch=BatchOptions(detach=True))
    assert result.status == "awaiting_batch" and len(server.batches.calls("create")) == 1
    with pytest.raises(baton.errors.UsageError, match="max_requests"):
        BatchOptions(max_requests=0)
    with pytest.raises(baton.errors.UsageError, match="poll_s"):
        BatchOptions(poll_s=float("nan"))
