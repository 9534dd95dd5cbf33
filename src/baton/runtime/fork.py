"""Time travel: a new run that reuses a finished (or stopped) run's journal up to one step.

``fork(run_id, at=STEP)`` copies the parent's completed steps that were journaled before
STEP (in the journal's order; STEP's own sub-steps and the steps enclosing it are not
copied), puts an edited result at STEP when one is given (else STEP executes again), and
runs the same workflow on the new run: the copied steps replay, everything from STEP on
executes. The parent is never written to.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from baton.errors import UsageError
from baton.observe.events import new_id
from baton.runtime.budget import Limits
from baton.runtime.ids import check_run_id
from baton.runtime.workflows import SHA_KEY, workflow_ref
from baton.stores import using_store
from baton.stores.base import RunRecord, StepRecord

if TYPE_CHECKING:
    from baton.runtime.engine import Engine, RunResult, Workflow

FORK_KEY = "fork"
"""Run metadata: ``{"parent": RUN_ID, "at": STEP, "edited": bool}``."""
FORKED_FROM = "forked_from"
"""Step meta of a copied step: the parent run id (its cost was spent there, not in the fork)."""
_EDITABLE = ("model", "agent", "tool", "step")


def steps_before(steps: list[StepRecord], at: str) -> list[StepRecord]:
    """The completed steps journaled before ``at``, less ``at``'s own sub-steps and the steps that
    enclose it (those finish after it and must execute again around the new result)."""
    keys = [s.key for s in steps]
    if at not in keys:
        shown = ", ".join(keys[:12]) + (" ..." if len(keys) > 12 else "")
        raise UsageError(f"step {at!r} is not in the run's journal; its steps: {shown or 'none'}")
    out: list[StepRecord] = []
    for s in steps[:keys.index(at)]:
        inside = s.key.startswith(at + "/")
        encloses = at.startswith(s.key + "/")
        if s.status == "completed" and not inside and not encloses:
            out.append(s)
    return out


def edited_step(rec: StepRecord, edit: Any, run_id: str) -> StepRecord:
    """``rec`` with its result replaced by ``edit``: a model step's answer becomes the text
    ``edit`` (one text block, end_turn; see ``_edited_answer`` for one tool call); an agent step's output becomes ``edit``; a tool or
    plain step's result becomes ``edit``."""
    if rec.status != "completed" or rec.kind not in _EDITABLE:
        raise UsageError(f"step {rec.key!r} is a {rec.status} {rec.kind} step; only a completed model, agent, "
                         f"tool or plain step can be edited (fork without --edit to execute it again)")
    if rec.kind == "model":
        if not isinstance(edit, str):
            raise UsageError(f"step {rec.key!r} is a model step: its edit must be text")
        result: Any = _edited_answer(rec.result or {}, edit)
    elif rec.kind == "agent":
        old = (rec.result or {}).get("output")
        if isinstance(edit, str) and old is not None and not isinstance(old, str):
            edit = _json_or_text(edit)  # a structured output edited as JSON text (the CLI's --edit)
        result = {**(rec.result or {}), "output": edit}
    else:
        result = edit
    meta = {**rec.meta, FORKED_FROM: rec.run_id, "edited": True}
    now = time.time()
    return StepRecord(run_id, rec.key, rec.kind, rec.name, "completed", result=result, started_at=now,
                      ended_at=now, usage={}, cost_usd=0.0, attempts=0, meta=meta)


def _edited_answer(answer: dict[str, Any], edit: str) -> dict[str, Any]:
    """A model answer with ``edit`` in place of what it said. An answer that was one tool call (a
    structured output's forced tool, a plan) and an edit that is a JSON object: the edit is that
    call's input. Otherwise the answer becomes the text ``edit``."""
    uses = [b for b in answer.get("content") or [] if isinstance(b, dict) and b.get("type") == "tool_use"]
    if len(uses) == 1:
        value = _json_or_text(edit)
        if isinstance(value, dict):
            return {**answer, "content": [{**uses[0], "input": value}], "stop_reason": "tool_use"}
    return {**answer, "content": [{"type": "text", "text": edit}], "stop_reason": "end_turn"}


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _copied(rec: StepRecord, run_id: str) -> StepRecord:
    d = rec.to_dict()
    d["run_id"] = run_id
    d["meta"] = {**rec.meta, FORKED_FROM: rec.run_id}
    return StepRecord.from_dict(d)


async def fork(engine: Engine, run_id: str, at: str, *, edit: Any = None, workflow: Workflow | None = None,
               new_run_id: str | None = None) -> RunResult:
    """Make and execute the fork of ``run_id`` at step ``at`` (see the module doc)."""
    check_run_id(run_id)
    fork_id = check_run_id(new_run_id, source="run_id") if new_run_id is not None else new_id(8)
    async with using_store(engine.store) as store:
        parent = await store.get_run(run_id)
        steps = await store.load_steps(run_id)
        kept = [_copied(s, fork_id) for s in steps_before(steps, at)]
        if edit is not None:
            kept.append(edited_step(next(s for s in steps if s.key == at), edit, fork_id))
        chosen = engine._workflow_for(parent, workflow, "fork")  # the same rules as resume
        record = _fork_record(parent, fork_id, at, edited=edit is not None)
        sha = getattr(chosen, "sha256", None)
        if workflow is not None and isinstance(sha, str) and sha:  # the file named now is the one to check next time
            record.workflow, record.metadata[SHA_KEY] = workflow_ref(chosen), sha
        await store.create_run(record)
        if kept:
            await store.put_steps(kept)
        limits = Limits.from_dict(record.limits)
        return await engine._execute(store, record, chosen, limits, force=False)


def _fork_record(parent: RunRecord, fork_id: str, at: str, *, edited: bool) -> RunRecord:
    metadata = {k: v for k, v in parent.metadata.items() if k not in ("warnings", FORK_KEY)}
    metadata[FORK_KEY] = {"parent": parent.run_id, "at": at, "edited": edited}
    return RunRecord(run_id=fork_id, workflow=parent.workflow, input=parent.input, limits=dict(parent.limits),
                     metadata=metadata)
