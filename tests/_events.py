"""An event sink for tests: keeps every event a run emitted, to be read afterwards."""

from __future__ import annotations

from typing import Any

from baton.observe.events import Event


class EventLog:
    """Keeps every event; ``of(kind)`` gives their data, ``kinds()`` the kinds in order."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def handle(self, event: Event) -> None:
        self.events.append(event)

    def close(self) -> None:
        return None

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e.data for e in self.events if e.kind == kind]

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]
