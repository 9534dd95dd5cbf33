"""Shared helpers for the pattern tests (no tests here).

Every agent's system prompt is ``You are NAME.``, so rules match on ``^You are NAME``
and the request log says which agent sent each request.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import baton
from baton.messages import ModelRequest
from baton.stores.base import StepRecord
from baton.stores.memory import MemoryStore
from baton.testing import ScriptedModel


def agent(name: str, **kw: Any) -> baton.Agent:
    return baton.Agent(name, system=f"You are {name}.", **kw)


def who(req: ModelRequest) -> str:
    m = re.match(r"You are ([\w-]+)\.", str(req.system or ""))
    return m.group(1) if m else "?"


def prompt(req: ModelRequest) -> str:
    """The first user message: the input the agent was called with."""
    return req.messages[0].text


def calls(model: ScriptedModel) -> Counter[str]:
    return Counter(who(r) for r in model.requests)


def order(model: ScriptedModel) -> list[str]:
    return [who(r) for r in model.requests]


def requests_of(model: ScriptedModel, name: str) -> list[ModelRequest]:
    return [r for r in model.requests if who(r) == name]


class TrackingModel(ScriptedModel):
    """A ScriptedModel that records how many requests were in flight at once."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.in_flight = 0
        self.peak = 0

    async def complete(self, request: ModelRequest) -> Any:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            return await super().complete(request)
        finally:
            self.in_flight -= 1


async def steps(store: MemoryStore, run_id: str, kind: str | None = None) -> list[StepRecord]:
    return [s for s in await store.load_steps(run_id) if kind is None or s.kind == kind]
