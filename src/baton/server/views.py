"""How runs look over HTTP: the CLI's ``--json`` object, plus steps for one run."""

from __future__ import annotations

from typing import Any

from baton.cli.views import show_json
from baton.observe.redact import redact
from baton.stores.base import RunRecord, StepRecord, Transition


def summary_view(r: RunRecord, position: int | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {
        "run_id": r.run_id, "status": r.status, "workflow": r.metadata.get("workflow_name"),
        "output": r.output, "usage": r.usage, "cost_usd": round(r.cost_usd, 6), "model_calls": r.model_calls,
        "duration_s": round(max(0.0, r.updated_at - r.created_at), 3), "error": r.error,
        "created_at": r.created_at, "updated_at": r.updated_at, "source": r.metadata.get("source")}
    if position is not None:
        d["queue_position"] = position
    result: dict[str, Any] = redact(d)
    return result


def run_view(r: RunRecord, steps: list[StepRecord], transitions: list[Transition],
             position: int | None = None) -> dict[str, Any]:
    full = show_json(r, steps, transitions)
    d = summary_view(r, position)
    d.update({k: full[k] for k in ("steps", "transitions", "awaiting", "prompt_versions")})
    d["input"] = r.input
    d["limits"] = r.limits
    result: dict[str, Any] = redact(d)
    return result
