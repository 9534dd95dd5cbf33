"""`baton validate` reports the exact worst-case bound of a workflow, not just "some cost".

The figures are worked out by hand from the price table (claude-haiku-4-5: $1 / $5 per
million input / output tokens; claude-sonnet-4-6: $3 / $15) and the structure of each file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

AGENTS = """\
version: 1
name: bound
agents:
  researcher: {model: claude-haiku-4-5, max_tokens: 1000, max_turns: 3}
  writer: {model: claude-sonnet-4-6, max_tokens: 500, max_turns: 2}
  planner: {model: claude-haiku-4-5, max_tokens: 1000, max_turns: 1}
"""
# With 2000 input tokens a call: researcher (2000*1 + 1000*5)/1e6 = $0.007 a call, 3 calls = $0.021;
# writer (2000*3 + 500*15)/1e6 = $0.0135 a call, 2 calls = $0.027; planner $0.007, 1 call.
CASES = {
    "pipeline": ("workflow: {pattern: pipeline, stages: [researcher, writer]}\n", 5, 0.048),
    # max_model_calls 4 of the 5: the bound scales to 4/5 of the cost.
    "capped by calls": ("workflow: {pattern: pipeline, stages: [researcher, writer]}\n"
                        "limits: {max_model_calls: 4}\n", 4, 0.0384),
    # planner x (1 + 1 re-plan) = 2 calls $0.014; the costlier worker (writer) x 3 subtasks = 6 calls
    # $0.081; the synthesizer (writer) 2 calls $0.027: 10 calls, $0.122.
    "orchestrator": ("workflow: {pattern: orchestrator, planner: planner, workers: [researcher, writer],\n"
                     "           synthesizer: writer, max_subtasks: 3, max_replans: 1}\n", 10, 0.122),
    "capped by budget": ("workflow: {pattern: orchestrator, planner: planner, workers: [researcher, writer],\n"
                         "           synthesizer: writer, max_subtasks: 3, max_replans: 1}\n"
                         "limits: {budget_usd: 0.1}\n", 10, 0.1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_validate_reports_the_exact_worst_case(tmp_path: Path, case: str) -> None:
    body, calls, usd = CASES[case]
    path = tmp_path / "wf.yaml"
    path.write_text(AGENTS + body)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "BATON_"))}
    env["PYTHONPATH"] = str(ROOT / "src")
    r = subprocess.run([sys.executable, "-m", "baton", "validate", str(path), "--json",
                        "--assume-input-tokens", "2000"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    worst = json.loads(r.stdout)["worst_case"]
    assert (worst["model_calls"], worst["usd"]) == (calls, pytest.approx(usd, abs=1e-9))
    assert worst["unpriced_models"] == [] and worst["assumed_input_tokens_per_call"] == 2000
