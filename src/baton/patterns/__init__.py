"""Coordination patterns: thin compositions of ctx.call / ctx.gather / ctx.step.

Each is an object you call like a workflow (``await pattern(ctx, input)``) and can
nest inside another (a worker that is itself an orchestrator is hierarchical).
"""

from baton.patterns.bus import Bus, BusMessage
from baton.patterns.consensus import Consensus
from baton.patterns.fan_out import FanOut
from baton.patterns.gates import FallbackChain, Gate, Verdict
from baton.patterns.handoff import Handoffs
from baton.patterns.orchestrator import Orchestrator
from baton.patterns.pipeline import Pipeline, Stage
from baton.patterns.refine import Refine
from baton.patterns.router import Router

__all__ = ["Bus", "BusMessage", "Consensus", "FallbackChain", "FanOut", "Gate", "Handoffs", "Orchestrator",
           "Pipeline", "Refine", "Router", "Stage", "Verdict"]
