"""Validation gates and fallback chains.

A ``Gate`` checks a value and returns a ``Verdict``: an agent check answers through
a forced verdict schema, a Python check returns ``bool`` or ``Verdict`` (sync or
async) and its verdict is journaled, so a resumed run sees the same decision. A
``FallbackChain`` tries its targets in order until one succeeds and passes the gate.

The helpers at the bottom (``is_fatal``, ``own_scope``, ``describe``) are shared by
the other pattern modules.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from baton.agent import Agent
from baton.context import RunContext
from baton.errors import (
    StepFailed,
    UsageError,
)
from baton.patterns._base import Target, as_text, invoke, is_fatal, output_of, own_scope, target_name

VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "valid": {"type": "boolean", "description": "True if the output meets every requirement."},
        "reasons": {"type": "array", "items": {"type": "string"},
                    "description": "What is wrong (or notable) about the output, one item per problem."},
    },
    "required": ["valid", "reasons"],
    "additionalProperties": False,
}


@dataclass(slots=True)
class Verdict:
    """A gate's judgement of an output: valid or not, and why."""

    valid: bool
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"valid": self.valid, "reasons": list(self.reasons)}


CheckResult = bool | Verdict
Check = Agent | Callable[[Any], CheckResult | Awaitable[CheckResult]]


class Gate:
    """Checks a value. ``check`` is an Agent (it gets the verdict schema) or a function
    of the value returning ``bool`` or ``Verdict`` (sync or async)."""

    def __init__(self, check: Check, name: str = "gate") -> None:
        if not isinstance(check, Agent) and not callable(check):
            raise UsageError(f"gate {name!r}: check must be an Agent or a function, not {type(check).__name__}")
        if name == "gate":
            own = check.name if isinstance(check, Agent) else str(getattr(check, "__name__", ""))
            name = own if own and not own.startswith("<") else "gate"
        self.name = name
        self.check_with: Check = check
        self._agent: Agent | None = check.with_(output=VERDICT_SCHEMA) if isinstance(check, Agent) else None

    def __repr__(self) -> str:
        return f"Gate({self.name!r})"

    async def check(self, ctx: RunContext, value: Any) -> Verdict:
        """Check ``value``. A function that raises counts as a rejection naming the exception."""
        if self._agent is not None:
            prompt = ("Check the following output. Set valid to false if it fails any requirement and list "
                      f"every problem in reasons.\n\nOutput to check:\n{as_text(value)}")
            out = output_of(await ctx.call(self._agent, prompt))
            return self._verdict(bool(out["valid"]), [str(r) for r in out.get("reasons") or []])
        stored = await ctx.step(f"gate:{self.name}", self._run_function, value)
        return Verdict(bool(stored["valid"]), [str(r) for r in stored["reasons"]])

    async def _run_function(self, value: Any) -> dict[str, Any]:
        fn: Callable[[Any], Any] = self.check_with  # type: ignore[assignment]
        try:
            result = fn(value)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            if is_fatal(exc):
                raise
            return self._verdict(False, [f"{self.name} raised {type(exc).__name__}: {exc}"]).to_dict()
        if isinstance(result, Verdict):
            return self._verdict(result.valid, list(result.reasons)).to_dict()
        if isinstance(result, bool):
            return self._verdict(result, []).to_dict()
        raise UsageError(f"gate {self.name!r} returned {type(result).__name__}; expected bool or Verdict")

    def _verdict(self, valid: bool, reasons: list[str]) -> Verdict:
        if not valid and not reasons:
            reasons = [f"{self.name} rejected the output without giving a reason"]
        return Verdict(valid, reasons)


@dataclass
class FallbackChain:
    """Try each target in order until one succeeds and passes ``gate``."""

    targets: list[Target]
    gate: Gate | None = None
    name: str = "fallback"

    def __post_init__(self) -> None:
        if not self.targets:
            raise UsageError(f"fallback chain {self.name!r} needs at least one target")

    async def __call__(self, ctx: RunContext, input: Any) -> Any:
        scope = own_scope(ctx, self.name)
        attempts: list[str] = []
        for i, target in enumerate(self.targets):
            # Each attempt has its own named scope: an attempt that failed (and is not
            # journaled) may succeed on resume without shifting the keys of the others.
            attempt = scope.named(f"try{i}")
            tname = target_name(target)
            try:
                out = await invoke(attempt, target, input)
            except Exception as exc:
                if is_fatal(exc):
                    raise
                attempts.append(f"{tname}: {type(exc).__name__}: {exc}")
                continue
            if self.gate is not None:
                verdict = await self.gate.check(attempt, out)
                if not verdict.valid:
                    attempts.append(f"{tname}: rejected by gate {self.gate.name!r}: " + "; ".join(verdict.reasons))
                    continue
            return out
        raise StepFailed(f"{self.name}: all {len(self.targets)} targets failed:\n- " + "\n- ".join(attempts),
                         step=self.name, attempts=attempts)
