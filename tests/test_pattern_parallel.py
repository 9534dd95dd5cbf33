"""Fan-out, consensus and refine, driven by a scripted model through baton.run."""

from __future__ import annotations

import re
from typing import Any

import pytest

import baton
from _events import EventLog
from baton.errors import UsageError
from baton.messages import ModelRequest
from baton.patterns.consensus import JUDGE_SCHEMA, VOTE_SCHEMA, Consensus
from baton.patterns.fan_out import FanOut, parse_policy
from baton.patterns.refine import CRITIQUE_SCHEMA, Refine
from baton.stores.memory import MemoryStore
from baton.testing import Fault, Reply, Rule, ScriptedModel, json_reply, text
from test_pattern_support import TrackingModel, agent, calls, order, prompt, requests_of, steps

# --- fan-out ----------------------------------------------------------------------------------


async def test_fan_out_perspectives_run_concurrently_and_keys_follow_list_order() -> None:
    a, b, c, agg = agent("a"), agent("b"), agent("c"), agent("agg")
    # a is slowest: completion order is c, b, a; journal keys must still be a, b, c.
    model = TrackingModel([Rule(r"^You are a\.", reply=text("view A"), latency_s=0.06),
                           Rule(r"^You are b", reply=text("view B"), latency_s=0.04),
                           Rule(r"^You are c", reply=text("view C"), latency_s=0.02),
                           Rule(r"^You are agg", reply=text("combined"))])
    store = MemoryStore()
    result = await baton.run(FanOut(agents=[a, b, c], aggregator=agg), "the question", store=store, model=model)
    assert result.status == "succeeded" and result.output == "combined"
    assert model.peak == 3  # all three in flight together
    assert [prompt(r) for r in model.requests[:3]] == ["the question"] * 3
    agent_steps = sorted((s.key, s.name) for s in await steps(store, result.run_id, "agent"))
    assert agent_steps == [("0", "a"), ("1", "b"), ("2", "c"), ("3", "agg")]
    to_agg = prompt(requests_of(model, "agg")[0])
    assert "Results (3 of 3 succeeded):" in to_agg
    assert to_agg.index("[1] a\nview A") < to_agg.index("[2] b\nview B") < to_agg.index("[3] c\nview C")


async def test_fan_out_each_line_with_a_function_aggregator() -> None:
    worker = agent("worker")
    model = ScriptedModel([Rule(r"^You are worker", reply=lambda req: text(prompt(req).upper()))])
    wf = FanOut(each=worker, over="lines", aggregator=lambda results: " | ".join(results))
    result = await baton.run(wf, "alpha\n\n  beta  \ngamma\n", store=MemoryStore(), model=model)
    assert result.status == "succeeded" and result.output == "ALPHA | BETA | GAMMA"
    assert sorted(prompt(r) for r in model.requests) == ["alpha", "beta", "gamma"]


async def test_fan_out_each_over_json_passes_items_and_returns_list() -> None:
    worker = agent("worker")
    model = ScriptedModel([Rule(r"^You are worker", reply=lambda req: text(f"saw {len(prompt(req))}"))])
    result = await baton.run(FanOut(each=worker, over="json"), '["ab", {"k": 1}]', store=MemoryStore(), model=model)
    assert result.status == "succeeded"
    assert sorted(prompt(r) for r in model.requests) == ["ab", '{\n  "k": 1\n}']
    assert result.output[0] == "saw 2"


@pytest.mark.parametrize(("payload", "needle"), [("not json", "not valid JSON"), ('{"a": 1}', "expected a JSON array"),
                                                 ("[]", "array is empty")])
async def test_fan_out_over_json_rejects_bad_input_clearly(payload: str, needle: str) -> None:
    model = ScriptedModel()
    result = await baton.run(FanOut(each=agent("worker"), over="json"), payload, store=MemoryStore(), model=model)
    assert result.status == "failed" and result.error["type"] == "WorkflowError"
    assert needle in result.error["message"] and "fan-out 'fan_out'" in result.error["message"]
    assert model.call_count == 0


def _flaky_workers() -> tuple[list[baton.Agent], ScriptedModel]:
    w = [agent("w1"), agent("w2"), agent("w3")]
    model = ScriptedModel([Rule(r"^You are w1", reply=text("one")), Rule(r"^You are w2", fault=Fault.status(400)),
                           Rule(r"^You are w3", fault=Fault.status(400))])
    return w, model


async def test_fan_out_policy_all_fails_on_any_failure_naming_it() -> None:
    workers, model = _flaky_workers()
    result = await baton.run(FanOut(agents=workers), "x", store=MemoryStore(), model=model)
    assert result.status == "failed" and result.error["type"] == "StepFailed"
    assert "policy 'all'" in result.error["message"] and re.search(r"w[23]: ProviderError", result.error["message"])


async def test_fan_out_best_effort_drops_failures() -> None:
    workers, model = _flaky_workers()
    sink = EventLog()
    result = await baton.run(FanOut(agents=workers, policy="best_effort"), "x", store=MemoryStore(), model=model,
                             sinks=[sink])
    assert result.status == "succeeded" and result.output == ["one"]
    summary = sink.of("fan_out.done")[0]
    assert summary["succeeded"] == 1 and len(summary["failed"]) == 2


async def test_fan_out_best_effort_fails_when_nothing_succeeds() -> None:
    model = ScriptedModel([Rule(fault=Fault.status(400))])
    result = await baton.run(FanOut(agents=[agent("w1"), agent("w2")], policy="best_effort"), "x",
                             store=MemoryStore(), model=model)
    assert result.status == "failed" and "1 of 2 needed, 0 succeeded" in result.error["message"]


async def test_fan_out_quorum_not_reached_lists_failures() -> None:
    workers, model = _flaky_workers()
    result = await baton.run(FanOut(agents=workers, policy="quorum:2"), "x", store=MemoryStore(), model=model)
    assert result.status == "failed" and result.error["type"] == "StepFailed"
    assert "quorum not reached: 2 of 3 needed, 1 succeeded" in result.error["message"]
    assert [a.split(":")[0] for a in result.error["attempts"]] == ["w2", "w3"]


async def test_fan_out_quorum_reached_returns_successes() -> None:
    workers, model = _flaky_workers()
    result = await baton.run(FanOut(agents=workers, policy="quorum:1"), "x", store=MemoryStore(), model=model)
    assert result.status == "succeeded" and result.output == ["one"]


def test_fan_out_configuration_errors() -> None:
    with pytest.raises(UsageError, match="either agents"):
        FanOut()
    with pytest.raises(UsageError, match="quorum 4 is more than the 2 agents"):
        FanOut(agents=[agent("x"), agent("y")], policy="quorum:4")
    with pytest.raises(UsageError, match="unknown fan-out policy"):
        parse_policy("most")
    assert parse_policy("quorum:3") == ("quorum", 3)


# --- consensus --------------------------------------------------------------------------------

JUDGED = {"consensus": "APPROVE", "confidence": 0.8, "key_agreements": ["safe"], "key_disagreements": [],
          "recommendation": "ship it"}


def _voters() -> list[baton.Agent]:
    return [agent("v1"), agent("v2"), agent("v3")]


def _judge_model(*extra: Rule) -> TrackingModel:
    return TrackingModel([*extra, Rule(r"^You are judge", reply=json_reply(JUDGED)),
                          Rule(r"^You are (v\d)", reply=lambda req: text(f"assessment by {req.system[8:10]}"),
                               latency_s=0.02)])


def _candidate_order(req: ModelRequest) -> list[str]:
    return re.findall(r"assessment by (v\d)", prompt(req))


async def test_consensus_with_judge_runs_voters_in_parallel_and_hides_names() -> None:
    model = _judge_model()
    wf = Consensus(_voters(), judge=agent("judge"))
    result = await baton.run(wf, "Is this change safe?", store=MemoryStore(), model=model)
    assert result.status == "succeeded" and result.output == JUDGED
    assert model.peak == 3 and calls(model) == {"v1": 1, "v2": 1, "v3": 1, "judge": 1}
    judge_req = requests_of(model, "judge")[0]
    assert judge_req.tools[-1].input_schema == JUDGE_SCHEMA
    text_ = prompt(judge_req)
    assert sorted(_candidate_order(judge_req)) == ["v1", "v2", "v3"]
    assert "Candidate A" in text_ and "Candidate C" in text_ and "Is this change safe?" in text_
    assert "You are v1" not in text_


async def test_consensus_shuffle_is_seeded_by_the_run_and_stable_on_resume() -> None:
    wf = Consensus(_voters(), judge=agent("judge"))
    orders = set()
    for i in range(6):
        model = _judge_model()
        await baton.run(wf, "q", store=MemoryStore(), model=model, run_id=f"cons-{i}")
        orders.add(tuple(_candidate_order(requests_of(model, "judge")[0])))
    assert len(orders) > 1  # the order does change between runs
    # The same run builds the same judge prompt after a crash.
    store, model = MemoryStore(), _judge_model(Rule(r"^You are judge", fault=Fault.status(400), times=1))
    first = await baton.run(wf, "q", store=store, model=model, run_id="cons-resume")
    assert first.status == "failed"
    second = await baton.resume(first.run_id, wf, store=store, model=model)
    assert second.status == "succeeded"
    judge_reqs = requests_of(model, "judge")
    assert len(judge_reqs) == 2 and prompt(judge_reqs[0]) == prompt(judge_reqs[1])
    assert calls(model)["v1"] == 1  # voters replayed
    unshuffled = Consensus(_voters(), judge=agent("judge"), shuffle=False)
    model = _judge_model()
    await baton.run(unshuffled, "q", store=MemoryStore(), model=model)
    assert _candidate_order(requests_of(model, "judge")[0]) == ["v1", "v2", "v3"]


def _vote_model(votes: dict[str, tuple[str, float]]) -> ScriptedModel:
    def reply(req: ModelRequest) -> Reply:
        name = str(req.system)[8:10]
        vote, conf = votes[name]
        return json_reply({"vote": vote, "confidence": conf, "reasoning": f"{name} thinks {vote.lower()}"})

    return ScriptedModel([Rule(r"^You are v", reply=reply)])


async def test_consensus_majority_vote() -> None:
    model = _vote_model({"v1": ("APPROVE", 0.9), "v2": ("APPROVE", 0.6), "v3": ("REJECT", 0.99)})
    result = await baton.run(Consensus(_voters(), vote="majority"), "q", store=MemoryStore(), model=model)
    out = result.output
    assert out["consensus"] == "APPROVE" and out["confidence"] == pytest.approx(2 / 3, abs=1e-3)
    assert [s.split(" ")[0] for s in out["key_agreements"]] == ["v1", "v2"]
    assert out["key_disagreements"] == ["v3 (REJECT, confidence 0.99): v3 thinks reject"]
    assert "2 of 3 voters approve" in out["recommendation"]
    assert set(out) == set(JUDGE_SCHEMA["properties"])
    assert all(r.tools[-1].input_schema == VOTE_SCHEMA for r in model.requests)


async def test_consensus_weighted_vote_can_overrule_the_majority() -> None:
    model = _vote_model({"v1": ("APPROVE", 1.0), "v2": ("REJECT", 1.0), "v3": ("REJECT", 1.0)})
    wf = Consensus(_voters(), vote="weighted", weights={"v1": 3.0})
    result = await baton.run(wf, "q", store=MemoryStore(), model=model)
    assert result.output["consensus"] == "APPROVE"
    assert result.output["confidence"] == pytest.approx(0.6)
    assert "weighted score 3 approve vs 2 reject" in result.output["recommendation"]


async def test_consensus_tie_is_split() -> None:
    model = _vote_model({"v1": ("APPROVE", 0.7), "v2": ("REJECT", 0.7)})
    result = await baton.run(Consensus([agent("v1"), agent("v2")]), "q", store=MemoryStore(), model=model)
    assert result.output["consensus"] == "SPLIT" and result.output["key_agreements"] == []
    assert len(result.output["key_disagreements"]) == 2 and "escalate" in result.output["recommendation"]


async def test_consensus_voter_failure_fails_the_step() -> None:
    model = _judge_model(Rule(r"^You are v2", fault=Fault.status(400)))
    result = await baton.run(Consensus(_voters(), judge=agent("judge")), "q", store=MemoryStore(), model=model)
    assert result.status == "failed" and "1 of 3 voters failed" in result.error["message"]
    assert result.error["attempts"][0].startswith("v2: ProviderError") and calls(model)["judge"] == 0


def test_consensus_configuration_errors() -> None:
    with pytest.raises(UsageError, match="either a judge or a vote"):
        Consensus(_voters(), judge=agent("judge"), vote="majority")
    with pytest.raises(UsageError, match="unknown voters"):
        Consensus(_voters(), vote="weighted", weights={"nobody": 1.0})
    with pytest.raises(UsageError, match="unique"):
        Consensus([agent("v1"), agent("v1")])


# --- refine -----------------------------------------------------------------------------------


def _refine_model(approve_from_round: dict[str, int]) -> TrackingModel:
    """Drafts are numbered; a critic approves once the draft number reaches its threshold."""
    def draft(req: ModelRequest) -> Reply:
        m = re.search(r"Your previous draft:\ndraft v(\d)", prompt(req))
        return text(f"draft v{int(m.group(1)) + 1 if m else 1}")

    def critique(req: ModelRequest) -> Reply:
        name = str(req.system)[8:10]
        version = int(re.search(r"draft v(\d)", prompt(req)).group(1))  # type: ignore[union-attr]
        ok = version >= approve_from_round[name]
        return json_reply({"approved": ok, "feedback": "" if ok else f"{name}: needs work on v{version}"})

    return TrackingModel([Rule(r"^You are c\d", reply=critique, latency_s=0.02),
                          Rule(r"^You are (drafter|reviser)", reply=draft)])


async def test_refine_revises_until_all_critics_approve() -> None:
    model = _refine_model({"c1": 2, "c2": 1})
    sink = EventLog()
    wf = Refine(agent("drafter"), [agent("c1"), agent("c2")], max_rounds=3)
    result = await baton.run(wf, "write a haiku", store=MemoryStore(), model=model, sinks=[sink])
    assert result.status == "succeeded" and result.output == "draft v2"
    assert calls(model) == {"drafter": 2, "c1": 2, "c2": 2}
    assert order(model)[0] == "drafter" and order(model)[3] == "drafter"
    assert model.peak == 2  # critics review in parallel
    revise = prompt(requests_of(model, "drafter")[1])
    assert "Your previous draft:\ndraft v1" in revise and "c1 (changes requested): c1: needs work on v1" in revise
    assert "c2 (approved)" in revise and "write a haiku" in revise
    assert requests_of(model, "c1")[0].tools[-1].input_schema == CRITIQUE_SCHEMA
    rounds = sink.of("refine.round")
    assert [(r["round"], r["approved"]) for r in rounds] == [(1, False), (2, True)]


async def test_refine_stops_at_max_rounds_and_returns_the_last_draft() -> None:
    model = _refine_model({"c1": 99, "c2": 1})
    reviser = agent("reviser")
    wf = Refine(agent("drafter"), [agent("c1"), agent("c2")], max_rounds=2, reviser=reviser)
    result = await baton.run(wf, "task", store=MemoryStore(), model=model)
    assert result.status == "succeeded" and result.output == "draft v2"
    # 1 draft + 2 rounds x 2 critics + 1 revision between the rounds; nothing more.
    assert calls(model) == {"drafter": 1, "c1": 2, "c2": 2, "reviser": 1}


async def test_refine_critic_failure_names_the_critic() -> None:
    model = _refine_model({"c1": 1, "c2": 1})
    model.script.rules.insert(0, Rule(r"^You are c2", fault=Fault.status(400)))
    result = await baton.run(Refine(agent("drafter"), [agent("c1"), agent("c2")]), "t", store=MemoryStore(),
                             model=model)
    assert result.status == "failed" and "critic 'c2' failed in round 1" in result.error["message"]


def test_refine_configuration_errors() -> None:
    with pytest.raises(UsageError, match="max_rounds"):
        Refine(agent("d"), [agent("c1")], max_rounds=0)
    with pytest.raises(UsageError, match="at least one critic"):
        Refine(agent("d"), [])


async def test_refine_accepts_a_function_critic() -> None:
    seen: list[Any] = []

    async def length_critic(ctx: baton.RunContext, review_prompt: str) -> dict[str, Any]:
        seen.append(review_prompt)
        return {"approved": True, "feedback": ""}

    model = ScriptedModel([Rule(r"^You are drafter", reply=text("short"))])
    result = await baton.run(Refine(agent("drafter"), [length_critic]), "t", store=MemoryStore(), model=model)
    assert result.output == "short" and len(seen) == 1 and "short" in seen[0]
