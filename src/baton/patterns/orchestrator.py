"""Orchestrator-worker: an LLM plans a dependency DAG, workers run it, a synthesizer combines.

The plan is validated before anything runs (unknown worker, duplicate id, dangling or
cyclic ``depends_on``, too many subtasks). Worker names resolve ignoring case and
spacing, as route names do. An invalid plan goes back to the planner with the exact
errors (the first ``MAX_SHOWN_ERRORS`` of them); after ``max_replans`` it fails with a
``PlanError`` that carries those errors and an excerpt of the plan, never the whole
plan. Each subtask starts the moment its dependencies finish and sees only the
original task and its dependencies' outputs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from baton.agent import Agent
from baton.context import RunContext
from baton.errors import PlanError
from baton.observe import events as ev
from baton.patterns._base import (
    Target,
    as_text,
    check_distinct_names,
    describe,
    invoke,
    output_of,
    resolve_name,
    target_name,
)
from baton.patterns._settings import OrchestratorSettings
from baton.patterns.compress import Compressor
from baton.runtime.scheduler import find_cycle, run_dag
from baton.settings import check_settings, declared

MAX_SHOWN_ERRORS = 10
"""Plan problems quoted to the planner and in a PlanError; the rest are counted."""
EXCERPT_SUBTASKS = 5
"""Subtasks of an invalid plan kept in a PlanError's raw output."""


def shown_errors(errors: list[str]) -> list[str]:
    """``errors`` capped for prompts, events and messages (a 1,000-subtask plan has 1,000 problems)."""
    if len(errors) <= MAX_SHOWN_ERRORS:
        return list(errors)
    return [*errors[:MAX_SHOWN_ERRORS], f"... and {len(errors) - MAX_SHOWN_ERRORS} more problems"]


def plan_excerpt(plan: Any) -> Any:
    """An invalid plan as a PlanError carries it: the first subtasks and the count."""
    if not isinstance(plan, Mapping) or not isinstance(plan.get("subtasks"), list):
        return plan
    subtasks = plan["subtasks"]
    return {**plan, "subtasks": subtasks[:EXCERPT_SUBTASKS], "subtasks_total": len(subtasks)}


def plan_schema(workers: list[str]) -> dict[str, Any]:
    """The planner's output schema: exactly subtasks[id, worker, instruction, depends_on] + synthesis."""
    return {
        "type": "object",
        "properties": {
            "subtasks": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string", "description": "Short unique id, e.g. s1."},
                        "worker": {"type": "string", "description": "One of: " + ", ".join(workers)},
                        "instruction": {"type": "string"},
                        "depends_on": {"type": "array", "items": {"type": "string"},
                                       "description": "Ids of subtasks whose results this one needs."},
                    },
                    "required": ["id", "worker", "instruction", "depends_on"],
                    "additionalProperties": False,
                },
            },
            "synthesis_instructions": {"type": "string"},
        },
        "required": ["subtasks", "synthesis_instructions"],
        "additionalProperties": False,
    }


def grammar_plan_schema(workers: list[str], max_subtasks: int, min_subtasks: int = 1) -> dict[str, Any]:
    """The plan schema for a model that decodes under a grammar (the embedded local model).

    Tighter than ``plan_schema`` where a grammar can hold a small model to it: subtask ``i``
    has the id ``s<i>``, names one of the real workers, and depends only on earlier ids, so
    a plan decoded under it cannot name an unknown worker, dangle or cycle. Its shape is a
    small DAG: with room for three or more subtasks the first two depend on nothing (they
    start together) and each later one builds on at least one earlier result (a 135M model
    otherwise chains every step after the one before, or links none).
    """
    count = max(1, max_subtasks)
    free_start = 2 if count >= 3 else 1

    def subtask(i: int) -> dict[str, Any]:
        earlier = [f"s{j}" for j in range(1, i)] if i > free_start else []
        deps: dict[str, Any] = {"type": "array", "minItems": min(1, len(earlier)), "maxItems": len(earlier),
                                "uniqueItems": True}
        if earlier:
            deps["items"] = {"enum": earlier}
        return {"type": "object",
                "properties": {"id": {"const": f"s{i}"}, "worker": {"enum": list(workers)},
                               "instruction": {"type": "string", "minLength": 8, "maxLength": 100},
                               "depends_on": deps},
                "required": ["id", "worker", "instruction", "depends_on"], "additionalProperties": False}

    return {
        "type": "object",
        "properties": {
            "subtasks": {"type": "array", "prefixItems": [subtask(i) for i in range(1, count + 1)],
                         "items": False, "minItems": min(max(1, min_subtasks), count), "maxItems": count},
            "synthesis_instructions": {"type": "string", "maxLength": 100},
        },
        "required": ["subtasks", "synthesis_instructions"],
        "additionalProperties": False,
    }


def example_plan(workers: Mapping[str, str], max_subtasks: int) -> dict[str, Any]:
    """A worked example of a plan's shape, for a small model to copy (from the workers' own
    descriptions): the first worker twice in parallel, then each other worker after the
    step before it."""
    names = list(workers)
    order = [names[0], *names][: max(1, max_subtasks)] if len(names) > 1 else names * min(2, max_subtasks)
    subtasks: list[dict[str, Any]] = []
    for i, name in enumerate(order, start=1):
        deps = [] if i <= 2 else (["s1", "s2"] if i == 3 else [f"s{i - 1}"])
        text = (workers[name] or f"Do the {name} part of the task").rstrip(".")[:100]
        subtasks.append({"id": f"s{i}", "worker": name, "instruction": text, "depends_on": deps})
    return {"subtasks": subtasks, "synthesis_instructions": "Combine the results into one answer"}


def validate_plan(plan: Mapping[str, Any], workers: list[str], max_subtasks: int) -> list[str]:
    """Every problem with a plan, as messages the planner can act on (empty when valid)."""
    errors: list[str] = []
    subtasks = plan.get("subtasks")
    if not isinstance(subtasks, list) or not subtasks:
        return ["the plan has no subtasks"]
    if len(subtasks) > max_subtasks:
        errors.append(f"the plan has {len(subtasks)} subtasks; the limit is {max_subtasks}")
    ids: list[str] = [str(s.get("id", "")) for s in subtasks]
    seen: set[str] = set()
    for sid in ids:
        if not sid:
            errors.append("a subtask has an empty id")
        elif sid in seen:
            errors.append(f"duplicate subtask id {sid!r}")
        seen.add(sid)
    for s in subtasks:
        sid = s.get("id")
        if resolve_name(s.get("worker"), workers) is None:
            errors.append(f"subtask {sid!r} names unknown worker {s.get('worker')!r}; available: {', '.join(workers)}")
        for dep in s.get("depends_on") or []:
            if dep == sid:
                errors.append(f"subtask {sid!r} depends on itself")
            elif dep not in seen:
                errors.append(f"subtask {sid!r} depends on unknown subtask {dep!r}")
    if not errors:
        cycle = find_cycle({str(s["id"]): [str(d) for d in s.get("depends_on") or []] for s in subtasks})
        if cycle:
            errors.append("dependency cycle: " + " -> ".join(cycle))
    return errors


def repair_plan(plan: Mapping[str, Any], workers: list[str], max_subtasks: int) -> tuple[dict[str, Any], list[str]]:
    """Make a plan valid by the smallest deterministic edits, saying what was changed.

    Used only when ``repair_plan`` is on and re-planning did not help (small local
    models): truncate to the limit, rename empty/duplicate ids, send unknown workers to
    the first worker, and keep only dependencies on *earlier* subtasks (no dangling
    ids, no cycles).
    """
    notes: list[str] = []
    raw = [s for s in plan.get("subtasks") or [] if isinstance(s, Mapping)]
    if len(raw) > max_subtasks:
        notes.append(f"dropped {len(raw) - max_subtasks} subtasks over the limit of {max_subtasks}")
        raw = raw[:max_subtasks]
    if not raw:
        raw = [{"id": "s1", "worker": workers[0], "instruction": "Do the whole task.", "depends_on": []}]
        notes.append("the plan had no subtasks; made one for the whole task")
    fixed: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, s in enumerate(raw):
        sid = str(s.get("id") or "")
        if not sid or sid in seen:
            new = f"s{i + 1}"
            while new in seen:
                new += "_"
            notes.append(f"renamed subtask id {sid!r} to {new!r}")
            sid = new
        worker = resolve_name(s.get("worker"), workers)
        if worker is None:
            notes.append(f"subtask {sid!r}: unknown worker {s.get('worker')!r} replaced by {workers[0]!r}")
            worker = workers[0]
        deps = []
        for d in s.get("depends_on") or []:
            if d in seen and d not in deps:
                deps.append(d)
            else:
                notes.append(f"subtask {sid!r}: dropped dependency {d!r} (not an earlier subtask)")
        fixed.append({"id": sid, "worker": worker, "instruction": str(s.get("instruction") or ""), "depends_on": deps})
        seen.add(sid)
    return {"subtasks": fixed, "synthesis_instructions": str(plan.get("synthesis_instructions") or "")}, notes


def _canonical(plan: Mapping[str, Any], workers: list[str]) -> dict[str, Any]:
    """A valid plan with each worker written as it was declared (the model may differ in case or spacing)."""
    subtasks = [{**s, "worker": resolve_name(s.get("worker"), workers)} for s in plan["subtasks"]]
    return {**plan, "subtasks": subtasks}


@dataclass
class Orchestrator:
    """A planner splits the task into subtasks with dependencies (validated, re-planned or
    repaired), workers run them as a DAG, and an optional synthesizer writes the answer."""

    planner: Agent
    workers: Mapping[str, Target]
    synthesizer: Agent | None = None
    max_subtasks: int = declared(OrchestratorSettings, "max_subtasks")
    max_replans: int = declared(OrchestratorSettings, "max_replans")
    concurrency: int | None = declared(OrchestratorSettings, "concurrency")
    """Subtasks in flight at once (None: the run's concurrency limit)."""
    name: str = "orchestrator"
    repair_plan: bool = declared(OrchestratorSettings, "repair_plan")
    """After the last re-plan, repair a still-invalid plan deterministically instead of failing."""
    compress: Compressor | None = None
    """Summarise long dependency outputs with a cheap model before handing them on."""
    min_subtasks: int = declared(OrchestratorSettings, "min_subtasks")
    """Fewest subtasks a plan may have (in the plan's schema: Claude sees it, a grammar enforces it)."""
    _planner: Agent = field(init=False, repr=False)
    _grammar_planner: Agent = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_settings(self, "orchestrator")
        if isinstance(self.workers, list):
            self.workers = {target_name(w): w for w in self.workers}
        check_distinct_names(self.workers, f"orchestrator {self.name!r}", "workers")
        schema = plan_schema(list(self.workers))
        if self.min_subtasks > 1:
            schema["properties"]["subtasks"]["minItems"] = min(self.min_subtasks, self.max_subtasks)
        self._planner = self.planner.with_(output=schema)
        self._grammar_planner = self.planner.with_(
            output=grammar_plan_schema(list(self.workers), self.max_subtasks, self.min_subtasks))

    def _planning_prompt(self, task: Any, *, example: bool = False) -> str:
        lines = [f"Task:\n{as_text(task)}", "", "Workers you can assign subtasks to:"]
        for wname, worker in self.workers.items():
            desc = worker.description if isinstance(worker, Agent) else getattr(worker, "description", "")
            lines.append(f"- {wname}: {desc or 'no description'}")
        lines += ["", f"Break the task into at most {self.max_subtasks} subtasks. Give each a unique id; list in "
                  "depends_on the ids whose results it needs (no cycles). Subtasks without dependencies run in "
                  "parallel."]
        if example:  # a small model copies a worked example far better than it follows the rules above
            shape = example_plan({n: describe(w) for n, w in self.workers.items()}, self.max_subtasks)
            lines += ["", "Example of a plan's shape (for another task):", json.dumps(shape, separators=(",", ":"))]
        return "\n".join(lines)

    async def plan(self, ctx: RunContext, task: Any) -> dict[str, Any]:
        workers = list(self.workers)
        # A grammar-bound planner (the local model) gets the positional schema it cannot break
        # and a worked example; Claude gets neither.
        bound = ctx.grammar_bound(self.planner)
        planner = self._grammar_planner if bound else self._planner
        prompt = self._planning_prompt(task, example=bound)
        errors: list[str] = []
        attempts = self.max_replans + 1
        for attempt in range(1, attempts + 1):
            if errors:
                prompt = (f"{self._planning_prompt(task, example=bound)}\n\nYour previous plan was invalid:\n- "
                          + "\n- ".join(shown_errors(errors)) + "\nReturn a corrected plan.")
            plan = output_of(await ctx.call(planner, prompt))
            errors = validate_plan(plan, workers, self.max_subtasks)
            if not errors:
                return _canonical(plan, workers)
            after = "replan" if attempt < attempts else ("repair" if self.repair_plan else "fail")
            ctx.emit(ev.PLAN_INVALID, {"errors": shown_errors(errors), "attempt": attempt, "attempts": attempts,
                                       "next": after})
        if self.repair_plan:
            # Journaled as a step so a resumed run sees the same repaired plan.
            repaired = await ctx.step("repair_plan", lambda: repair_plan(plan, workers, self.max_subtasks))
            ctx.emit(ev.PLAN_REPAIRED, {"errors": shown_errors(errors), "changes": shown_errors(repaired[1]),
                                        "attempts": self.max_replans + 1})
            return dict(repaired[0])
        shown = shown_errors(errors)
        raise PlanError(f"{self.name}: the plan is still invalid after {attempts} attempts: " + "; ".join(shown),
                        raw_output=plan_excerpt(plan), errors=shown)

    async def __call__(self, ctx: RunContext, task: Any) -> Any:
        plan = await self.plan(ctx, task)
        subtasks = {str(s["id"]): s for s in plan["subtasks"]}
        index = {sid: i for i, sid in enumerate(subtasks)}
        deps = {sid: [str(d) for d in s.get("depends_on") or []] for sid, s in subtasks.items()}
        results: dict[str, Any] = {}

        async def run_subtask(sid: str) -> Any:
            s = subtasks[sid]
            parts = [f"Overall task:\n{as_text(task)}", f"Your subtask ({sid}):\n{s['instruction']}"]
            # Keyed by plan position: the journal key must not depend on start order.
            scope = ctx.named(f"s{index[sid]}")
            for dep in deps[sid]:
                context = as_text(results[dep])
                if self.compress is not None:
                    context = await self.compress(scope.named(f"compress-{index[dep]}"), context)
                parts.append(f"Result of {dep}:\n{context}")
            out = await invoke(scope, self.workers[s["worker"]], "\n\n".join(parts))
            results[sid] = out
            return out

        limit = self.concurrency or ctx.limits.concurrency
        await run_dag(deps, run_subtask, concurrency=limit)
        if self.synthesizer is None:
            return {sid: results[sid] for sid in subtasks}
        summary = [f"Task:\n{as_text(task)}", f"Instructions:\n{plan.get('synthesis_instructions', '')}"]
        for sid, s in subtasks.items():
            summary.append(f"[{sid}] {s['instruction']}\n{as_text(results[sid])}")
        return output_of(await ctx.named("synthesis").call(self.synthesizer, "\n\n".join(summary)))
