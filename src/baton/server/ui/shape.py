"""What the UI shows, computed from a run's journal (and its buffered events): the timeline
rows, the orchestrator's plan as a DAG with node states, cost by agent and by model, the
steps' captured content, and the comparison of two runs. Pure functions: no I/O, no HTML."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from baton.observe.redact import Capture, content_size, redact
from baton.stores.base import RunRecord, StepRecord

ACTIVE_STATUSES = frozenset({"pending", "running"})
WATCHED = ACTIVE_STATUSES | {"awaiting_approval"}
"""Statuses whose page keeps itself up to date (a decision made elsewhere continues the run)."""
RESUMABLE = frozenset({"interrupted", "failed", "budget_exceeded"})
CANCELLABLE = frozenset({"pending", "running", "awaiting_approval", "interrupted", "budget_exceeded"})
TIMELINE_KINDS = frozenset({"agent", "model", "tool", "step", "approval"})


def natural(key: str) -> list[Any]:
    """Sort key for step keys: ``s2`` before ``s10``."""
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", key)]


def captured(value: Any, mode: Capture) -> str | None:
    """A content value as the UI may show it: redacted in ``full``, its size in ``metadata``,
    nothing in ``none`` (the same capture modes as the log and trace sinks)."""
    if value is None or mode == "none":
        return None
    if mode == "metadata":
        return f"({content_size(value)} characters; content not captured)"
    shown = redact(value)
    if isinstance(shown, str):
        return shown
    return json.dumps(shown, indent=2, ensure_ascii=False, default=str)


def step_output(step: StepRecord) -> Any:
    """The part of a step's stored result a person wants to read."""
    r = step.result
    if isinstance(r, dict):
        if step.kind == "agent" and "output" in r:
            return r["output"]
        if step.kind == "model" and isinstance(r.get("content"), list):
            texts = [b.get("text") if b.get("type") == "text" else b.get("input")
                     for b in r["content"] if isinstance(b, dict)]
            return texts[0] if len(texts) == 1 else texts
    return r


# --- timeline ----------------------------------------------------------------------------------


@dataclass
class Row:
    """One bar of the timeline: a step, placed in time relative to the run's start."""

    key: str
    kind: str
    name: str
    status: str
    start_s: float
    end_s: float | None
    depth: int
    retries: int
    error: str | None


@dataclass
class Timeline:
    rows: list[Row]
    span_s: float
    peak_parallel: int
    """Most agent steps running at the same moment (parallelism, as a number)."""


def timeline(run: RunRecord, steps: list[StepRecord], now: float) -> Timeline:
    """Rows for the Gantt chart, in start order; a step still running ends at ``now``."""
    shown = [s for s in steps if s.kind in TIMELINE_KINDS and s.started_at]
    t0 = min([run.created_at, *(s.started_at for s in shown)]) if shown else run.created_at
    rows = []
    for s in sorted(shown, key=lambda s: (s.started_at, natural(s.key))):
        end = s.ended_at if s.ended_at else None
        err = (s.error or {}).get("message") or (s.error or {}).get("type")
        rows.append(Row(s.key, s.kind, s.name, s.status, s.started_at - t0, end - t0 if end else None,
                        s.key.count("/"), max(0, s.attempts - 1), str(redact(err)) if err else None))
    last = max([r.end_s if r.end_s is not None else now - t0 for r in rows], default=0.0)
    span = max(last, run.updated_at - t0 if run.status not in ACTIVE_STATUSES else now - t0, 1e-3)
    agents = [(r.start_s, r.end_s if r.end_s is not None else span) for r in rows if r.kind == "agent"]
    return Timeline(rows, span, _peak(agents))


def _peak(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals], key=lambda e: (e[0], e[1]))
    peak = cur = 0
    for _, d in edges:
        cur += d
        peak = max(peak, cur)
    return peak


# --- the orchestrator's plan ---------------------------------------------------------------------


@dataclass
class Node:
    id: str
    worker: str
    instruction: str
    depends_on: list[str]
    state: str
    layer: int = 0


@dataclass
class Plan:
    prefix: str
    """Where the orchestrator sits in the step keys ('' at the top, 's0/0/' when nested)."""
    nodes: list[Node] = field(default_factory=list)


def _plan_of(value: Any) -> list[dict[str, Any]] | None:
    if isinstance(value, dict) and isinstance(value.get("subtasks"), list):
        subtasks = [s for s in value["subtasks"] if isinstance(s, dict) and "id" in s]
        return subtasks or None
    return None


def plans(steps: list[StepRecord]) -> list[Plan]:
    """Each orchestrator's plan (the last valid one its planner returned, or the repaired one)
    with every subtask's state from the steps under it."""
    found: dict[str, list[dict[str, Any]]] = {}
    for s in sorted(steps, key=lambda s: natural(s.key)):
        if s.status != "completed":
            continue
        value = step_output(s) if s.kind == "agent" else None
        if s.kind == "step" and s.name == "repair_plan" and isinstance(s.result, list) and s.result:
            value = s.result[0]
        subtasks = _plan_of(value)
        if subtasks is not None:
            found[s.key.rsplit("/", 1)[0] + "/" if "/" in s.key else ""] = subtasks
    return [_plan(prefix, subtasks, steps) for prefix, subtasks in sorted(found.items())]


def _plan(prefix: str, subtasks: list[dict[str, Any]], steps: list[StepRecord]) -> Plan:
    plan = Plan(prefix)
    for i, s in enumerate(subtasks):
        under = [st for st in steps if st.key.startswith(f"{prefix}s{i}/")]
        plan.nodes.append(Node(str(s["id"]), str(s.get("worker", "")), str(s.get("instruction", "")),
                               [str(d) for d in s.get("depends_on") or []], _state(under)))
    _layer(plan.nodes)
    return plan


def _state(steps: list[StepRecord]) -> str:
    if not steps:
        return "waiting"
    if any(s.status == "failed" for s in steps):
        return "failed"
    done = {s.key for s in steps if s.status == "completed"}
    return "done" if all(s.key in done for s in steps) else "running"


def _layer(nodes: list[Node]) -> None:
    """Each node's column: one past its deepest dependency (plans are validated acyclic; a
    bad one still terminates because only earlier layers are consulted)."""
    by_id = {n.id: n for n in nodes}
    for _ in range(len(nodes)):
        changed = False
        for n in nodes:
            want = max((by_id[d].layer + 1 for d in n.depends_on if d in by_id), default=0)
            if want != n.layer and want < len(nodes):
                n.layer, changed = want, True
        if not changed:
            return


# --- cost and tokens -----------------------------------------------------------------------------


@dataclass
class Usage:
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read: int = 0
    cost_usd: float = 0.0

    def add(self, s: StepRecord) -> None:
        u = s.usage or {}
        self.calls += 1
        self.input_tokens += int(u.get("input_tokens", 0) or 0)
        self.output_tokens += int(u.get("output_tokens", 0) or 0)
        self.cache_read += int(u.get("cache_read_input_tokens", 0) or 0)
        self.cost_usd += float(s.cost_usd or 0.0)


def _model_of(s: StepRecord) -> str:
    model = s.meta.get("model") or (s.result.get("model") if isinstance(s.result, dict) else None)
    return str(model or "unknown")


def costs(steps: list[StepRecord]) -> tuple[dict[str, Usage], dict[str, Usage]]:
    """(by agent, by model), from the model-call steps only, so nested agents are not counted twice."""
    by_agent: dict[str, Usage] = defaultdict(Usage)
    by_model: dict[str, Usage] = defaultdict(Usage)
    for s in steps:
        if s.kind == "model" and s.status == "completed":
            by_agent[s.name].add(s)
            by_model[_model_of(s)].add(s)
    return dict(sorted(by_agent.items())), dict(sorted(by_model.items()))


# --- events, inputs and retries ------------------------------------------------------------------


def inputs_by_key(events: list[tuple[int, str, dict[str, Any]]]) -> dict[str, Any]:
    """Step inputs the event stream carried (agent.start, tool.call), by step key."""
    found: dict[str, Any] = {}
    for _, kind, data in events:
        if kind in ("agent.start", "tool.call") and data.get("key") and data.get("input") is not None:
            found[str(data["key"])] = data["input"]
    return found


def retries_by_key(events: list[tuple[int, str, dict[str, Any]]]) -> dict[str, list[str]]:
    """Model errors by step key, as one line each ('overloaded_error (529), retried')."""
    found: dict[str, list[str]] = defaultdict(list)
    for _, kind, data in events:
        if kind == "model.error" and data.get("key"):
            then = "retried" if data.get("retryable") else "not retryable"
            found[str(data["key"])].append(f"{data.get('error_type')} ({data.get('status')}), {then}")
    return dict(found)


# --- compare -------------------------------------------------------------------------------------


def prompt_versions(steps: list[StepRecord]) -> dict[str, str]:
    """agent -> its prompt version(s), comma-separated when an agent ran with several."""
    seen: dict[str, set[str]] = defaultdict(set)
    for s in steps:
        if s.kind == "agent" and s.meta.get("prompt_version"):
            seen[s.name].add(str(s.meta["prompt_version"]))
    return {k: ", ".join(sorted(v)) for k, v in sorted(seen.items())}


def totals(run: RunRecord) -> dict[str, Any]:
    """The numbers a runs list and a comparison show for one run."""
    u = run.usage or {}
    return {"cost_usd": run.cost_usd, "input_tokens": int(u.get("input_tokens", 0) or 0),
            "output_tokens": int(u.get("output_tokens", 0) or 0), "model_calls": run.model_calls,
            "duration_s": max(0.0, run.updated_at - run.created_at)}
