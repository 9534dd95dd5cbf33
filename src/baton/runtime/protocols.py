"""What the runtime needs from the layer above it, stated here so it imports nothing of it.

The agent, its tools and the run context satisfy these protocols; the runtime only ever
sees them through these names (``baton.agent.Agent`` is a ``CallSite``, ``baton.tools.Tool``
a ``RuntimeTool``, ``baton.context.RunContext`` a ``CallScope``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

Priority = Literal["high", "normal", "low"]
"""Who goes first when the rate governor has to make calls wait."""


class CallScope(Protocol):
    """Where a call is made from (a ``RunContext``): the parent span, the priority, the state."""

    @property
    def span_id(self) -> str: ...

    @property
    def priority(self) -> Priority: ...

    @property
    def state(self) -> Any: ...


class CallSite(Protocol):
    """Who makes a model or tool call (an ``Agent``): what routing, retries, fallbacks,
    caching and the journal need to know about it."""

    @property
    def name(self) -> str: ...

    @property
    def fallback_models(self) -> list[str]: ...

    @property
    def task_type(self) -> str | None: ...

    @property
    def retry(self) -> Any:
        """A ``RetryPolicy`` overriding the run's, or None."""

    @property
    def cache_prompt(self) -> bool: ...

    @property
    def prompt_version(self) -> str: ...

    @property
    def batch(self) -> bool:
        """Its model calls go through the Message Batches API (``runtime/batch.py``)."""


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What a tool may know about the call. Never sent to the model.

    ``idempotency_key`` is stable across retries and crash-resumes of the same step,
    so a tool with side effects can deduplicate them.
    """

    run_id: str
    agent: str
    step_key: str
    idempotency_key: str
    state: Any = None


class RuntimeTool(Protocol):
    """A tool as the runtime calls it (a ``baton.tools.Tool``)."""

    @property
    def name(self) -> str: ...

    @property
    def idempotent(self) -> bool: ...

    @property
    def retryable(self) -> bool: ...

    async def invoke(self, args: dict[str, Any], ctx: ToolContext) -> Any:
        """Validate ``args``, run the tool, validate its output; failures are ``ToolError``s."""

    def result_text(self, result: Any) -> str:
        """The text the model gets for ``result``."""
