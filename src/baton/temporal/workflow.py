"""The Temporal workflow that hosts baton runs: one workflow execution per run (id = run id).

This module is loaded inside Temporal's workflow sandbox; baton's own modules pass
through it (imported once, outside), and everything they do on the workflow side
depends only on the run's arguments and the activities' recorded results.
"""

from __future__ import annotations

from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from baton.errors import BatonError
    from baton.runtime.budget import Limits
    from baton.temporal.context import context_for
    from baton.temporal.flow import CallOptions, WorkflowRuntime, execute, new_runtime, refuse

WORKFLOW_NAME = "baton.run"


@workflow.defn(name=WORKFLOW_NAME)
class BatonRun:
    """Arguments: ``{run_id, workflow, sha256, input, limits, options, task_queue}``; result: the run's ``--json`` object."""

    def __init__(self) -> None:
        self._runtime: WorkflowRuntime | None = None
        self._early: dict[str, dict[str, Any]] = {}

    @workflow.run
    async def run(self, args: dict[str, Any]) -> dict[str, Any]:
        worker = context_for(workflow.info().task_queue, args.get("task_queue"))
        name = str(args["workflow"])
        try:
            hosted = worker.workflow(name, args.get("sha256"))
            limits = Limits.from_dict(args.get("limits"))
            options = CallOptions.from_dict(args.get("options"))
        except BatonError as exc:  # told once, in the run's record: a workflow task would retry forever
            runtime = new_runtime(worker, str(args["run_id"]), name, Limits(), CallOptions(), None)
            return await refuse(runtime, exc)
        runtime = new_runtime(worker, str(args["run_id"]), hosted.name, limits, options,
                              getattr(hosted.workflow, "retry", None))
        runtime.decisions.update(self._early)
        self._runtime = runtime
        return await execute(runtime, hosted.workflow, args.get("input"))

    @workflow.signal(name="decide")
    def decide(self, decision: dict[str, Any]) -> None:
        """A human decision: ``{step, approved, edit?, by?, note?}``."""
        step = str(decision.get("step"))
        value = {k: decision.get(k) for k in ("approved", "edit", "by", "note")}
        if self._runtime is None:
            self._early[step] = value
        else:
            self._runtime.decisions[step] = value

    @workflow.query(name="state")
    def state(self) -> dict[str, Any]:
        """Where the run stands: steps awaiting a decision, model calls and cost so far."""
        rt = self._runtime
        if rt is None:
            return {"status": "pending", "waiting": {}, "model_calls": 0, "cost_usd": 0.0}
        return {"status": "awaiting_approval" if rt.waiting else "running", "waiting": dict(rt.waiting),
                "model_calls": rt.budget.model_calls, "cost_usd": rt.budget.cost_usd}
