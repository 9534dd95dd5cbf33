"""Router: a classifier picks a route and a priority; the input goes to that route's target.

The classifier answers ``{"route", "priority", "reasoning"}`` after seeing the route
names and their targets' descriptions. An unknown route goes to ``fallback`` (or
fails naming the valid routes). The priority is passed on to scheduling: the routed
call waits in the rate governor with that priority. The result is the routed
target's output; the decision is put on the event stream as ``router.decision``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from baton.agent import Agent
from baton.context import Priority, RunContext
from baton.errors import StepFailed, UsageError
from baton.observe import events as ev
from baton.patterns._base import (
    Target,
    as_text,
    check_distinct_names,
    describe,
    invoke,
    output_of,
    resolve_name,
    target_name,
)

DECISION_EVENT = ev.ROUTER_DECISION

ROUTE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "route": {"type": "string", "description": "The name of the chosen route."},
        "priority": {"type": "string", "enum": ["high", "normal", "low"]},
        "reasoning": {"type": "string", "description": "One sentence: why this route."},
    },
    "required": ["route", "priority", "reasoning"],
    "additionalProperties": False,
}


@dataclass
class Router:
    """A classifier agent picks one route for the input; ``fallback`` takes what matches none."""

    classifier: Agent
    routes: Mapping[str, Target]
    fallback: Target | None = None
    name: str = "router"
    _classifier: Agent = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.routes:
            raise UsageError(f"router {self.name!r} needs at least one route")
        check_distinct_names(self.routes, f"router {self.name!r}", "routes")
        self._classifier = self.classifier.with_(output=ROUTE_SCHEMA)

    def prompt(self, input: Any) -> str:
        lines = [f"Request:\n{as_text(input)}", "", "Routes:"]
        for route, target in self.routes.items():
            lines.append(f"- {route}: {describe(target) or target_name(target)}")
        lines += ["", "Choose exactly one route by name, a priority (high, normal or low) and say why in one "
                  "sentence. Do not answer the request yourself."]
        return "\n".join(lines)

    def resolve(self, route: str) -> str | None:
        """The route name ``route`` refers to (exact, then ignoring case and spacing), or None."""
        return resolve_name(route, self.routes)

    async def __call__(self, ctx: RunContext, input: Any) -> Any:
        decision = output_of(await ctx.call(self._classifier, self.prompt(input)))
        asked = str(decision["route"])
        priority = cast(Priority, decision["priority"])
        route = self.resolve(asked)
        target = self.routes[route] if route is not None else self.fallback
        ctx.emit(DECISION_EVENT, {"router": self.name, "route": asked, "resolved": route,
                                  "fallback": route is None, "priority": priority,
                                  "reasoning": decision.get("reasoning", ""),
                                  "target": target_name(target) if target is not None else None})
        if target is None:
            raise StepFailed(f"router {self.name!r}: the classifier chose unknown route {asked!r} and there is no "
                             f"fallback; valid routes: {', '.join(self.routes)}", step=self.name,
                             attempts=[f"route {asked!r}: unknown"])
        if isinstance(target, Agent):
            return await invoke(ctx, target, input, priority=priority)
        sub = ctx.child(target_name(target))
        sub.priority = priority  # a nested workflow's calls inherit the route's priority
        return await target(sub, input)
