"""Context compression: long context handed to the next agent is summarised by a cheap model.

The raw text stays in the journal (it is the producing step's recorded output); the
summary is itself a journaled agent call, so a resumed run hands on the same summary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from baton.agent import Agent
from baton.context import RunContext
from baton.patterns._base import output_of
from baton.patterns._settings import CompressorSettings
from baton.settings import check_settings, declared

SUMMARIZER = Agent(
    "summarizer", model="claude-haiku-4-5", max_tokens=600, temperature=0, task_type="formatting",
    system="Compress the text you are given for another agent: keep every fact, number, name and open question; "
           "drop repetition and filler. Answer with the compressed text only.",
)


@dataclass
class Compressor:
    """Summarises a text longer than ``over_chars`` with a cheap model before it is handed on."""

    over_chars: int = declared(CompressorSettings, "over_chars")
    """Texts longer than this are summarised; shorter ones pass unchanged (no model call)."""
    summarizer: Agent = field(default_factory=lambda: SUMMARIZER)

    def __post_init__(self) -> None:
        check_settings(self, "compress_context")

    async def __call__(self, ctx: RunContext, text: str) -> str:
        if len(text) <= self.over_chars:
            return text
        return str(output_of(await ctx.call(self.summarizer, text)))
