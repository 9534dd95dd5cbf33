"""A worst-case cost bound for a workflow file, from its limits and the price table.

Structure gives the most model calls each pattern can make (turns per agent call,
re-plans, rounds, messages); each call is priced at the agent's ``max_tokens`` of
output plus an assumed input size. The run's own limits (``max_model_calls``,
``budget_usd``) cap the result, since the runtime enforces them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any

from baton.agent import Agent
from baton.models.pricing import price_for
from baton.patterns._settings import (
    BusSettings,
    FanOutSettings,
    HandoffsSettings,
    OrchestratorSettings,
    RefineSettings,
)

DEFAULT_INPUT_TOKENS = 8000


@dataclass
class Bound:
    calls: float = 0.0
    usd: float = 0.0
    unpriced: set[str] = field(default_factory=set)
    per_item: bool = False
    """True when the bound is per input item (fan_out over lines/json)."""

    def __add__(self, o: Bound) -> Bound:
        return Bound(self.calls + o.calls, self.usd + o.usd, self.unpriced | o.unpriced, self.per_item or o.per_item)

    def times(self, n: float) -> Bound:
        return Bound(self.calls * n, self.usd * n, set(self.unpriced), self.per_item)

    @staticmethod
    def worst(items: list[Bound]) -> Bound:
        if not items:
            return Bound()
        top = max(items, key=lambda b: (b.usd, b.calls))
        out = Bound(top.calls, top.usd, set().union(*(b.unpriced for b in items)), any(b.per_item for b in items))
        return out


def _agent(agent: Agent | None, input_tokens: int) -> Bound:
    if agent is None:
        return Bound()
    price = price_for(agent.model)
    calls = float(agent.max_turns)
    if price is None:
        return Bound(calls, 0.0, {agent.model})
    per_call = (input_tokens * price.input + agent.max_tokens * price.output) / 1_000_000
    return Bound(calls, per_call * calls)


def _target(t: Any, input_tokens: int) -> Bound:
    if isinstance(t, Agent):
        return _agent(t, input_tokens)
    wf = getattr(t, "spec", None)
    if isinstance(wf, dict) and hasattr(t, "agents"):
        return workflow_bound(t, input_tokens, capped=False)
    return Bound()


def workflow_bound(wf: Any, input_tokens: int = DEFAULT_INPUT_TOKENS, *, capped: bool = True) -> Bound:
    """The bound of a built ``YamlWorkflow``."""
    agents: dict[str, Agent] = wf.agents
    nested = {k.rsplit("/", 1)[-1]: v for k, v in wf.nested.items()}

    def ref(r: Any) -> Bound:
        if isinstance(r, dict) and "workflow" in r:
            sub = nested.get(r["workflow"].rsplit("/", 1)[-1])
            return workflow_bound(sub, input_tokens, capped=False) if sub else Bound()
        return _agent(agents.get(r), input_tokens)

    def agent(name: str | None) -> Bound:
        return _agent(agents.get(name) if name else None, input_tokens)

    b = _pattern_bound(wf.spec["workflow"], ref, agent)
    return _capped(b, wf.limits) if capped else b


def _total(bounds: Iterable[Bound]) -> Bound:
    total = Bound()
    for b in bounds:
        total = total + b
    return total


def _setting(spec: dict[str, Any], pattern: type[Any], name: str) -> Any:
    """The file's value, else the pattern's own default (declared once, in ``patterns/_settings``)."""
    if name in spec:
        return spec[name]
    return next(f.default for f in fields(pattern) if f.name == name)


def _pattern_bound(spec: dict[str, Any], ref: Callable[[Any], Bound], agent: Callable[[str | None], Bound]) -> Bound:
    """The worst case of one pattern: ``ref`` bounds an agent or nested workflow, ``agent`` a named agent."""
    kind = spec["pattern"]
    if kind == "agent":
        return ref(spec["agent"])
    if kind == "pipeline":
        def stage(s: Any) -> Bound:
            if not (isinstance(s, dict) and ("gate" in s or "name" in s)):
                return ref(s)
            target = {k: v for k, v in s.items() if k in ("agent", "workflow")} if "workflow" in s else s.get("agent")
            return ref(target) + agent(s.get("gate"))

        return _total(stage(s) for s in spec["stages"])
    if kind == "orchestrator":
        return (agent(spec["planner"]).times(_setting(spec, OrchestratorSettings, "max_replans") + 1)
                + Bound.worst([ref(w) for w in spec["workers"]]).times(_setting(spec, OrchestratorSettings, "max_subtasks"))
                + agent(spec.get("synthesizer")))
    if kind == "fan_out":
        if "agents" in spec:
            branches = _total(ref(a) for a in spec["agents"])
        else:  # items are capped (max_items), so the bound is absolute
            branches = ref(spec["each"]["agent"]).times(_setting(spec, FanOutSettings, "max_items"))
        return branches + agent(spec.get("aggregator"))
    if kind == "router":
        routes = [ref(r) for r in spec["routes"].values()]
        if "fallback" in spec:
            routes.append(ref(spec["fallback"]))
        return agent(spec["classifier"]) + Bound.worst(routes)
    if kind == "consensus":
        return _total(ref(v) for v in spec["voters"]) + agent(spec.get("judge"))
    if kind == "refine":
        critics = _total(agent(c) for c in spec["critics"])
        return agent(spec["drafter"]) + (critics + agent(spec.get("reviser") or spec["drafter"])).times(
            _setting(spec, RefineSettings, "max_rounds"))
    if kind == "bus":
        return Bound.worst([agent(n) for n in spec["subscriptions"]]).times(_setting(spec, BusSettings, "max_messages"))
    if kind == "handoffs":
        return Bound.worst([agent(n) for n in spec["agents"]]).times(_setting(spec, HandoffsSettings, "max_handoffs") + 1)
    if kind == "fallback":
        return _total(ref(t) + agent(spec.get("gate")) for t in spec["chain"])
    return Bound()


def _capped(b: Bound, limits: Any) -> Bound:
    """What the file's own limits let the run spend at most."""
    if limits.max_model_calls is not None and b.calls > limits.max_model_calls and b.calls:
        b = b.times(limits.max_model_calls / b.calls)
    if limits.budget_usd is not None and b.usd > limits.budget_usd:
        b = Bound(b.calls, limits.budget_usd, b.unpriced, b.per_item)
    return b
