"""A synthetic orchestrator run of any size, as the journal would hold it: for the UI's
benchmark (``benchmarks/bench_ui.py``) and the browser check of a 500-step run page."""

from __future__ import annotations

from typing import Any

from baton.stores.base import RunRecord, StepRecord

LANES = 8
USAGE = {"input_tokens": 120, "output_tokens": 40, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}


def _step(run_id: str, key: str, kind: str, name: str, t: float, took: float, result: Any) -> StepRecord:
    model = kind == "model"
    return StepRecord(run_id, key, kind, name, "completed", result=result, started_at=t, ended_at=t + took,  # type: ignore[arg-type]
                      usage=dict(USAGE) if kind in ("model", "agent") else None,
                      cost_usd=0.00032 if kind in ("model", "agent") else 0.0,
                      meta={"model": "claude-haiku-4-5", "prompt_version": f"v-{name}"} if model or kind == "agent"
                      else {})


def synthetic_run(run_id: str, steps: int = 500, tenant: str = "tenant-a", t0: float = 1.8e9
                  ) -> tuple[RunRecord, list[StepRecord]]:
    """A finished run with a plan of ``(steps - 4) // 3`` subtasks in ``LANES`` parallel chains,
    each subtask an agent step with one model call and one tool call, then a synthesis."""
    n = max(1, (steps - 4) // 3)
    subtasks = [{"id": f"t{i}", "worker": f"worker{i % LANES}", "instruction": f"part {i} of the study",
                 "depends_on": [f"t{i - LANES}"] if i >= LANES else []} for i in range(n)]
    plan = {"subtasks": subtasks, "synthesis_instructions": "combine"}
    out = [_step(run_id, "0/m0", "model", "planner", t0, 0.9, {"model": "claude-haiku-4-5", "content": []}),
           _step(run_id, "0", "agent", "planner", t0, 1.0, {"output": plan, "turns": 1})]
    for i, s in enumerate(subtasks):
        t = t0 + 1.0 + (i // LANES) * 0.5
        w = str(s["worker"])
        out += [_step(run_id, f"s{i}/0/m0", "model", w, t, 0.3, {"model": "claude-haiku-4-5",
                                                                  "content": [{"type": "text", "text": f"r{i}"}]}),
                _step(run_id, f"s{i}/0/t0", "tool", "lookup", t + 0.3, 0.1, f"facts {i}"),
                _step(run_id, f"s{i}/0", "agent", w, t, 0.45, {"output": f"result {i}", "turns": 2})]
    end = t0 + 1.0 + (n // LANES + 1) * 0.5
    while len(out) < steps - 2:
        out.append(_step(run_id, f"extra/{len(out)}", "step", "note", end, 0.01, None))
    out += [_step(run_id, "synthesis/0/m0", "model", "writer", end, 0.8, {"model": "claude-haiku-4-5", "content": []}),
            _step(run_id, "synthesis/0", "agent", "writer", end, 0.9, {"output": "the report", "turns": 1})]
    calls = sum(1 for s in out if s.kind == "model")
    run = RunRecord(run_id=run_id, workflow="registered:orch", input="a big study", status="succeeded",
                    created_at=t0 - 0.01, updated_at=end + 1.0, output="the report", cost_usd=0.00032 * calls,
                    model_calls=calls, usage={k: v * calls for k, v in USAGE.items()},
                    metadata={"tenant": tenant, "workflow_name": "orch", "source": "sample"})
    return run, out[:steps]
