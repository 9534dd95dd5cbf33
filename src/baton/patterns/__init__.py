"""Coordination patterns: thin compositions of ctx.call / ctx.gather / ctx.step.

Each is an object you call like a workflow (``await pattern(ctx, input)``) and can
nest inside another (a worker that is itself an orchestrator is hierarchical).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from baton.patterns.bus import Bus, BusMessage
    from baton.patterns.consensus import Consensus
    from baton.patterns.fan_out import FanOut
    from baton.patterns.gates import FallbackChain, Gate, Verdict
    from baton.patterns.handoff import Handoffs
    from baton.patterns.orchestrator import Orchestrator
    from baton.patterns.pipeline import Pipeline, Stage
    from baton.patterns.refine import Refine
    from baton.patterns.router import Router

# Loaded on first use: a workflow file loads the patterns it uses, and the workflow schema
# only their settings (``_settings``).
_WHERE = {"Bus": "bus", "BusMessage": "bus", "Consensus": "consensus", "FanOut": "fan_out", "FallbackChain": "gates",
          "Gate": "gates", "Verdict": "gates", "Handoffs": "handoff", "Orchestrator": "orchestrator",
          "Pipeline": "pipeline", "Stage": "pipeline", "Refine": "refine", "Router": "router"}

__all__ = ["Bus", "BusMessage", "Consensus", "FallbackChain", "FanOut", "Gate", "Handoffs", "Orchestrator",
           "Pipeline", "Refine", "Router", "Stage", "Verdict"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'baton.patterns' has no attribute {name!r}")
    return getattr(importlib.import_module(f"baton.patterns.{_WHERE[name]}"), name)
