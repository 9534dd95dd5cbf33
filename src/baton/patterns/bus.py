"""Bus: reactive message passing between agents that subscribe to message types.

A run starts with one message. Each message goes to its recipient, or (broadcast,
``recipient == ""``) to every agent subscribed to its type except the sender. A
handler answers with the messages it publishes and an optional final answer: an
agent through the forced schema ``{"messages": [{"type", "recipient", "payload"}],
"final": str | null}``, a Python target ``(ctx, message)`` by returning a list of
message dicts or that same dict.

Delivery is exactly once per (message, subscriber), also across a crash and resume:
message ids derive from the parent's id, the sender and the message's index (never
random), messages are handled in waves in publication order, and each handling runs
under a scope named after the message and subscriber whose result is journaled. A
resumed run therefore rebuilds the same messages and replays every handling that
completed.

The run ends when a message of a ``terminal`` type is published (its payload is the
result) or when no message is left (the finals collected, in order). A message deeper
than ``limits.max_depth`` is not delivered: that branch stops, and if the bus then
goes quiet without a terminal message the run fails with ``DepthExceeded`` naming the
chain of senders (so A > B > A loops end with a clear error). More than
``max_messages`` messages in all fails the step.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from baton.agent import Agent
from baton.context import RunContext
from baton.errors import DepthExceeded, StepFailed, UsageError
from baton.observe import events as ev
from baton.patterns._base import (
    Target,
    as_text,
    check_distinct_names,
    invoke,
    is_fatal,
    jsonable,
    output_of,
    own_scope,
    resolve_name,
)
from baton.patterns._settings import BusSettings
from baton.settings import check_settings, declared

START_SENDER = "user"


@dataclass(frozen=True, slots=True)
class BusMessage:
    """One message on the bus: who sent it to whom, its type and payload, and what it answers."""

    task_id: str
    sender: str
    recipient: str
    """An agent name, or "" for every subscriber of ``type``."""
    type: str
    payload: Any
    timestamp: float
    message_id: str
    parent_message_id: str | None = None
    retry_count: int = 0
    """Kept for message-log compatibility; baton retries model calls below the bus, so it stays 0."""
    depth: int = 0
    """Messages between this one and the start message (the start message has depth 0)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def message_id(parent: str | None, sender: str, index: int) -> str:
    """A message id from its parent, sender and position: the same on every resume."""
    return hashlib.sha256(f"{parent or ''}|{sender}|{index}".encode()).hexdigest()[:16]


@dataclass
class Bus:
    """Agents that react to messages: each subscribes to message types and publishes new ones,
    until a message of a ``terminal`` type ends the run."""

    agents: Mapping[str, Target]
    subscriptions: Mapping[str, list[str]]
    start: Mapping[str, Any]
    terminal: list[str] = field(default_factory=list)
    max_messages: int = declared(BusSettings, "max_messages")
    name: str = "bus"

    def __post_init__(self) -> None:
        where = f"bus {self.name!r}"
        if not self.agents:
            raise UsageError(f"{where} needs at least one agent")
        check_distinct_names(self.agents, where, "agents")
        for agent_name in self.agents:
            if "/" in agent_name or not agent_name:
                raise UsageError(f"{where}: agent name {agent_name!r} must be non-empty and may not contain '/'")
        for agent_name, types in self.subscriptions.items():
            if agent_name not in self.agents:
                raise UsageError(f"{where}: subscriptions name unknown agent {agent_name!r}; agents: "
                                 + ", ".join(self.agents))
            if isinstance(types, str) or not all(isinstance(t, str) and t for t in types):
                raise UsageError(f"{where}: subscriptions of {agent_name!r} must be a list of message types")
        unknown = sorted(set(self.start) - {"type", "to", "payload"})
        if unknown:
            raise UsageError(f"{where}: start has unknown key(s) {unknown}; expected type, to, payload")
        if not isinstance(self.start.get("type"), str) or not self.start["type"]:
            raise UsageError(f"{where}: start needs a message type, e.g. {{'type': 'task', 'to': 'planner'}}")
        to = self.start.get("to", "")
        if to and to not in self.agents:
            raise UsageError(f"{where}: start.to names unknown agent {to!r}; agents: {', '.join(self.agents)}")
        check_settings(self, "bus")
        types = [t for subs in self.subscriptions.values() for t in subs] + list(self.terminal)
        self._types = list(dict.fromkeys(types))
        if not to and self.start["type"] not in self._types:
            raise UsageError(f"{where}: nobody subscribes to the start type {self.start['type']!r} and start has "
                             "no 'to'")
        schema = handler_schema(self._types, list(self.agents))
        self._handlers: dict[str, Target] = {
            n: a.with_(output=schema) if isinstance(a, Agent) else a for n, a in self.agents.items()}

    def recipients(self, msg: BusMessage) -> list[str]:
        """Who gets ``msg``, in agent order."""
        if msg.recipient:
            return [msg.recipient]
        return [n for n in self.agents if n != msg.sender and msg.type in self.subscriptions.get(n, [])]

    async def __call__(self, ctx: RunContext, input: Any) -> Any:
        scope = own_scope(ctx, self.name)
        first = BusMessage(ctx.run_id, START_SENDER, self.start.get("to", ""), self.start["type"],
                           self.start.get("payload", input), time.time(), message_id(None, START_SENDER, 0))
        seen: dict[str, BusMessage] = {first.message_id: first}
        self._event(ctx, "published", first)
        if first.type in self.terminal:
            return first.payload
        queue: list[BusMessage] = [first]
        finals: list[str] = []
        cut: list[BusMessage] = []
        published = 1
        while queue:
            deliveries = [(m, r) for m in queue for r in self.recipients(m)]
            for m in queue:
                if not self.recipients(m):
                    self._event(ctx, "undelivered", m)
            queue = []
            replies = await scope.gather(*(self._deliver(scope, m, r) for m, r in deliveries),
                                         return_exceptions=True)
            self._raise_failures(deliveries, replies)
            end: BusMessage | None = None
            for (parent, handler), reply in zip(deliveries, replies, strict=True):
                if reply["final"] is not None:
                    finals.append(reply["final"])
                for i, out in enumerate(reply["messages"]):
                    msg = BusMessage(ctx.run_id, handler, out["recipient"], out["type"], out["payload"], time.time(),
                                     message_id(parent.message_id, handler, i), parent.message_id, 0,
                                     parent.depth + 1)
                    seen[msg.message_id] = msg
                    if msg.depth > ctx.max_depth:
                        cut.append(msg)
                        self._event(ctx, "dropped", msg, reason="max_depth")
                        continue
                    published += 1
                    if published > self.max_messages:
                        raise StepFailed(f"bus {self.name!r}: more than {self.max_messages} messages were published; "
                                         "the agents may be looping (last: " + " > ".join(_chain(msg, seen)) + ")",
                                         step=self.name)
                    self._event(ctx, "published", msg)
                    if msg.type in self.terminal:
                        end = end or msg
                    else:
                        queue.append(msg)
            if end is not None:
                return end.payload
        if cut:
            chain = _chain(cut[0], seen)
            raise DepthExceeded(f"bus {self.name!r}: a message chain went deeper than max_depth {ctx.max_depth} and "
                                f"was stopped: {' > '.join(chain)} (message type {cut[0].type!r}); no terminal "
                                "message arrived", chain=chain)
        return finals

    async def _deliver(self, scope: RunContext, msg: BusMessage, handler: str) -> dict[str, Any]:
        slot = scope.named(f"msg-{msg.message_id}-{handler}")
        reply: dict[str, Any] = await slot.step(f"bus:{handler}", self._handle, slot, msg, handler)
        self._event(scope, "handled", msg, handler=handler, published=len(reply["messages"]))
        return reply

    async def _handle(self, slot: RunContext, msg: BusMessage, handler: str) -> dict[str, Any]:
        target = self._handlers[handler]
        if isinstance(target, Agent):
            out = output_of(await slot.call(target, self.render(msg, handler)))
        else:
            out = await invoke(slot, target, msg)
        return self._normalize(handler, out)

    def render(self, msg: BusMessage, handler: str) -> str:
        """What a handler agent reads."""
        lines = [f"You are {handler} on a message bus. A message arrived:",
                 f"type: {msg.type}", f"from: {msg.sender}", f"to: {msg.recipient or '(broadcast)'}",
                 f"message_id: {msg.message_id}"
                 + (f" (in reply to {msg.parent_message_id})" if msg.parent_message_id else ""),
                 f"payload:\n{as_text(msg.payload)}", "",
                 "You may publish messages in reply. Message types and who receives them:"]
        for t in self._types:
            subs = [n for n, ts in self.subscriptions.items() if t in ts]
            note = " (ends the run; its payload is the result)" if t in self.terminal else ""
            lines.append(f"- {t}: {', '.join(subs) or 'nobody'}{note}")
        lines += ['recipient "" sends to every subscriber of the type; an agent name sends to that agent only.',
                  "Set final to your final answer if you have one, otherwise null. Publish nothing if you have "
                  "nothing to add."]
        return "\n".join(lines)

    def _normalize(self, handler: str, out: Any) -> dict[str, Any]:
        where = f"bus {self.name!r}: handler {handler!r}"
        if hasattr(out, "model_dump"):
            out = out.model_dump(mode="json")
        if out is None:
            out = {"messages": [], "final": None}
        elif isinstance(out, list):
            out = {"messages": out, "final": None}
        if not isinstance(out, dict) or not isinstance(out.get("messages", []), list):
            raise UsageError(f"{where} returned {type(out).__name__}; expected a list of messages or "
                             "{'messages': [...], 'final': str | None}")
        messages = []
        for i, m in enumerate(out.get("messages") or []):
            if not isinstance(m, dict) or not isinstance(m.get("type"), str):
                raise UsageError(f"{where}: message {i} must be a dict with a 'type'")
            asked = m.get("recipient") or ""
            mtype = resolve_name(m["type"], self._types)
            if mtype is None:
                raise UsageError(f"{where}: message {i} has unknown type {m['type']!r}; known: {self._types}")
            recipient = resolve_name(asked, self.agents) if asked else ""
            if recipient is None:
                raise UsageError(f"{where}: message {i} is for unknown agent {asked!r}; agents: "
                                 + ", ".join(self.agents))
            messages.append({"type": mtype, "recipient": recipient, "payload": jsonable(m.get("payload"))})
        final = out.get("final")
        return {"messages": messages, "final": None if final is None else str(final)}

    def _raise_failures(self, deliveries: list[tuple[BusMessage, str]], replies: list[Any]) -> None:
        for r in replies:
            if isinstance(r, BaseException) and is_fatal(r):
                raise r
        for (msg, handler), r in zip(deliveries, replies, strict=True):
            if isinstance(r, BaseException):
                raise StepFailed(f"bus {self.name!r}: {handler} failed handling message {msg.message_id} "
                                 f"({msg.type!r} from {msg.sender}): {type(r).__name__}: {r}", step=self.name,
                                 attempts=[f"{handler}: {type(r).__name__}: {r}"]) from r

    def _event(self, ctx: RunContext, status: str, msg: BusMessage, **extra: Any) -> None:
        ctx.emit(ev.BUS_MESSAGE, {"bus": self.name, "status": status, **msg.to_dict(), **extra})


def handler_schema(types: list[str], agents: list[str]) -> dict[str, Any]:
    """The forced output of a handler agent: the messages it publishes and an optional final answer."""
    return {
        "type": "object",
        "properties": {
            "messages": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "type": {"type": "string", "enum": types},
                        "recipient": {"type": "string", "enum": ["", *agents],
                                      "description": '"" for every subscriber of the type, or one agent name.'},
                        "payload": {"description": "The message content: text or a JSON object."},
                    },
                    "required": ["type", "recipient", "payload"],
                    "additionalProperties": False,
                },
            },
            "final": {"type": ["string", "null"], "description": "Your final answer, or null."},
        },
        "required": ["messages", "final"],
        "additionalProperties": False,
    }


def _chain(msg: BusMessage, seen: Mapping[str, BusMessage]) -> list[str]:
    """The senders from the start message to ``msg``."""
    chain: list[str] = []
    current: BusMessage | None = msg
    while current is not None:
        chain.append(current.sender)
        current = seen.get(current.parent_message_id) if current.parent_message_id else None
    return chain[::-1]
