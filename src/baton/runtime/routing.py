"""Model routing: pick a model tier per call when an agent's model is ``auto``.

Task types map to tiers (classification, extraction, formatting -> the cheap tier;
synthesis, reasoning -> the strong tier); without a task type, a cheap complexity
score of the input decides. The price ratio between tiers is what a router saves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

AUTO = "auto"

_HARD_WORDS = re.compile(r"\b(analy[sz]e|design|prove|plan|trade-?offs?|architecture|strategy|derive|compare|"
                         r"synthesi[sz]e|evaluate|why)\b", re.I)


def complexity(text: str) -> float:
    """0..1: longer inputs and reasoning words score higher. Cheap by design (no model call)."""
    length = min(len(text) / 6000, 1.0)
    words = min(len(_HARD_WORDS.findall(text)) / 4, 1.0)
    questions = min(text.count("?") / 5, 1.0)
    return round(0.5 * length + 0.35 * words + 0.15 * questions, 3)


@dataclass(frozen=True)
class ModelRouter:
    cheap: str = "claude-haiku-4-5"
    standard: str = "claude-sonnet-4-6"
    strong: str = "claude-opus-4-6"
    by_task: dict[str, str] = field(default_factory=lambda: {
        "classification": "cheap", "extraction": "cheap", "formatting": "cheap",
        "synthesis": "strong", "reasoning": "strong"})
    cheap_below: float = 0.2
    strong_above: float = 0.6

    def choose(self, task_type: str | None, input_text: str) -> str:
        tier = self.by_task.get(task_type or "")
        if tier is None:
            score = complexity(input_text)
            tier = "cheap" if score < self.cheap_below else "strong" if score > self.strong_above else "standard"
        return {"cheap": self.cheap, "standard": self.standard, "strong": self.strong}[tier]
