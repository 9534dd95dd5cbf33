"""What every pattern shares: a *step target* is an Agent or a nested workflow.

A nested workflow is any ``async (ctx, input) -> output`` callable, including another
pattern object: that is how a worker becomes a sub-orchestrator (hierarchical).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from baton.agent import Agent, AgentResult, render_input
from baton.context import RunContext
from baton.errors import (
    BudgetExceeded,
    CallFailed,
    DepthExceeded,
    ReplayDivergence,
    RunOwnedElsewhere,
    RunSuspended,
    StoreError,
    UsageError,
)
from baton.json_schema import jsonable

__all__ = ["CallFailed", "Target", "as_text", "check_distinct_names", "describe", "invoke", "is_fatal", "jsonable",
           "labelled", "name_key", "output_of", "own_scope", "resolve_name", "safe_label", "target_name"]

Target = Agent | Callable[[RunContext, Any], Awaitable[Any]]


def target_name(target: Target) -> str:
    if isinstance(target, Agent):
        return target.name
    return str(getattr(target, "name", None) or getattr(target, "__name__", type(target).__name__))


def output_of(value: Any) -> Any:
    """Plain output of an AgentResult or a nested workflow's result."""
    return value.output if isinstance(value, AgentResult) else value


def invoke(ctx: RunContext, target: Target, input: Any, *, priority: Any = None) -> Awaitable[Any]:
    """Start ``target`` on ``input``; the journal key is taken now (deterministic order)."""
    if isinstance(target, Agent):
        return _agent(ctx.call(target, input, priority=priority))
    sub = ctx.child(target_name(target))
    if priority is not None:
        sub.priority = priority
    return target(sub, input)


async def _agent(call: Awaitable[Any]) -> Any:
    return output_of(await call)


def as_text(value: Any) -> str:
    return render_input(value)


_FATAL: tuple[type[BaseException], ...] = (BudgetExceeded, DepthExceeded, RunSuspended, StoreError,
                                            RunOwnedElsewhere)


def is_fatal(exc: BaseException) -> bool:
    """Whether ``exc`` must stop the run rather than count as one failed attempt.

    Budgets, depth, approvals, store trouble, replay divergence and cancellation are
    never swallowed by a fallback, a best-effort fan-out or a pipeline's wrapping.
    """
    return not isinstance(exc, Exception) or isinstance(exc, (*_FATAL, ReplayDivergence))


_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]")


def safe_label(label: str) -> str:
    """``label`` usable inside a journal key (no '/')."""
    return _UNSAFE.sub("_", label) or "_"


def own_scope(ctx: RunContext, label: str) -> RunContext:
    """A private key space at the same depth that takes exactly one position in ``ctx``.

    A pattern whose number of steps depends on outcomes runs inside one, so whatever
    its caller does next keeps the same key on resume.
    """
    key = ctx.next_key(safe_label(label))
    return ctx.named(key.rsplit("/", 1)[-1])


def name_key(name: str) -> str:
    """How a name the model writes is compared with the names it was offered, in every pattern:
    case and spacing do not matter (``" Billing  Team"`` is ``"billing team"``)."""
    return " ".join(name.split()).casefold()


def resolve_name(name: Any, choices: Iterable[str]) -> str | None:
    """The one name in ``choices`` that ``name`` refers to (exact first, then by ``name_key``), or None."""
    if not isinstance(name, str):
        return None
    options = list(choices)
    if name in options:
        return name
    wanted = name_key(name)
    found = [c for c in options if name_key(c) == wanted]
    return found[0] if len(found) == 1 else None


def check_distinct_names(names: Iterable[str], where: str, what: str) -> None:
    """Refuse names a model's answer could not tell apart (they differ only in case or spacing)."""
    seen: dict[str, str] = {}
    for n in names:
        other = seen.setdefault(name_key(n), n)
        if other != n:
            raise UsageError(f"{where}: {what} {other!r} and {n!r} differ only in case or spacing; a model's "
                             "answer could not tell them apart")


def describe(target: Target) -> str:
    """A target's description, for prompts that list choices."""
    desc = target.description if isinstance(target, Agent) else getattr(target, "description", "")
    return str(desc or "")


async def labelled(label: str, call: Awaitable[Any]) -> Any:
    """Await ``call``; a non-fatal failure comes out as ``CallFailed`` naming ``label``."""
    try:
        return await call
    except Exception as exc:
        if is_fatal(exc):
            raise
        raise CallFailed(label, exc) from exc
