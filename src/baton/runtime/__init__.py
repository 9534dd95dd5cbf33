"""The durable engine: journal, budgets, the one model/tool call path, DAG scheduling, resilience.

The public names load on first use: this package's ``__init__`` runs before any of its
modules is imported, so importing the engine here would drag it into every one of them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from baton.runtime.engine import Engine
    from baton.runtime.ratelimit import RateGovernor, RateLimits
    from baton.runtime.retry import RetryPolicy

_WHERE = {"Engine": "engine", "RateGovernor": "ratelimit", "RateLimits": "ratelimit", "RetryPolicy": "retry"}

__all__ = ["Engine", "RateGovernor", "RateLimits", "RetryPolicy"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'baton.runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(f"baton.runtime.{_WHERE[name]}"), name)
