"""``Runtime``: one execution of a run, its shared services plus its two call paths.

The engine builds it; ``RunContext`` is its only user above the runtime layer, and reaches
the call paths as ``runtime.models`` (``model_calls.ModelCalls``) and ``runtime.tools``
(``tool_calls.ToolCalls``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from baton.runtime.model_calls import ModelCalls
from baton.runtime.services import ModelBinding, RunServices, current_services
from baton.runtime.tool_calls import ToolCalls

__all__ = ["ModelBinding", "Runtime", "current_services"]


@dataclass
class Runtime(RunServices):
    """Everything one execution of a run shares, and the paths its model and tool calls take."""

    models: ModelCalls = field(init=False, repr=False)
    tools: ToolCalls = field(init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.models = ModelCalls(self)
        self.tools = ToolCalls(self)

    async def settle_in_flight(self, *, wait: bool = True) -> None:
        """Bill the answers to requests whose callers were cancelled (see ``ModelCalls.adopt``)."""
        await self.models.settle_in_flight(wait=wait)
