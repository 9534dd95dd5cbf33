"""Pipeline: stages run one after another, each handing an explicit snapshot to the next.

Between stages the pipeline records an immutable ``HandoffNote`` (what was asked, what the
stage produced, what comes next). An agent stage reads the previous output followed
by the handoff; a nested workflow stage gets the previous output unchanged (so a
fan-out over JSON still parses it) and the handoff as ``ctx.state``. A stage's gate
runs right after it; a rejection stops the pipeline. Every stage is journaled, so a
resumed run continues from the first stage that did not complete.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from baton.agent import Agent
from baton.context import HandoffNote, RunContext
from baton.errors import StepFailed, UsageError
from baton.patterns._base import Target, as_text, describe, invoke, is_fatal, jsonable, target_name
from baton.patterns.gates import Gate


@dataclass
class Stage:
    """A pipeline stage with options: a gate that checks its output, and a name for its step keys."""

    target: Target
    gate: Gate | None = None
    name: str | None = None

    @property
    def label(self) -> str:
        return self.name or target_name(self.target)


@dataclass
class Pipeline:
    """Stages in order, each one's output the next one's input."""

    stages: list[Target | Stage]
    name: str = "pipeline"

    def __post_init__(self) -> None:
        if not self.stages:
            raise UsageError(f"pipeline {self.name!r} needs at least one stage")
        self._stages = [s if isinstance(s, Stage) else Stage(s) for s in self.stages]

    async def __call__(self, ctx: RunContext, input: Any) -> Any:
        stages = self._stages
        value: Any = input
        handoff: HandoffNote | None = None
        for i, stage in enumerate(stages):
            where = f"pipeline {self.name!r}: stage {i + 1} of {len(stages)} ({stage.label})"
            stage_input = value if handoff is None else self._stage_input(stage, value, handoff)
            try:
                value = await invoke(ctx, stage.target, stage_input)
            except Exception as exc:
                if is_fatal(exc):
                    raise
                raise StepFailed(f"{where} failed: {type(exc).__name__}: {exc}", step=stage.label,
                                 attempts=[f"{stage.label}: {type(exc).__name__}: {exc}"]) from exc
            if stage.gate is not None:
                try:
                    verdict = await stage.gate.check(ctx, value)
                except Exception as exc:
                    if is_fatal(exc):
                        raise
                    raise StepFailed(f"{where}: gate {stage.gate.name!r} failed: {type(exc).__name__}: {exc}",
                                     step=stage.label) from exc
                if not verdict.valid:
                    raise StepFailed(f"{where} was rejected by gate {stage.gate.name!r}: "
                                     + "; ".join(verdict.reasons), step=stage.label, attempts=list(verdict.reasons))
            if i + 1 < len(stages):
                nxt = stages[i + 1]
                what = describe(nxt.target)
                handoff = await ctx.record_handoff(
                    stage.label, nxt.label, asked=as_text(input), found={"output": jsonable(value)},
                    next=f"stage {i + 2} of {len(stages)}: {nxt.label}" + (f" ({what})" if what else ""))
        return value

    @staticmethod
    def _stage_input(stage: Stage, value: Any, handoff: HandoffNote) -> Any:
        if not isinstance(stage.target, Agent):
            return value
        # The output is shown once, as text; the rendered handoff carries the rest.
        note = dataclasses.replace(handoff, found={}).render()
        return f"{as_text(value)}\n\n---\n{note}"
