"""``baton run --stream`` (agents' text on stdout as it is generated) and ``baton fork``."""

from __future__ import annotations

import contextlib
import sys
from typing import Any, TextIO

from baton.errors import UsageError
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


MAX_EDIT_BYTES = 16 * 1024 * 1024


def add_fork_parser(sub: Any, handler: Any) -> None:
    """``baton fork RUN_ID --at STEP [--edit TEXT | --edit-file F]``, run by ``handler(args)``."""
    f = sub.add_parser("fork", help="a new run from a run's journal up to a step, with that step edited or redone")
    f.add_argument("run_id")
    f.add_argument("--at", required=True, metavar="STEP", help="the step key (as baton show lists it)")
    g = f.add_mutually_exclusive_group()
    g.add_argument("--edit", metavar="TEXT", help="the result STEP gives in the fork (a model step: its text)")
    g.add_argument("--edit-file", metavar="FILE", help="read the edit from FILE (UTF-8 text)")
    f.add_argument("--workflow", metavar="FILE|MODULE:FUNCTION",
                   help="the workflow to run the fork with; needed for a Python workflow or a workflow file "
                        "that changed since the parent run started")
    f.add_argument("--stream", action="store_true", help="print the agents' text as it is generated")
    f.add_argument("--store", help="store URL (default: $BATON_STORE or sqlite:///.baton/baton.db)")
    f.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    f.add_argument("--provider", help="anthropic | local | openai")
    f.add_argument("--quiet", action="store_true", help="no live progress on stderr")
    f.set_defaults(fn=handler)


def edit_text(args: Any) -> str | None:
    """The fork's edit: ``--edit`` as given, or ``--edit-file`` read as UTF-8 (at most 16 MiB)."""
    if args.edit is not None:
        return str(args.edit)
    if args.edit_file is None:
        return None
    try:
        with open(args.edit_file, "rb") as fh:
            data = fh.read(MAX_EDIT_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read --edit-file {args.edit_file}: {exc.strerror or exc}") from None
    if len(data) > MAX_EDIT_BYTES:
        raise UsageError(f"--edit-file {args.edit_file} is larger than 16 MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"--edit-file {args.edit_file} is not UTF-8 text") from None
