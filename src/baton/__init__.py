"""baton: run teams of Claude agents in production.

    import baton

    researcher = baton.Agent("researcher", system="You research.", tools=[baton.tool(search)])

    async def workflow(ctx, topic):
        notes = await ctx.call(researcher, topic)
        return notes.output

    result = await baton.run(workflow, "solid-state batteries")
"""

from baton.agent import Agent, AgentResult
from baton.api import approve, fork, register_workflow, replay, resume, run, run_sync
from baton.context import Decision, HandoffNote, RunContext
from baton.context import Handoff as Handoff  # the old name of HandoffNote
from baton.errors import BatonError
from baton.runtime.budget import Limits
from baton.runtime.engine import RunResult
from baton.streaming import stream, stream_resume
from baton.tools import Tool, ToolContext, tool

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AgentResult",
    "BatonError",
    "Decision",
    "HandoffNote",
    "Limits",
    "RunContext",
    "RunResult",
    "Tool",
    "ToolContext",
    "__version__",
    "approve",
    "fork",
    "register_workflow",
    "replay",
    "resume",
    "run",
    "run_sync",
    "stream",
    "stream_resume",
    "tool",
]
