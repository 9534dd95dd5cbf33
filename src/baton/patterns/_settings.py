"""The patterns' settings, declared once: type, default and bounds of each.

A pattern's dataclass takes its field from here (``declared``) and checks it when built;
the workflow schema (``baton.spec.schema``) and the cost bound of ``baton validate`` derive
from the same declarations. This module imports nothing but ``baton.settings``, so reading
a workflow file does not load the patterns it does not use.
"""

from __future__ import annotations

from dataclasses import dataclass

from baton.settings import setting

DEFAULT_MAX_ITEMS = 100
"""A fan-out's item cap when none is given: a longer list fails the step."""


@dataclass(frozen=True)
class OrchestratorSettings:
    """``Orchestrator``'s settings (YAML: ``workflow:`` with ``pattern: orchestrator``)."""

    max_subtasks: int = setting(10, "integer", minimum=1)
    max_replans: int = setting(2, "integer", minimum=0)
    concurrency: int | None = setting(None, "integer", minimum=1)
    repair_plan: bool = setting(False, "boolean")
    min_subtasks: int = setting(1, "integer", minimum=1)


@dataclass(frozen=True)
class CompressorSettings:
    """``Compressor``'s settings (YAML: the orchestrator's ``compress_context``)."""

    over_chars: int = setting(4000, "integer", minimum=1)


@dataclass(frozen=True)
class FanOutSettings:
    """``FanOut``'s settings."""

    max_items: int = setting(DEFAULT_MAX_ITEMS, "integer", minimum=1)
    batch: bool = setting(False, "boolean")  # the branches go out as one Message Batch


@dataclass(frozen=True)
class RefineSettings:
    """``Refine``'s settings."""

    max_rounds: int = setting(3, "integer", minimum=1)
    require_approval: bool = setting(False, "boolean")


@dataclass(frozen=True)
class BusSettings:
    """``Bus``'s settings."""

    max_messages: int = setting(100, "integer", minimum=1)


@dataclass(frozen=True)
class HandoffsSettings:
    """``Handoffs``' settings."""

    max_handoffs: int = setting(5, "integer", minimum=0)


@dataclass(frozen=True)
class ConsensusSettings:
    """``Consensus``' settings."""

    shuffle: bool = setting(True, "boolean")
