"""``Runtime``: one execution of a run, its shared services plus its two call paths.

The engine builds it; ``RunContext`` is its only user above the runtime layer, and reaches
the call paths as ``runtime.models`` (``model_calls.ModelCalls``) and ``runtime.tools``
(``tool_calls.ToolCalls``).
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from baton.runtime.model_calls import ModelCalls
from baton.runtime.services import ModelBinding, RunServices, current_services

if TYPE_CHECKING:  # the tool call path loads on a run's first tool call
    from baton.runtime.tool_calls import ToolCalls

__all__ = ["ModelBinding", "Runtime", "current_services"]


class Runtime(RunServices):
    """Everything one execution of a run shares, and the paths its model and tool calls take.

    Built like a ``RunServices`` (not a dataclass of its own: generating one more ``__init__``
    over twenty fields would cost ``import baton`` ~2 ms)."""

    models: ModelCalls
    _tools: ToolCalls | None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.models = ModelCalls(self)
        self._tools = None

    @property
    def tools(self) -> ToolCalls:
        """The tool call path (made on the run's first tool call)."""
        if self._tools is None:
            from baton.runtime.tool_calls import ToolCalls  # deferred: ~2 ms `import baton` does not pay

            self._tools = ToolCalls(self)
        return self._tools

    # --- seams another engine overrides (baton.temporal runs these as Temporal activities) ---

    async def run_step(self, key: str, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Execute the effect of ``ctx.step`` at ``key`` (here: call it in this process)."""
        result = fn(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def await_decision(self, span: str, key: str, name: str, request: Any) -> dict[str, Any] | None:
        """Wait for a human decision on approval step ``key`` when the engine can keep the run
        alive meanwhile; None (here): the run stops resumably with ``ApprovalRequired``."""
        return None

    async def settle_in_flight(self, *, wait: bool = True) -> None:
        """Bill the answers to requests whose callers were cancelled (see ``ModelCalls.adopt``)."""
        await self.models.settle_in_flight(wait=wait)
