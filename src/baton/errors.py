"""One error tree for all of baton.

    BatonError
    ├── UsageError                 bad arguments, unknown run id, bad store URL (exit 2)
    │   └── WorkflowError          invalid workflow file or input: names file, line, field (exit 2)
    ├── ModelBehaviorError         a model's output stayed invalid after re-asks (carries raw output)
    │   ├── PlanError              an LLM plan stayed invalid after re-plans (carries the errors)
    │   ├── ModelRefused           the model refused (stop_reason refusal) on every model it was given
    │   ├── OutputTruncated        the answer stayed cut off at max_tokens after continuations/re-asks
    │   └── ToolLoopDetected       the model kept calling one tool with the same input after a warning
    ├── ProviderError              a model provider's API failed (status, type, request id, retry-after)
    │   ├── ProviderConnectionError   no response: connection refused/reset, DNS
    │   └── ProviderTimeout           no response within the call's timeout
    ├── ToolError                  a tool failed, timed out, or its input/output broke its schema
    ├── CircuitOpenError           a breaker is open and no fallback took the call
    ├── StepFailed                 a pattern gave up: gate rejected, quorum missed, all fallbacks failed
    ├── LimitExceeded              a guard tripped
    │   ├── BudgetExceeded         USD/token/call/wall-time budget (exit 3, resumable)
    │   ├── DepthExceeded          delegation depth (names the chain of agents)
    │   ├── MaxTurnsExceeded       an agent's tool loop ran out of turns
    │   └── RunTimeout             a run's or an agent's timeout
    ├── StoreError                 a store is unreachable or a record is corrupt
    │   ├── RunNotFound            (also a UsageError)
    │   └── StoreKeyError          encrypted content and no key, or the wrong one (also a UsageError)
    ├── RunOwnedElsewhere          another live process owns the run (use --force)
    ├── ReplayDivergence           the workflow asked for another step than the journal recorded
    ├── Conflict                   the service refused: the run's state does not allow it (HTTP 409)
    └── RunSuspended               control flow, not failure: the run stops resumably
        ├── ApprovalRequired       awaiting a human decision (exit 4)
        └── DecisionRequired       a non-idempotent tool was in flight at a crash (exit 4)

Two internal signals live here too, outside the tree on purpose (plain ``Exception``s, so an
``except BatonError`` never swallows them): ``ToolInterrupted`` (a tool raised
``KeyboardInterrupt``; the runtime stops the run as interrupted) and ``CallFailed`` (one of a
pattern's concurrent calls failed; the pattern that started it always catches it).

Foreign exceptions (aiohttp, psycopg, redis, llama.cpp) are mapped to these at the
boundary and chained with ``from``. Constructors have no side effects.
"""

from __future__ import annotations

from typing import Any


class BatonError(Exception):
    """Root of every error baton raises on purpose."""

    exit_code = 1

    def to_dict(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "message": str(self)}


class UsageError(BatonError):
    """Bad usage: a wrong argument, flag, URL or input (exit 2)."""

    exit_code = 2


class WorkflowError(UsageError):
    """An invalid workflow or input. ``problems`` lists every (file, line, field, message)."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None, problems: list[dict[str, Any]] | None = None) -> None:
        self.file, self.line, self.field = file, line, field
        self.problems = problems or [{"file": file, "line": line, "field": field, "message": message}]
        where = ":".join(str(p) for p in (file, line) if p is not None)
        prefix = f"{where}: " if where else ""
        fld = f"{field}: " if field else ""
        super().__init__(f"{prefix}{fld}{message}")

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "problems": self.problems}


class ModelBehaviorError(BatonError):
    """The model's output stayed unusable after the re-asks; ``raw_output`` and ``errors`` say why."""

    def __init__(self, message: str, *, raw_output: Any = None, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.raw_output = raw_output
        self.errors = errors or []

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "raw_output": self.raw_output, "errors": self.errors}


class PlanError(ModelBehaviorError):
    """A planner's plan stayed invalid (unknown workers, dangling or cyclic dependencies) after re-plans."""


class ModelRefused(ModelBehaviorError):
    """The model answered with ``stop_reason: refusal``. Fallback models and chains apply to it."""

    def __init__(self, message: str, *, agent: str, models: list[str], raw_output: Any = None) -> None:
        super().__init__(message, raw_output=raw_output)
        self.agent, self.models = agent, models


class OutputTruncated(ModelBehaviorError):
    """The answer was cut off at the agent's ``max_tokens`` and continuing or re-asking did not finish it."""

    def __init__(self, message: str, *, agent: str, max_tokens: int, raw_output: Any = None) -> None:
        super().__init__(message, raw_output=raw_output)
        self.agent, self.max_tokens = agent, max_tokens


class ToolLoopDetected(ModelBehaviorError):
    """The model repeated one tool call with identical input, kept on after being told."""

    def __init__(self, message: str, *, agent: str, tool: str) -> None:
        super().__init__(message)
        self.agent, self.tool = agent, tool


class ProviderError(BatonError):
    """A provider API error. ``retryable`` is the adapter's verdict from status and headers."""

    def __init__(self, message: str, *, status: int | None = None, error_type: str | None = None,
                 request_id: str | None = None, retry_after: float | None = None,
                 retryable: bool = False, provider: str = "anthropic") -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.request_id = request_id
        self.retry_after = retry_after
        self.retryable = retryable
        self.provider = provider

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "status": self.status, "error_type": self.error_type,
                "request_id": self.request_id, "retryable": self.retryable}


class BatchRequestFailed(ProviderError):
    """One request of a Message Batch came back ``errored``, ``expired`` or ``canceled``: its
    retry goes out as a normal call (``retryable`` says whether it may)."""


class ProviderConnectionError(ProviderError):
    """The provider could not be reached, or the connection broke mid-request (retryable)."""

    def __init__(self, message: str, *, provider: str = "anthropic") -> None:
        super().__init__(message, error_type="connection_error", retryable=True, provider=provider)


class ProviderTimeout(ProviderError):
    """The provider did not answer in time (retryable)."""

    def __init__(self, message: str, *, provider: str = "anthropic") -> None:
        super().__init__(message, error_type="timeout", retryable=True, provider=provider)


class ToolError(BatonError):
    """``transient``: a timeout or a lost connection, which another attempt could get past."""

    def __init__(self, message: str, *, tool: str | None = None, transient: bool = False) -> None:
        super().__init__(message)
        self.tool = tool
        self.transient = transient


class CircuitOpenError(BatonError):
    """The breaker of ``target`` is open: the call was not made (fallbacks apply)."""

    def __init__(self, message: str, *, target: str) -> None:
        super().__init__(message)
        self.target = target


class StepFailed(BatonError):
    """A pattern gave up. ``attempts`` lists every attempt's reason."""

    def __init__(self, message: str, *, step: str | None = None, attempts: list[str] | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.attempts = attempts or []

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "step": self.step, "attempts": self.attempts}


class LimitExceeded(BatonError):
    """A per-run limit stopped the work (budget, depth, turns, wall time)."""


class BudgetExceeded(LimitExceeded):
    """A budget (``limit``: USD, tokens, model calls) would be passed; the run stops resumable (exit 3)."""

    exit_code = 3

    def __init__(self, message: str, *, limit: str, spent: float, allowed: float) -> None:
        super().__init__(message)
        self.limit, self.spent, self.allowed = limit, spent, allowed


class DepthExceeded(LimitExceeded):
    """Delegation went deeper than ``max_depth``; ``chain`` is the path that did."""

    def __init__(self, message: str, *, chain: list[str]) -> None:
        super().__init__(message)
        self.chain = chain


class MaxTurnsExceeded(LimitExceeded):
    """An agent used all of its ``max_turns`` without a final answer."""


class RunTimeout(LimitExceeded):
    """The run passed its wall-time budget (``timeout_s``)."""


class StoreError(BatonError):
    """A store could not be opened, read or written, or holds a record that does not decode."""


class RunNotFound(StoreError, UsageError):
    """No run with that id in the store (exit 2)."""

    exit_code = 2


class StoreKeyError(StoreError, UsageError):
    """Stored content is encrypted and ``BATON_STORE_KEY`` is missing or not its key."""

    exit_code = 2


class RunOwnedElsewhere(BatonError):
    """A live process owns the run (its lease holds): resume or cancel it with ``force`` (exit 2)."""

    exit_code = 2


class ReplayDivergence(BatonError):
    """The workflow asked for a different step (or, on replay, a different model request) than
    the journal recorded at this position. ``step`` is the key; ``differs`` names what differs."""

    exit_code = 1

    def __init__(self, message: str, *, step: str | None = None, differs: list[str] | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.differs = differs or []

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "step": self.step, "differs": self.differs}


class Conflict(BatonError):
    """The service refused: the run is not in a state that allows this (cancel a finished run,
    approve a step not waiting, reuse a run id with another input). HTTP 409."""


class RunSuspended(BatonError):
    """Control flow: the run stops in a resumable state."""

    exit_code = 4
    run_status = "awaiting_approval"
    """The status the stopped run is recorded with."""


class ApprovalRequired(RunSuspended):
    """The run waits for a human approval at ``step`` (exit 4; ``baton approve`` then resume)."""

    def __init__(self, message: str, *, step: str, request: Any = None) -> None:
        super().__init__(message)
        self.step = step
        self.request = request


class DecisionRequired(RunSuspended):
    """The run waits for a decision at ``step`` (exit 4; ``baton.approve`` with a decision, then resume)."""

    def __init__(self, message: str, *, step: str) -> None:
        super().__init__(message)
        self.step = step


class BatchPending(RunSuspended):
    """A detached run (``--detach``) submitted a Message Batch that has not ended: the run stops,
    its batch ids journaled; ``baton resume`` collects the results (never submitting again)."""

    run_status = "awaiting_batch"

    def __init__(self, message: str, *, batch_id: str) -> None:
        super().__init__(message)
        self.batch_id = batch_id

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "batch_id": self.batch_id}


class ToolInterrupted(Exception):
    """A tool raised ``KeyboardInterrupt``: the run stops as ``interrupted`` (resumable).

    An ordinary exception on purpose: a ``KeyboardInterrupt`` raised inside an asyncio task
    escapes the event loop itself and leaves the run recorded as ``running``.
    """

    def __init__(self, tool: str) -> None:
        super().__init__(f"tool {tool!r} raised KeyboardInterrupt; the run stopped (resume it with baton resume)")
        self.tool = tool


class CallFailed(Exception):
    """One of several concurrent calls of a pattern failed; ``label`` says which, ``error`` how."""

    def __init__(self, label: str, error: Exception) -> None:
        super().__init__(label)
        self.label, self.error = label, error


__all__ = [
    "ApprovalRequired", "BatchPending", "BatchRequestFailed", "BatonError", "BudgetExceeded", "CallFailed",
    "CircuitOpenError", "Conflict", "DecisionRequired", "DepthExceeded", "LimitExceeded", "MaxTurnsExceeded",
    "ModelBehaviorError", "ModelRefused", "OutputTruncated", "PlanError", "ProviderConnectionError",
    "ProviderError", "ProviderTimeout", "ReplayDivergence", "RunNotFound", "RunOwnedElsewhere",
    "RunSuspended", "RunTimeout", "StepFailed", "StoreError", "StoreKeyError", "ToolError", "ToolInterrupted",
    "ToolLoopDetected", "UsageError", "WorkflowError",
]
