"""Model routing on a mixed workload: what ``model: auto`` costs against always-Sonnet and always-Opus.

A fan-out over N tasks of mixed difficulty (by default 55 % easy: extraction, formatting,
a one-fact lookup; 30 % ordinary: summaries, short answers; 15 % hard: design and
trade-off questions with long context). Each task has a true difficulty in 0..1; the
fake Messages API answers with an output whose length grows with it (the same for every
model: the bill differs by price, not by answer). Four variants of the same run:

  a. always Sonnet        every task on claude-sonnet-4-6
  b. always Opus          every task on claude-opus-4-6
  c. auto, heuristic      ``model: auto``: length + reasoning words pick the tier (no extra call)
  d. auto, assessed       ``model: auto`` + ``routing: {assess: true}``: Haiku rates each task
                          (the fake assessor answers the true difficulty plus seeded noise
                          of +-``--noise``), the rating picks the tier; its calls are billed

Cost is baton's own accounting (the price table per model, assessments included) and is
checked against the server's log. For each variant: cost, cost relative to the two
baselines, the share of tasks per tier, and how many tasks went to another tier than their
true difficulty calls for (< 0.4 Haiku, > 0.75 Opus, else Sonnet), hard ones below Opus
counted apart. No CPU is measured here, so the fake server runs in this process.

    .venv/bin/python benchmarks/bench_routing.py                 # 300 tasks
    .venv/bin/python benchmarks/bench_routing.py --tasks 2000 --noise 0.2
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
from dataclasses import dataclass

import baton
from baton.messages import ModelRequest
from baton.models.anthropic import AnthropicModel, usage_from_wire
from baton.models.pricing import cost_of
from baton.patterns.fan_out import FanOut
from baton.runtime.engine import Engine
from baton.runtime.routing import ASSESS_SYSTEM, ModelRouter
from baton.stores.memory import MemoryStore
from baton.testing import FakeAnthropicServer, Reply, Rule, text

HAIKU, SONNET, OPUS = "claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-6"
TIER_OF = {HAIKU: "haiku", SONNET: "sonnet", OPUS: "opus"}
TARGET_VS_OPUS = 0.75
"""The assessed router, which sends the hard tasks to Opus, should cost at most this share of always-Opus."""
_TASK_ID = re.compile(r"\[task (\d+)\]")

FILLER = ("The quarterly figures for the northern region show revenue of 4.2 million, up from 3.9 million, "
          "with margins steady at 31 percent and headcount unchanged. ")
KINDS = [  # (share, difficulty range, template, context repeats)
    (0.55, (0.0, 0.35), "Extract the revenue figure from this note and return it as a number. {ctx}", 1),
    (0.30, (0.4, 0.7), "Summarise this report for a manager in three sentences. {ctx}", 6),
    (0.15, (0.8, 1.0), "Design a plan for the next year: analyze the trade-offs, compare three strategies and "
                       "explain why one is best, given this history. {ctx}", 20),
]


@dataclass
class Task:
    id: int
    difficulty: float
    text: str


def workload(n: int, seed: int) -> list[Task]:
    rng = random.Random(seed)
    tasks = []
    for i in range(n):
        roll, acc = rng.random(), 0.0
        for share, (lo, hi), template, repeats in KINDS:
            acc += share
            if roll < acc or share == KINDS[-1][0]:
                ctx = FILLER * repeats
                tasks.append(Task(i, round(rng.uniform(lo, hi), 3), f"[task {i}] " + template.format(ctx=ctx)))
                break
    return tasks


def fake_rules(tasks: list[Task], noise: float, seed: int) -> list[Rule]:
    """The assessor rates a task near its true difficulty; a worker's answer grows with the difficulty."""
    rng = random.Random(seed + 1)
    ratings = {t.id: min(1.0, max(0.0, t.difficulty + rng.uniform(-noise, noise))) for t in tasks}
    by_id = {t.id: t for t in tasks}

    def task_of(req: ModelRequest) -> Task:
        found = _TASK_ID.search(req.messages[0].text if req.messages else "")
        return by_id[int(found.group(1))] if found else tasks[0]

    def assess(req: ModelRequest) -> Reply:
        return text(f"{ratings[task_of(req).id]:.2f}")

    def answer(req: ModelRequest) -> Reply:
        words = 20 + int(400 * task_of(req).difficulty)
        return text(" ".join(["word"] * words))

    return [Rule(re.escape(ASSESS_SYSTEM[:40]), reply=assess), Rule(None, reply=answer)]


@dataclass
class Outcome:
    name: str
    cost: float
    served_cost: float
    tiers: dict[str, int]
    hard_under: int
    misrouted: int
    assess_cost: float


async def run_variant(name: str, agent: baton.Agent, router: ModelRouter | None, tasks: list[Task],
                      server: FakeAnthropicServer, model: AnthropicModel) -> Outcome:
    server.reset()
    engine = Engine(store=MemoryStore(), model=model, router=router)
    fan = FanOut(each=agent, max_items=len(tasks))
    result = await engine.run(fan, "\n".join(t.text for t in tasks), limits=baton.Limits(
        max_model_calls=4 * len(tasks), concurrency=64))
    if result.status != "succeeded":
        raise SystemExit(f"{name}: the run {result.status}: {result.error}")
    by_id = {t.id: t for t in tasks}
    tiers = {"haiku": 0, "sonnet": 0, "opus": 0}
    hard_under = misrouted = 0
    served = assess = 0.0
    for r in server.requests:
        assert r.body is not None and r.usage is not None
        usd = cost_of(r.body["model"], usage_from_wire(r.usage)) or 0.0
        served += usd
        if ASSESS_SYSTEM[:40] in r.text:
            assess += usd
            continue
        tier = TIER_OF[r.body["model"]]
        tiers[tier] += 1
        found = _TASK_ID.search(r.text)
        difficulty = by_id[int(found.group(1))].difficulty if found else 0.0
        hard_under += difficulty > 0.75 and tier != "opus"
        misrouted += tier != ("haiku" if difficulty < 0.4 else "opus" if difficulty > 0.75 else "sonnet")
    return Outcome(name, result.cost_usd, served, tiers, hard_under, misrouted, assess)


def report(outcomes: list[Outcome], tasks: list[Task]) -> None:
    sonnet, opus = outcomes[0].cost, outcomes[1].cost
    n = len(tasks)
    hard = sum(t.difficulty > 0.75 for t in tasks)
    easy = sum(t.difficulty < 0.4 for t in tasks)
    print(f"{n} tasks: {easy} easy (< 0.4), {n - easy - hard} ordinary, {hard} hard (> 0.75)\n")
    print(f"{'variant':<18} {'cost $':>10} {'vs Sonnet':>9} {'vs Opus':>8} {'haiku':>6} {'sonnet':>7} {'opus':>6} "
          f"{'assess $':>9} {'misrouted':>9} {'hard<opus':>9}")
    for o in outcomes:
        share = {k: 100.0 * v / n for k, v in o.tiers.items()}
        print(f"{o.name:<18} {o.cost:>10.4f} {o.cost / sonnet:>9.3f} {o.cost / opus:>8.3f} {share['haiku']:>5.1f}% "
              f"{share['sonnet']:>6.1f}% {share['opus']:>5.1f}% {o.assess_cost:>9.4f} {o.misrouted:>9} "
              f"{o.hard_under:>9}")


async def main(args: argparse.Namespace) -> None:
    tasks = workload(args.tasks, args.seed)
    server = FakeAnthropicServer(fake_rules(tasks, args.noise, args.seed))
    await server.start()
    model = AnthropicModel(api_key="bench", base_url=server.url)
    worker = baton.Agent("worker", system="You do the task.", model="auto", max_tokens=1024)
    try:
        outcomes = [
            await run_variant("always Sonnet", worker.with_(model=SONNET), None, tasks, server, model),
            await run_variant("always Opus", worker.with_(model=OPUS), None, tasks, server, model),
            await run_variant("auto, heuristic", worker, ModelRouter(), tasks, server, model),
            await run_variant("auto, assessed", worker, ModelRouter(assess=True), tasks, server, model),
        ]
    finally:
        await model.aclose()
        await server.stop()
    report(outcomes, tasks)
    billed_ok = all(abs(o.cost - o.served_cost) < 1e-9 for o in outcomes)
    assessed = outcomes[3]
    ratio = assessed.cost / outcomes[1].cost
    share = {k: 100.0 * v / len(tasks) for k, v in assessed.tiers.items()}
    print(f"\nSUMMARY routing: assessed auto costs {ratio:.3f}x always-Opus (target <= {TARGET_VS_OPUS}: "
          f"{'OK' if ratio <= TARGET_VS_OPUS else 'MISSED'}), {assessed.cost / outcomes[0].cost:.3f}x always-Sonnet; "
          f"{assessed.misrouted} of {len(tasks)} misrouted, {assessed.hard_under} hard below Opus; tiers haiku {share['haiku']:.1f}% sonnet {share['sonnet']:.1f}% opus {share['opus']:.1f}%; "
          f"assessments ${assessed.assess_cost:.4f} of ${assessed.cost:.4f}; "
          f"billed = server log: {'OK' if billed_ok else 'MISSED'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--noise", type=float, default=0.1, help="the fake assessor's error, +- this much")
    parser.add_argument("--seed", type=int, default=7)
    asyncio.run(main(parser.parse_args()))
