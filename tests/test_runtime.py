"""Durable runs: journal replay on resume, budgets, guards, approvals, ownership, replay."""

from __future__ import annotations

import os

import pytest

import baton
from baton.errors import ApprovalRequired, ReplayDivergence, RunNotFound, RunOwnedElsewhere, UsageError
from baton.runtime.engine import Engine
from baton.stores.base import Owner
from baton.stores.memory import MemoryStore
from baton.testing import Rule, ScriptedModel, text, tool_call

writer = baton.Agent("writer", system="write")
critic = baton.Agent("critic", system="criticise", max_tokens=4096)
side_effects: list[str] = []
fail_once = {"armed": False}


async def three_stage(ctx: baton.RunContext, topic: str):
    draft = await ctx.call(writer, f"draft {topic}")
    notes = await ctx.step("check", lambda: _maybe_fail(draft.output))
    review = await ctx.call(critic, f"review {draft.output} {notes}")
    return {"draft": draft.output, "review": review.output}


def _maybe_fail(value: str) -> str:
    if fail_once["armed"]:
        fail_once["armed"] = False
        raise RuntimeError("transient failure in step 2")
    return f"checked:{value}"


def scripted() -> ScriptedModel:
    return ScriptedModel([Rule(r"^criticise", reply=text("looks good")), Rule(r"^write", reply=text("a draft"))])


async def test_resume_skips_completed_steps() -> None:
    store, model = MemoryStore(), scripted()
    fail_once["armed"] = True
    first = await baton.run(three_stage, "batteries", store=store, model=model)
    assert first.status == "failed" and "transient failure" in first.error["message"]
    assert model.call_count == 1
    second = await baton.resume(first.run_id, three_stage, store=store, model=model)
    assert second.status == "succeeded"
    assert second.output == {"draft": "a draft", "review": "looks good"}
    assert model.call_count == 2  # the writer was not called again
    assert second.model_calls == 2 and second.usage.input_tokens > 0  # totals include the first segment
    history = [t.status for t in await store.transitions(first.run_id)]
    assert history == ["pending", "running", "failed", "running", "succeeded"]


async def test_budget_stops_run_resumably_and_resume_with_more_budget_continues() -> None:
    store, model = MemoryStore(), scripted()
    # The writer reserves ~1024 * $15/M = $0.015; the critic (max_tokens 4096) ~$0.061: over the budget.
    limits = baton.Limits(budget_usd=0.02)
    first = await baton.run(three_stage, "x", store=store, model=model, limits=limits)
    assert first.status == "budget_exceeded" and first.error["type"] == "BudgetExceeded"
    assert model.call_count == 1 and first.cost_usd <= 0.02
    second = await baton.resume(first.run_id, three_stage, store=store, model=model, budget_usd=1.0)
    assert second.status == "succeeded" and model.call_count == 2


async def test_max_model_calls_guard() -> None:
    result = await baton.run(three_stage, "x", store="memory://", model=scripted(),
                             limits=baton.Limits(max_model_calls=1))
    assert result.status == "budget_exceeded" and "model_calls" in result.error["message"]


async def test_depth_guard_names_the_chain() -> None:
    async def recurse(ctx: baton.RunContext, n: int):
        sub = ctx.child(f"level{n}")
        return await recurse(sub, n + 1)

    result = await baton.run(recurse, 0, store="memory://", model=scripted(), limits=baton.Limits(max_depth=3))
    assert result.status == "failed" and result.error["type"] == "DepthExceeded"
    assert "level0 > level1 > level2 > level3" in result.error["message"]


async def test_approval_pauses_and_decision_resumes() -> None:
    store, model = MemoryStore(), scripted()

    async def gated(ctx: baton.RunContext, topic: str):
        draft = await ctx.call(writer, topic)
        decision = await ctx.approve("publish", {"draft": draft.output})
        return {"published": decision.approved, "text": decision.edit or draft.output}

    first = await baton.run(gated, "x", store=store, model=model)
    assert first.status == "awaiting_approval"
    step = [s for s in await store.load_steps(first.run_id) if s.kind == "approval"][0]
    assert step.status == "started" and step.result == {"request": {"draft": "a draft"}}
    await baton.approve(first.run_id, step.key, approved=True, edit="edited text", by="alice", store=store)
    second = await baton.resume(first.run_id, gated, store=store, model=model)
    assert second.output == {"published": True, "text": "edited text"}
    assert model.call_count == 1
    with pytest.raises(UsageError):
        await baton.approve(first.run_id, "nope", store=store)


async def test_non_idempotent_tool_in_flight_is_not_rerun_blindly() -> None:
    store = MemoryStore()
    side_effects.clear()

    @baton.tool(idempotent=False)
    def charge_card(amount: int) -> str:
        """Charge a card."""
        side_effects.append(f"charged {amount}")
        return "charged"

    model = ScriptedModel([Rule(r"charged|outcome unknown", reply=text("done")),
                           Rule(None, reply=tool_call("charge_card", {"amount": 5}))])
    agent = baton.Agent("payer", tools=[charge_card])

    async def wf(ctx, x):
        return (await ctx.call(agent, x)).output

    first = await baton.run(wf, "pay", store=store, model=model)
    assert first.output == "done" and side_effects == ["charged 5"]
    # Simulate a crash while the tool was in flight: only its 'started' record survives.
    steps = await store.load_steps(first.run_id)
    tool_step = next(s for s in steps if s.kind == "tool")
    store._steps[first.run_id] = {s.key: s.to_dict() for s in steps if s.kind == "model" and s.key.endswith("/m0")}
    tool_step.status, tool_step.result = "started", None
    await store.put_steps([tool_step])
    rec = await store.get_run(first.run_id)
    rec.status = "interrupted"
    await store.update_run(rec)
    paused = await baton.resume(first.run_id, wf, store=store, model=model)
    assert paused.status == "awaiting_approval" and "outcome is unknown" in paused.error["message"]
    assert side_effects == ["charged 5"]
    await baton.approve(first.run_id, f"{tool_step.key}#decision", approved=False, store=store)
    done = await baton.resume(first.run_id, wf, store=store, model=model)
    assert done.status == "succeeded" and side_effects == ["charged 5"]


async def test_gather_keys_are_deterministic_and_replay_detects_divergence() -> None:
    store, model = MemoryStore(), scripted()

    async def parallel(ctx: baton.RunContext, x):
        a, b = await ctx.gather(ctx.call(writer, "one"), ctx.call(critic, "two"))
        return [a.output, b.output]

    result = await baton.run(parallel, None, store=store, model=model)
    keys = {s.key: s.name for s in await store.load_steps(result.run_id) if s.kind == "agent"}
    assert keys == {"0": "writer", "1": "critic"}
    replayed = await baton.replay(result.run_id, parallel, store=store)
    assert replayed.output == result.output and model.call_count == 2

    async def swapped(ctx: baton.RunContext, x):
        a, b = await ctx.gather(ctx.call(critic, "two"), ctx.call(writer, "one"))
        return [a.output, b.output]

    with pytest.raises(ReplayDivergence, match="step 0: journal has agent 'writer'"):
        await baton.replay(result.run_id, swapped, store=store)


async def test_live_owner_is_not_displaced_but_dead_one_is() -> None:
    store = MemoryStore()
    result = await baton.run(three_stage, "x", store=store, model=scripted(), limits=baton.Limits(max_model_calls=1))
    assert result.status == "budget_exceeded"
    live = Owner("elsewhere", 1, "tok", 9e12)  # another host, lease far in the future
    assert await store.claim_run(result.run_id, live, expected_token=None)
    with pytest.raises(RunOwnedElsewhere):
        await baton.resume(result.run_id, three_stage, store=store, model=scripted(), max_model_calls=5)
    ok = await baton.resume(result.run_id, three_stage, store=store, model=scripted(), max_model_calls=5, force=True)
    assert ok.status == "succeeded"


async def test_dead_local_owner_is_taken_over() -> None:
    store = MemoryStore()
    result = await baton.run(three_stage, "x", store=store, model=scripted(), limits=baton.Limits(max_model_calls=1))
    import socket
    import subprocess

    proc = subprocess.Popen(["true"])  # noqa: ASYNC220 (a short-lived child whose pid we need)
    proc.wait()  # noqa: ASYNC220 (a pid that no longer exists)
    dead = Owner(socket.gethostname(), proc.pid, "dead", 9e12)
    assert await store.claim_run(result.run_id, dead, expected_token=None)
    ok = await baton.resume(result.run_id, three_stage, store=store, model=scripted(), max_model_calls=5)
    assert ok.status == "succeeded" and proc.pid != os.getpid()


async def test_unknown_run_and_bad_store_url_are_clear_errors() -> None:
    with pytest.raises(RunNotFound, match="no run with id 'nope'"):
        await baton.resume("nope", three_stage, store="memory://")
    with pytest.raises(UsageError, match="malformed store URL"):
        await Engine(store="not-a-url").run(three_stage, "x")
    with pytest.raises(UsageError, match="unknown store URL scheme 'ftp'"):
        await Engine(store="ftp://x").run(three_stage, "x")


def test_approval_required_is_resumable_control_flow() -> None:
    exc = ApprovalRequired("x", step="1")
    assert exc.exit_code == 4


async def test_cancel_is_terminal() -> None:
    store = MemoryStore()
    result = await baton.run(three_stage, "x", store=store, model=scripted(), limits=baton.Limits(max_model_calls=1))
    record = await Engine(store=store).cancel(result.run_id, reason="not needed")
    assert record.status == "cancelled"
    with pytest.raises(UsageError, match="nothing to resume"):
        await baton.resume(result.run_id, three_stage, store=store, model=scripted())
    assert [t.status for t in await store.transitions(result.run_id)][-1] == "cancelled"


async def test_wall_time_budget_interrupts_a_stalled_step_resumably() -> None:
    import asyncio

    async def slow(ctx: baton.RunContext, x):
        await ctx.step("stall", asyncio.sleep, 5)
        return "done"

    result = await baton.run(slow, None, store="memory://", model=scripted(), limits=baton.Limits(timeout_s=0.2))
    assert result.status == "budget_exceeded" and "wall_time_s" in result.error["message"]
    assert result.duration_s < 2


async def test_displaced_owner_stops_at_its_next_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    """A takeover while a step is in flight: the heartbeat sees the lost claim and cancels the
    workflow; nothing after the takeover is written by the old owner."""
    import asyncio

    from baton.runtime import engine as engine_module

    monkeypatch.setattr(engine_module, "HEARTBEAT_S", 0.05)
    store = MemoryStore()
    after: list[str] = []

    stalled = asyncio.Event()

    async def stall() -> None:
        stalled.set()  # the first step (key "0") is durable by now
        await asyncio.sleep(5)

    async def slow(ctx: baton.RunContext, x):
        await ctx.step("first", lambda: "one")
        await ctx.step("stall", stall)
        after.append("ran on")
        return "done"

    old = asyncio.ensure_future(baton.run(slow, None, run_id="fenced", store=store, model=scripted()))
    await stalled.wait()
    current = (await store.get_run("fenced")).owner
    assert current is not None
    assert await store.claim_run("fenced", Owner("elsewhere", 1, "new-owner", 9e12), expected_token=current.token)
    with pytest.raises(RunOwnedElsewhere, match="taken over"):
        await asyncio.wait_for(old, 2)
    run = await store.get_run("fenced")
    assert run.status == "running" and run.owner is not None and run.owner.token == "new-owner"
    assert [t.status for t in await store.transitions("fenced")] == ["pending", "running"]
    assert after == [] and [s.key for s in await store.load_steps("fenced")] == ["0"]
