"""Handoffs: agents pass control to a named peer through a ``transfer_to_<peer>`` tool.

Each agent gets one tool per peer with input ``{"asked", "found", "next"}``. When it
calls one (with valid input), its turn ends at once, with no further model call, and the pattern records an immutable ``HandoffNote``
(``ctx.record_handoff``); the peer then runs one level deeper, reading the original request
and the rendered snapshot (its tools see the snapshot as ``ctx.state``). The agent
that answers without handing off gives the output. The result is
``{"output": ..., "chain": [agent, ...], "handoffs": [snapshot, ...]}``.

Each turn's outcome (output and transfer) is journaled, so a resumed or replayed run
follows the same chain. The delegation depth limit applies to the chain, and more
than ``max_handoffs`` transfers fails the step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from baton.agent import Agent
from baton.context import RunContext
from baton.errors import DepthExceeded, StepFailed, UsageError
from baton.messages import Message, ToolResultBlock, ToolUseBlock
from baton.patterns._base import as_text, own_scope, safe_label
from baton.patterns._settings import HandoffsSettings
from baton.settings import check_settings, declared
from baton.tools import Tool

TRANSFER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "asked": {"type": "string", "description": "What the user asked, in one or two sentences."},
        "found": {"type": "object", "description": "What you established so far: facts, ids, partial results."},
        "next": {"type": "string", "description": "What the receiving agent should do next."},
    },
    "required": ["asked", "found", "next"],
    "additionalProperties": False,
}


def transfer_tool_name(peer: str) -> str:
    return "transfer_to_" + "".join(c if c.isalnum() or c in "_-" else "_" for c in peer)[:52]


class TransferTool(Tool):
    """A transfer: once it succeeds the agent's turn ends (the tool loop makes no further model call)."""

    ends_turn = True


def _transfer_tool(peer: str, description: str) -> Tool:
    async def transfer(asked: str, found: dict[str, Any], next: str) -> str:  # noqa: A002
        # The pattern reads the transfer from the conversation; the agent's turn ends here.
        return f"Handoff to {peer} recorded; {peer} takes over from here."

    text = f"Hand the conversation over to {peer}" + (f", who {description}" if description else "") + (
        ". Use it when they are better placed to continue; pass what was asked, what you found and what "
        "they should do next. Calling it ends your turn.")
    return TransferTool(transfer_tool_name(peer), text, TRANSFER_SCHEMA, transfer)


@dataclass
class Handoffs:
    """Agents that hand the conversation to each other (a transfer tool each), starting with ``start``."""

    agents: Mapping[str, Agent]
    start: str
    max_handoffs: int = declared(HandoffsSettings, "max_handoffs")
    """Transfers allowed in one run of the pattern (0: the start agent answers alone)."""
    name: str = "handoffs"
    _tools: dict[str, list[Tool]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        where = f"handoffs {self.name!r}"
        if len(self.agents) < 2:
            raise UsageError(f"{where} needs at least two agents")
        if self.start not in self.agents:
            raise UsageError(f"{where}: start agent {self.start!r} is not one of {', '.join(self.agents)}")
        check_settings(self, "handoffs")
        names = [transfer_tool_name(p) for p in self.agents]
        if len(set(names)) != len(names):
            raise UsageError(f"{where}: agent names map to clashing tool names {names}; rename the agents")
        self._tools = {}
        for me, agent in self.agents.items():
            tools = [_transfer_tool(p, a.description) for p, a in self.agents.items() if p != me]
            clash = sorted({t.name for t in tools} & {t.name for t in agent.tools})
            if clash:
                raise UsageError(f"{where}: agent {me!r} already has tool(s) {clash}, reserved for handoffs")
            self._tools[me] = tools

    async def __call__(self, ctx: RunContext, input: Any) -> dict[str, Any]:
        scope = own_scope(ctx, self.name)
        current, payload = self.start, input
        chain = [current]
        snapshots: list[dict[str, Any]] = []
        while True:
            turn = await scope.step(f"turn:{current}", self._turn, scope.named("turn"), current, payload)
            transfer = turn["transfer"]
            if transfer is None:
                return {"output": turn["output"], "chain": chain, "handoffs": snapshots}
            peer = transfer["to"]
            if len(snapshots) >= self.max_handoffs:
                raise StepFailed(f"handoffs {self.name!r}: more than {self.max_handoffs} handoffs: "
                                 + " > ".join([*chain, peer]), step=self.name, attempts=[*chain, peer])
            if scope.depth + 2 > scope.max_depth:  # the peer runs in a child scope, its call one deeper
                raise DepthExceeded(f"handoffs {self.name!r}: handing off to {peer!r} would run it at depth "
                                    f"{scope.depth + 2}, over the limit of {scope.max_depth}: "
                                    + " > ".join([*chain, peer]), chain=[*chain, peer])
            snapshot = await scope.record_handoff(current, peer, asked=transfer["asked"], found=transfer["found"],
                                           next=transfer["next"])
            snapshots.append(snapshot.to_dict())
            scope = scope.child(safe_label(peer), state=snapshot)  # one level deeper: the depth limit applies
            chain.append(peer)
            current = peer
            payload = f"Original request:\n{as_text(input)}\n\n{snapshot.render()}"

    async def _turn(self, inner: RunContext, current: str, payload: Any) -> dict[str, Any]:
        agent, tools = self.agents[current], self._tools[current]
        result = await inner.call(agent, payload, tools=tools)
        while not result.messages:
            # The call was replayed from the journal, which keeps its output but not its
            # conversation: run the turn again under the next key to see any transfer.
            result = await inner.call(agent, payload, tools=tools)
        return {"output": result.output_json(), "transfer": self._find_transfer(current, result.messages)}

    def _find_transfer(self, current: str, messages: list[Message]) -> dict[str, Any] | None:
        """The first transfer the agent called with valid input (the tool did not report an error)."""
        peers = {transfer_tool_name(p): p for p in self.agents if p != current}
        results = {b.tool_use_id: b for m in messages if m.role == "user" for b in m.content
                   if isinstance(b, ToolResultBlock)}
        for m in messages:
            if m.role != "assistant":
                continue
            for b in m.content:
                if isinstance(b, ToolUseBlock) and b.name in peers:
                    res = results.get(b.id)
                    if res is not None and not res.is_error:
                        return {"to": peers[b.name], "asked": str(b.input["asked"]),
                                "found": dict(b.input["found"]), "next": str(b.input["next"])}
        return None
