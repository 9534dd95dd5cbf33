"""Fan-out: run many calls at once, then aggregate.

Two shapes: the same input to several agents (perspectives), or one call per item of
the input (``over="lines"``: each non-empty line; ``over="json"``: each element of a
JSON array). Every call is started before any is awaited, so journal keys follow
list order whatever finishes first. The policy says how failures count:

- ``all``: any failure fails the step (the rest are cancelled);
- ``best_effort``: failures are dropped; the step fails only if nothing succeeded;
- ``quorum:K``: at least K calls must succeed.

Items are capped by ``max_items`` (default 100): a longer list, typically one a model
wrote, fails the step before any item is called, naming the count and the cap.

The aggregator is an agent (it gets the labelled results as text), a nested workflow
(it gets the list), or a plain function of the list. Without one, the list of
successful outputs is returned in input order.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from baton.agent import Agent
from baton.context import RunContext
from baton.errors import StepFailed, UsageError, WorkflowError
from baton.observe import events as ev
from baton.patterns._base import (
    CallFailed,
    Target,
    as_text,
    invoke,
    is_fatal,
    labelled,
    output_of,
    target_name,
)
from baton.patterns._settings import FanOutSettings
from baton.settings import check_settings, declared

SUMMARY_EVENT = ev.FAN_OUT_DONE


def parse_policy(policy: str) -> tuple[str, int]:
    """``"all"``, ``"best_effort"`` or ``"quorum:K"`` as (kind, K)."""
    if policy in ("all", "best_effort"):
        return policy, 0
    kind, _, count = policy.partition(":")
    if kind == "quorum" and count.strip().isdigit() and int(count) >= 1:
        return "quorum", int(count)
    raise UsageError(f"unknown fan-out policy {policy!r}; expected 'all', 'best_effort' or 'quorum:K' (K >= 1)")


def is_list_function(fn: Any) -> bool:
    """A plain aggregator ``f(results)`` rather than a nested workflow ``f(ctx, input)``."""
    if isinstance(fn, Agent) or not callable(fn):
        return False
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                  and p.default is p.empty]
    return len(positional) == 1


@dataclass
class FanOut:
    """The same input to several agents (``agents``), or one call per item of the input (``each``),
    concurrently; an optional aggregator combines the results, the ``policy`` says how failures count."""

    agents: list[Target] | None = None
    each: Target | None = None
    over: Literal["lines", "json"] = "lines"
    aggregator: Target | Callable[[list[Any]], Any] | None = None
    policy: str = "all"
    name: str = "fan_out"
    max_items: int = declared(FanOutSettings, "max_items")
    """The most items an ``each`` fan-out calls its target with; more fails the step."""
    batch: bool = declared(FanOutSettings, "batch")
    """Send the branches' model calls (agent targets) through the Message Batches API: they go
    out together as one batch at half price (``baton.runtime.batch``)."""

    def __post_init__(self) -> None:
        if (self.agents is None) == (self.each is None):
            raise UsageError(f"fan-out {self.name!r}: give either agents (same input to each) or each "
                             "(one call per item), not both or neither")
        if self.agents is not None and not self.agents:
            raise UsageError(f"fan-out {self.name!r}: agents is empty")
        if self.over not in ("lines", "json"):
            raise UsageError(f"fan-out {self.name!r}: over must be 'lines' or 'json', not {self.over!r}")
        check_settings(self, "fan_out")
        self._kind, self._quorum = parse_policy(self.policy)
        if self.batch:
            self.agents = None if self.agents is None else [_batched(a) for a in self.agents]
            self.each = None if self.each is None else _batched(self.each)
        if self.agents is not None and self._quorum > len(self.agents):
            raise UsageError(f"fan-out {self.name!r}: quorum {self._quorum} is more than the "
                             f"{len(self.agents)} agents")

    def items(self, input: Any) -> list[Any]:
        """The items an ``each`` fan-out calls its target with."""
        if self.over == "lines":
            text = as_text(input)
            items: list[Any] = [line.strip() for line in text.splitlines() if line.strip()]
            if not items:
                raise WorkflowError(f"fan-out {self.name!r}: the input has no non-empty lines to fan out over",
                                    field="input")
            return items
        if isinstance(input, list):
            data: Any = input
        else:
            try:
                data = orjson.loads(as_text(input))
            except orjson.JSONDecodeError as exc:
                raise WorkflowError(f"fan-out {self.name!r}: the input is not valid JSON ({exc}); expected a "
                                    "JSON array", field="input") from exc
        if not isinstance(data, list):
            raise WorkflowError(f"fan-out {self.name!r}: expected a JSON array, got {type(data).__name__}",
                                field="input")
        if not data:
            raise WorkflowError(f"fan-out {self.name!r}: the JSON array is empty", field="input")
        return data

    async def __call__(self, ctx: RunContext, input: Any) -> Any:
        if self.agents is not None:
            labels = [target_name(a) for a in self.agents]
            calls = [invoke(ctx, a, input) for a in self.agents]
        else:
            assert self.each is not None
            items = self.items(input)
            if len(items) > self.max_items:
                raise StepFailed(f"fan-out {self.name!r}: the input has {len(items)} items, more than max_items "
                                 f"({self.max_items}); nothing was called. Raise max_items or shorten the input",
                                 step=self.name, attempts=[f"{len(items)} items > max_items {self.max_items}"])
            labels = [f"item {i + 1}: {_short(item)}" for i, item in enumerate(items)]
            calls = [invoke(ctx, self.each, item) for item in items]
        results = await self._gather(ctx, calls, labels)
        ok = [(label, r) for label, r in zip(labels, results, strict=True) if not isinstance(r, BaseException)]
        failures = [f"{label}: {type(r).__name__}: {r}" for label, r in zip(labels, results, strict=True)
                    if isinstance(r, BaseException)]
        ctx.emit(SUMMARY_EVENT, {"name": self.name, "total": len(labels), "succeeded": len(ok), "failed": failures})
        needed = {"all": len(labels), "best_effort": 1, "quorum": self._quorum}[self._kind]
        if len(ok) < needed:
            what = ("quorum not reached: " if self._kind == "quorum" else "too few calls succeeded: ")
            raise StepFailed(f"fan-out {self.name!r}: {what}{needed} of {len(labels)} needed, {len(ok)} succeeded"
                             + ("\n- " + "\n- ".join(failures) if failures else ""),
                             step=self.name, attempts=failures)
        outputs = [r for _, r in ok]
        if self.aggregator is None:
            return outputs
        return await self._aggregate(ctx, input, ok, failures)

    async def _gather(self, ctx: RunContext, calls: list[Any], labels: list[str]) -> list[Any]:
        if self._kind == "all":
            try:
                return await ctx.gather(*(labelled(label, c) for label, c in zip(labels, calls, strict=True)))
            except CallFailed as failed:
                exc = failed.error
                reason = f"{failed.label}: {type(exc).__name__}: {exc}"
                raise StepFailed(f"fan-out {self.name!r}: a call failed (policy 'all'): {reason}",
                                 step=self.name, attempts=[reason]) from exc
        results = await ctx.gather(*calls, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException) and is_fatal(r):
                raise r
        return results

    async def _aggregate(self, ctx: RunContext, input: Any, ok: list[tuple[str, Any]], failures: list[str]) -> Any:
        agg = self.aggregator
        outputs = [r for _, r in ok]
        if is_list_function(agg):
            reduce: Callable[[list[Any]], Any] = agg  # type: ignore[assignment]
            out = reduce(outputs)
            return await out if inspect.isawaitable(out) else out
        if isinstance(agg, Agent):
            parts = [f"Task:\n{as_text(input)}", f"Results ({len(ok)} of {len(ok) + len(failures)} succeeded):"]
            parts += [f"[{n}] {label}\n{as_text(r)}" for n, (label, r) in enumerate(ok, 1)]
            if failures:
                parts.append("Failed (no result):\n- " + "\n- ".join(failures))
            parts.append("Combine these results into one answer.")
            return output_of(await ctx.call(agg, "\n\n".join(parts)))
        return await invoke(ctx, agg, outputs)  # type: ignore[arg-type]


def _batched(target: Any) -> Any:
    """An agent target with ``batch`` on (other targets, e.g. nested workflows, as they are)."""
    return target.with_(batch=True) if isinstance(target, Agent) and not target.batch else target


def _short(item: Any, limit: int = 60) -> str:
    text = " ".join(as_text(item).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
