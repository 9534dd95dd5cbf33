"""Refine: draft, have critics review in parallel, revise with their feedback, repeat.

A round is one review by every critic (each answers ``{"approved", "feedback"}``)
followed, unless all approve, by one revision. It stops when every critic approves
or after ``max_rounds`` reviews, and returns the latest draft: at most
``1 + max_rounds * len(critics) + (max_rounds - 1)`` agent calls, never more.
Each round's verdicts go on the event stream as ``refine.round``.

A draft the critics never approved is not passed off as a plain success: the run
carries a ``not_approved`` warning naming the critics and their last feedback
(``RunResult.warnings``, ``--json``, ``baton show``, stderr), and with
``require_approval=True`` the step fails instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from baton.agent import Agent
from baton.context import RunContext
from baton.errors import StepFailed, UsageError
from baton.json_schema import validation_errors
from baton.observe import events as ev
from baton.patterns._base import CallFailed, Target, as_text, invoke, labelled, target_name
from baton.patterns._settings import RefineSettings
from baton.settings import check_settings, declared

ROUND_EVENT = ev.REFINE_ROUND

CRITIQUE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "approved": {"type": "boolean", "description": "True only if the draft needs no further change."},
        "feedback": {"type": "string", "description": "Specific, actionable problems to fix (empty if approved)."},
    },
    "required": ["approved", "feedback"],
    "additionalProperties": False,
}


@dataclass
class Refine:
    """Draft, critique and revise: critics review the draft until they approve it or ``max_rounds`` ends."""

    drafter: Target
    critics: list[Target]
    max_rounds: int = declared(RefineSettings, "max_rounds")
    reviser: Target | None = None
    name: str = "refine"
    require_approval: bool = declared(RefineSettings, "require_approval")
    """Fail (``StepFailed``) instead of returning a draft the critics did not approve."""
    _critics: list[Target] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.critics:
            raise UsageError(f"refine {self.name!r} needs at least one critic")
        check_settings(self, "refine")
        names = [target_name(c) for c in self.critics]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise UsageError(f"refine {self.name!r}: critic names must be unique; repeated: {', '.join(dupes)}")
        self._critics = [c.with_(output=CRITIQUE_SCHEMA) if isinstance(c, Agent) else c for c in self.critics]

    async def __call__(self, ctx: RunContext, task: Any) -> Any:
        draft = await invoke(ctx, self.drafter, task)
        for round_no in range(1, self.max_rounds + 1):
            reviews = await self._review(ctx, task, draft, round_no)
            approved = all(r["approved"] for r in reviews.values())
            ctx.emit(ROUND_EVENT, {"name": self.name, "round": round_no, "approved": approved,
                                   "critics": {c: r["approved"] for c, r in reviews.items()}})
            if approved:
                return draft
            if round_no == self.max_rounds:
                return self._unapproved(ctx, draft, reviews)
            feedback = "\n".join(f"- {c} ({'approved' if r['approved'] else 'changes requested'}): {r['feedback']}"
                                 for c, r in reviews.items())
            prompt = (f"Task:\n{as_text(task)}\n\nYour previous draft:\n{as_text(draft)}\n\n"
                      f"Reviewer feedback (round {round_no} of {self.max_rounds}):\n{feedback}\n\n"
                      "Revise the draft to address every point. Reply with the complete revised draft only.")
            draft = await invoke(ctx, self.reviser or self.drafter, prompt)
        return draft  # not reached: the last round returns

    def _unapproved(self, ctx: RunContext, draft: Any, reviews: dict[str, dict[str, Any]]) -> Any:
        rejected = [f"{c}: {_clip(r['feedback']) or 'no feedback'}" for c, r in reviews.items() if not r["approved"]]
        message = (f"refine {self.name!r}: the critics did not approve the draft after {self.max_rounds} "
                   f"round{'s' if self.max_rounds != 1 else ''} ({'; '.join(rejected)})")
        if self.require_approval:
            raise StepFailed(message + "; require_approval is set, so the draft is not used", step=self.name,
                             attempts=rejected)
        ctx.warn(f"refine {self.name!r}", "not_approved", message + "; the last draft was returned")
        return draft

    async def _review(self, ctx: RunContext, task: Any, draft: Any, round_no: int) -> dict[str, dict[str, Any]]:
        prompt = (f"Task:\n{as_text(task)}\n\nDraft to review (round {round_no} of {self.max_rounds}):\n"
                  f"{as_text(draft)}\n\nApprove it only if it fully meets the task; otherwise say exactly what "
                  "to change.")
        names = [target_name(c) for c in self._critics]
        try:
            outs = await ctx.gather(*(labelled(n, invoke(ctx, c, prompt)) for n, c in zip(names, self._critics,
                                                                                          strict=True)))
        except CallFailed as failed:
            exc = failed.error
            raise StepFailed(f"refine {self.name!r}: critic {failed.label!r} failed in round {round_no}: "
                             f"{type(exc).__name__}: {exc}", step=self.name,
                             attempts=[f"{failed.label}: {type(exc).__name__}: {exc}"]) from exc
        reviews: dict[str, dict[str, Any]] = {}
        for critic, out in zip(names, outs, strict=True):
            data = out.model_dump(mode="json") if hasattr(out, "model_dump") else out
            errors = validation_errors(data, CRITIQUE_SCHEMA)
            if errors:
                raise StepFailed(f"refine {self.name!r}: critic {critic!r} did not return "
                                 "{approved, feedback}: " + "; ".join(errors), step=self.name)
            reviews[critic] = data
        return reviews


def _clip(text: Any, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
