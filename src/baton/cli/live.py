"""``baton run --stream`` (agents' text on stdout as it is generated) and ``baton fork``."""

from __future__ import annotations

import contextlib
import sys
from typing import Any, TextIO

from baton.observe import events as ev
from baton.observe.events import Event


class TextPrinter:
    """A sink that writes model text to ``out`` as it arrives, one model call at a time.

    The call that starts writing first holds the screen until its response is in; text of
    calls running beside it is not printed live (it is in the result). Each call's text is
    preceded by the agent's name on ``err``, so stdout holds only generated text."""

    wants_deltas = True

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.current: str | None = None  # the span of the call being printed

    def handle(self, event: Event) -> None:
        kind = event.kind
        if kind == ev.TEXT_DELTA:
            if event.data.get("type") != "text":
                return
            if self.current is None:
                self.current = event.span_id
                self._write(self.err, f"--- {event.data.get('agent')} ---\n")
            if event.span_id == self.current:
                self._write(self.out, str(event.data.get("text", "")))
        elif kind in (ev.MODEL_RESPONSE, ev.MODEL_ERROR) and event.span_id == self.current:
            self.current = None
            self._write(self.out, "\n")

    @staticmethod
    def _write(stream: TextIO, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):  # a reader that went away ends the live view only
            stream.write(text)
            stream.flush()

    def close(self) -> None:
        if self.current is not None:
            self.current = None
            self._write(self.out, "\n")


def add_stream_option(sp: Any) -> None:
    sp.add_argument("--stream", action="store_true",
                    help="print the agents' text on stdout as it is generated (the result follows)")


def stream_sinks(args: Any) -> list[Any]:
    return [TextPrinter()] if getattr(args, "stream", False) else []
