"""Model routing: pick a model tier per agent call when an agent's model is ``auto``.

Task types map to tiers (classification, extraction, formatting -> the cheap tier;
synthesis, reasoning -> the strong tier). Without a task type, either a cheap
complexity score of the input decides (length, reasoning words, questions; no model
call), or, with ``assess``, a small model (Haiku) rates the task from 0 to 1 and the
score picks the tier. The assessment is an ordinary model call under the agent call's
key (``KEY/route``): journaled, cached, budgeted and billed like any other, so a
resumed run routes the same way. One agent call is assessed once; its later turns
keep the tier. The price ratio between tiers is what a router saves.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from baton.errors import WorkflowError
from baton.messages import Message, ModelRequest
from baton.observe import events as ev
from baton.observe.events import new_id

AUTO = "auto"

_HARD_WORDS = re.compile(r"\b(analy[sz]e|design|prove|plan|trade-?offs?|architecture|strategy|derive|compare|"
                         r"synthesi[sz]e|evaluate|why)\b", re.I)
_NUMBER = re.compile(r"\d+(?:\.\d+)?|\.\d+")

ASSESS_SYSTEM = (
    "You rate how complex a task is for a language model, so that it can be sent to a model of the right size. "
    "0.0 is trivial (classify, extract, reformat, look up one fact), 0.5 is ordinary (summarise, write a short "
    "piece, answer a question that needs some thought), 1.0 is hardest (multi-step reasoning, design, proofs, "
    "weighing trade-offs across many facts). Reply with only the number, e.g. 0.3.")
ASSESS_MAX_TOKENS = 8
ASSESS_MAX_CHARS = 4000
"""The assessor sees at most this much of a task (and its full length): rating needs no more."""
_TIERS = ("cheap", "standard", "strong")


def complexity(text: str) -> float:
    """0..1: longer inputs and reasoning words score higher. Cheap by design (no model call)."""
    length = min(len(text) / 6000, 1.0)
    words = min(len(_HARD_WORDS.findall(text)) / 4, 1.0)
    questions = min(text.count("?") / 5, 1.0)
    return round(0.5 * length + 0.35 * words + 0.15 * questions, 3)


def parse_score(text: str) -> float | None:
    """The assessor's rating as 0..1 (a 0-10 scale is read as tenths), or None if it gave none."""
    found = _NUMBER.search(text)
    if found is None:
        return None
    value = float(found.group())
    if 1.0 < value <= 10.0:
        value /= 10.0
    return value if math.isfinite(value) and 0.0 <= value <= 1.0 else None


def _threshold(data: dict[str, Any], name: str, default: float) -> float:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise WorkflowError(f"routing.{name} must be a number from 0 to 1, not {value!r}", field=f"routing.{name}")
    return float(value)


@dataclass(frozen=True)
class ModelRouter:
    """Which model an ``auto`` agent call gets: by task type, else by a heuristic or an assessment score."""

    cheap: str = "claude-haiku-4-5"
    standard: str = "claude-sonnet-4-6"
    strong: str = "claude-opus-4-6"
    by_task: dict[str, str] = field(default_factory=lambda: {
        "classification": "cheap", "extraction": "cheap", "formatting": "cheap",
        "synthesis": "strong", "reasoning": "strong"})
    cheap_below: float = 0.2
    strong_above: float = 0.6
    assess: bool = False
    """Ask ``assessor`` to rate each task instead of scoring it with the heuristic."""
    assessor: str = "claude-haiku-4-5"
    assess_cheap_below: float = 0.4
    """An assessed score below this goes to the cheap tier..."""
    assess_strong_above: float = 0.75
    """...above this to the strong tier; in between, the standard one."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelRouter:
        """The YAML ``routing:`` mapping (the schema checked its keys and types)."""
        values: dict[str, Any] = {k: str(data[k]) for k in ("cheap", "standard", "strong", "assessor") if k in data}
        for k in ("cheap_below", "strong_above", "assess_cheap_below", "assess_strong_above"):
            values[k] = _threshold(data, k, getattr(cls, k))
        if values["cheap_below"] > values["strong_above"] or values["assess_cheap_below"] > values[
                "assess_strong_above"]:
            raise WorkflowError("routing: a cheap_below threshold is above its strong_above", field="routing")
        return cls(**values, assess=bool(data.get("assess", False)))

    def model_of(self, tier: str) -> str:
        return {"cheap": self.cheap, "standard": self.standard, "strong": self.strong}[tier]

    def tier_of(self, score: float, *, assessed: bool) -> str:
        low, high = ((self.assess_cheap_below, self.assess_strong_above) if assessed
                     else (self.cheap_below, self.strong_above))
        return "cheap" if score < low else "strong" if score > high else "standard"

    def choose(self, task_type: str | None, input_text: str) -> str:
        """The heuristic choice (no model call): by task type, else by ``complexity``."""
        tier = self.by_task.get(task_type or "")
        if tier is None:
            tier = self.tier_of(complexity(input_text), assessed=False)
        return self.model_of(tier)


def _excerpt(task: str) -> str:
    """What the assessor is shown: a long task's start and how long it is (its cost stays small)."""
    if len(task) <= ASSESS_MAX_CHARS:
        return task
    return f"{task[:ASSESS_MAX_CHARS]}\n[... the task continues: {len(task):,} characters in all]"


def route_key(key: str) -> str:
    """The agent call a model turn belongs to (``0/m2c1`` -> ``0``) and its assessment's key."""
    head, sep, _ = key.rpartition("/m")
    return f"{head if sep else key}/route"


async def route(calls: Any, scope: Any, agent: Any, key: str, request: ModelRequest) -> str:
    """The model for a model turn of an ``auto`` agent (``calls`` is the run's ``ModelCalls``).

    With ``assess``, the first turn of each agent call asks the assessor (journaled under
    ``route_key(key)``); its later turns, and a resumed run, reuse that answer.
    """
    runtime = calls.run
    router: ModelRouter = runtime.router
    text = request.messages[0].text if request.messages else ""
    if not router.assess or agent.task_type in router.by_task:
        return router.choose(agent.task_type, text)
    rkey = route_key(key)
    chosen: str | None = runtime.routes.get(rkey)
    if chosen is not None:
        return chosen
    assessor = agent.with_(name=f"{agent.name}.route", model=router.assessor, system=ASSESS_SYSTEM, tools=[],
                           output=None, max_tokens=ASSESS_MAX_TOKENS, temperature=0.0, batch=False,
                           cache_prompt=False, fallback_models=[], task_type=None, sections=None, tool_choice=None)
    ask = ModelRequest(model=router.assessor, messages=[Message.user(_excerpt(text))], system=ASSESS_SYSTEM,
                  max_tokens=ASSESS_MAX_TOKENS, temperature=0.0)
    response, _cost = await calls.call(scope, assessor, rkey, ask)
    score = parse_score(response.text)
    tier = router.tier_of(score, assessed=True) if score is not None else None
    chosen = router.model_of(tier) if tier is not None else router.choose(None, text)  # no number: the heuristic
    runtime.routes[rkey] = chosen
    runtime.emit(ev.MODEL_ROUTED, new_id(), scope.span_id, {
        "agent": agent.name, "key": rkey, "score": score, "tier": tier or "heuristic", "model": chosen,
        "assessor": router.assessor})
    return chosen
