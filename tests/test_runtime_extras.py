"""Context compression, the shared blackboard, and model routing inputs."""

from __future__ import annotations

import baton
from baton.patterns import Orchestrator
from baton.patterns.compress import Compressor
from baton.runtime.routing import ModelRouter, complexity
from baton.stores.memory import MemoryStore
from baton.testing import Rule, ScriptedModel, json_reply, text

LONG = "finding " * 1000  # 8,000 characters


async def test_long_dependency_output_is_compressed_and_raw_output_kept() -> None:
    plan = {"subtasks": [{"id": "a", "worker": "w", "instruction": "produce", "depends_on": []},
                         {"id": "b", "worker": "w", "instruction": "consume", "depends_on": ["a"]}],
            "synthesis_instructions": "done"}
    model = ScriptedModel([
        Rule(r"Compress the text", reply=text("SHORT SUMMARY")),
        Rule(r"^plan", reply=json_reply(plan)),
        Rule(r"Your subtask \(a\)", reply=text(LONG)),
        Rule(None, reply=text("ok")),
    ])
    orch = Orchestrator(baton.Agent("planner", system="plan"), {"w": baton.Agent("w", system="work")},
                        compress=Compressor(over_chars=4000))
    store = MemoryStore()
    result = await baton.run(orch, "task", store=store, model=model)
    assert result.status == "succeeded"
    consumer = [r for r in model.requests if "Your subtask (b)" in r.messages[0].text][0]
    assert "SHORT SUMMARY" in consumer.messages[0].text and LONG not in consumer.messages[0].text
    summarize = [r for r in model.requests if r.system and "Compress the text" in str(r.system)]
    assert len(summarize) == 1 and summarize[0].model == "claude-haiku-4-5"
    steps = await store.load_steps(result.run_id)
    producer = next(s for s in steps if s.kind == "agent" and s.key == "s0/0")
    raw = producer.result["output"]  # the raw output stays in the journal (cut at max_tokens by the model)
    assert raw.startswith("finding finding") and len(raw) > 4000 and raw not in consumer.messages[0].text


async def test_blackboard_is_shared_through_the_store_and_replayed_on_resume() -> None:
    store = MemoryStore()
    calls = {"n": 0}

    async def wf(ctx: baton.RunContext, x):
        await ctx.share("findings", {"n": 1}, ttl_s=60)
        seen = await ctx.shared("findings")
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("crash after reading")
        return seen

    first = await baton.run(wf, None, store=store, model=ScriptedModel())
    assert first.status == "failed"
    assert await store.get_state(first.run_id, "findings") == {"n": 1}
    await store.put_state(first.run_id, "findings", {"n": 2})  # another process changes it
    second = await baton.resume(first.run_id, wf, store=store, model=ScriptedModel())
    assert second.output == {"n": 1}  # the journaled read, not the new value


def test_router_picks_tiers_by_task_type_and_complexity() -> None:
    router = ModelRouter()
    assert router.choose("classification", "x") == "claude-haiku-4-5"
    assert router.choose("synthesis", "x") == "claude-opus-4-6"
    assert router.choose(None, "hi") == "claude-haiku-4-5"
    hard = "Analyze the trade-offs and design an architecture; compare strategies. Why? " * 40
    assert complexity(hard) > 0.6 and router.choose(None, hard) == "claude-opus-4-6"
