"""Live progress on stderr while a run works.

On a terminal: one status line redrawn in place (at most ``max_redraws_per_s`` times a
second) with the agents running now, agents and steps finished, tokens and cost so
far; notable events (retries, rate-limit waits, breaker changes, approvals, errors)
are printed above it. Elsewhere (CI logs, files): plain lines, one per finished agent
and notable event. ``close()`` prints a summary line. Only names, counts, durations
and error types are printed, never content or error messages.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from typing import Any, TextIO

from baton.observe import events as ev
from baton.observe.capture import sanitized, sanitized_text
from baton.observe.events import Event

_CLEAR = "\r\x1b[2K"


def _fmt_tokens(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1_000_000:.1f}M"
    if n >= 10_000:
        return f"{n / 1000:.0f}k"
    if n >= 1000:
        return f"{n / 1000:.1f}k"
    return str(n)


_NOTABLE_STOPS = frozenset({"max_tokens", "refusal", "model_context_window_exceeded", "pause_turn"})
# Frequent kinds that only move counters: no notice line, so no need to sanitize them.
_QUIET_KINDS = frozenset({ev.MODEL_REQUEST, ev.TOOL_CALL, ev.TOOL_RESULT, ev.STEP_START, ev.STEP_END,
                          ev.STEP_REPLAYED, ev.CACHE_HIT, ev.STATE_CHANGE, ev.HANDOFF_RECORDED, ev.BUS_MESSAGE,
                          ev.ROUTER_DECISION, ev.FAN_OUT_DONE, ev.CONSENSUS_RESULT, ev.REFINE_ROUND})


def _plan_line(d: dict[str, Any]) -> str:
    """What a ``plan.invalid`` event means for the run: another attempt, a repair, or the end."""
    where = f" (attempt {d.get('attempt')} of {d.get('attempts')})" if d.get("attempts") else ""
    after = {"replan": "; re-planning", "repair": "; repairing it"}.get(str(d.get("next")), "")
    if d.get("next") == "fail":
        after = "; giving up"
    return f"plan invalid{where}{after}"


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


_PAUSES = frozenset({"BatchPending", "ApprovalRequired", "DecisionRequired"})
"""Errors that stop an agent in a resumable state (a detached batch, a human decision)."""


def _batch_line(kind: str, d: dict[str, Any]) -> str:
    """A Message Batch was submitted, or a poll saw how far it got."""
    if kind == ev.BATCH_SUBMITTED:
        return f"batch {d.get('batch_id')} submitted: {d.get('requests')} requests to {d.get('model')}"
    raw = d.get("counts")
    counts: dict[str, Any] = raw if isinstance(raw, dict) else {}
    total = int(sum([_num(v) for v in counts.values()]))
    return f"batch {d.get('batch_id')} {d.get('status')}: {total - int(_num(counts.get('processing')))}/{total} done"


def _notice_line(kind: str, d: dict[str, Any]) -> str | None:
    """The plain progress line an event deserves on its own (None: it only moves the counters)."""
    if kind == ev.MODEL_ERROR:
        status = f" {d['status']}" if d.get("status") is not None else ""
        return f"model {d.get('model')} error{status}: {d.get('error_type')}"
    if kind == ev.TOOL_DENIED:
        return f"agent {d.get('agent')} asked for tool {d.get('tool')}, which it was not given"
    if kind == ev.RETRY:
        return (f"retry {d.get('target')} attempt {int(_num(d.get('attempt'))) + 1} "
                f"in {_num(d.get('delay_s')):.1f}s ({d.get('error_type')})")
    if kind == ev.RATE_LIMIT_WAIT:
        return f"rate limit: waited {_num(d.get('wait_s')):.1f}s for {d.get('model')}"
    if kind == ev.BREAKER_CHANGE:
        return f"breaker {d.get('target')}: {d.get('old')} -> {d.get('new')}"
    if kind == ev.APPROVAL_REQUESTED:
        return f"approval requested: {d.get('step')}"
    if kind == ev.APPROVAL_DECIDED:
        return f"approval {d.get('step')}: {'approved' if d.get('approved') else 'rejected'}"
    if kind == ev.BUDGET_CHECK and d.get("ok") is False:
        return f"budget: {d.get('limit')} limit reached ({d.get('spent')} of {d.get('allowed')})"
    if kind == ev.PLAN_INVALID:
        return _plan_line(d)
    if kind == ev.RUN_WARNING:
        return f"warning from {d.get('source')}: {d.get('code')}"
    if kind in (ev.BATCH_SUBMITTED, ev.BATCH_PROGRESS):
        return _batch_line(kind, d)
    if kind == ev.PLAN_REPAIRED:
        changes = d.get("changes")
        return f"plan repaired ({len(changes)} changes)" if isinstance(changes, list) else "plan repaired"
    return None


_PROGRESS_KINDS = frozenset({
    ev.RUN_START, ev.RUN_END, ev.AGENT_START, ev.AGENT_END, ev.MODEL_RESPONSE, ev.MODEL_ERROR, ev.TOOL_CALL,
    ev.TOOL_DENIED, ev.STEP_END, ev.RETRY, ev.RATE_LIMIT_WAIT, ev.BREAKER_CHANGE, ev.APPROVAL_REQUESTED,
    ev.APPROVAL_DECIDED, ev.BUDGET_CHECK, ev.PLAN_INVALID, ev.PLAN_REPAIRED, ev.RUN_WARNING, ev.BATCH_SUBMITTED,
    ev.BATCH_PROGRESS})


class ProgressSink:
    """Show a run's progress on ``stream`` (stderr by default).

    ``tty=None`` asks the stream; pass ``True``/``False`` to force the redrawn status
    line or plain lines.
    """

    event_kinds = _PROGRESS_KINDS
    """The event kinds this sink shows or counts: the stream does not build or queue the others for it."""

    def __init__(self, stream: TextIO | None = None, tty: bool | None = None, *,
                 max_redraws_per_s: float = 10.0, summary: bool = True) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self._summary = summary
        """Print ``summary()`` on close (the CLI prints its own end-of-run block instead)."""
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty()) if callable(isatty) else False
        self.tty = tty
        self._min_interval = 1.0 / max_redraws_per_s if max_redraws_per_s > 0 else 0.0
        self._last_draw = float("-inf")
        self._drawn = False  # a status line is on screen and must be cleared before other output
        self._dirty = False
        self._broken = False
        self._first_ts: float | None = None
        self._active: dict[str, str] = {}  # agent span id -> agent name
        self.agents_done = 0
        self.agent_errors = 0
        self.steps_done = 0
        self.model_calls = 0
        self.tool_calls = 0
        self.retries = 0
        self.tokens = {"input": 0, "output": 0, "cache_read": 0, "cache_write": 0}
        self.cost_usd = 0.0
        self._run_id: str | None = None
        self._workflow: str | None = None
        self._run_end: dict[str, Any] | None = None
        self._closed = False
        self._lines: list[str] = []  # printed at the end of the batch, in one write
        self._lock = threading.Lock()
        # On a TTY a ticker redraws what throttling held back, and keeps the clock moving
        # during long quiet model calls.
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()

    # --- events ---------------------------------------------------------------------------
    # A batched sink (``process`` + ``batch_done``): the event stream hands it a loop iteration's
    # events together, so a fan-out of a thousand agents costs one write, not a thousand flushes.

    def handle(self, event: Event) -> None:
        """One event, shown now (for callers outside an ``EventStream``)."""
        self.process(event)
        self.batch_done()

    def process(self, event: Event) -> None:
        if self._closed:
            return
        with self._lock:
            self._update(event)

    def batch_done(self) -> None:
        with self._lock:
            if self._closed:
                return
            if self._lines:
                lines, self._lines = self._lines, []
                self._print_lines(lines)
            if self.tty:
                if self._ticker is None:
                    self._ticker = threading.Thread(target=self._tick, name="baton-progress", daemon=True)
                    self._ticker.start()
                self._maybe_redraw()

    def _update(self, event: Event) -> None:
        """Counters from the raw event (numbers only); names are redacted where they are shown,
        and the rare events that print a notice are sanitized whole."""
        kind, d = event.kind, event.data
        if self._first_ts is None:
            self._first_ts = event.ts
        line: str | None = None
        if kind == ev.MODEL_RESPONSE:
            self._add_response(d)
            if d.get("stop_reason") in _NOTABLE_STOPS:
                s = sanitized(event, "none")
                line = f"agent {s.get('agent')}: model {s.get('model')} stopped: {s.get('stop_reason')}"
        elif kind == ev.AGENT_START:
            self._active[event.span_id] = str(d.get("agent") or "?")
        elif kind == ev.AGENT_END:
            line = self._agent_end(event, d)
        elif kind == ev.RUN_START:
            line = self._run_start(event)
        elif kind == ev.RUN_END:
            if event.parent_id is None:
                self._run_end = dict(sanitized(event, "none"))
        else:
            self._count(kind)
            if kind not in _QUIET_KINDS:
                line = _notice_line(kind, sanitized(event, "none"))
        self._dirty = True
        if line is not None:
            self._lines.append(f"[{self._elapsed(event.ts):7.2f}s] {line}")

    def _run_start(self, event: Event) -> str | None:
        if self._run_id is not None:
            return None
        self._run_id, self._workflow = sanitized_text(event.run_id), sanitized(event, "none").get("workflow")
        if self.tty:
            return None  # the status line says it
        return f"run {self._run_id} started" + (f" ({self._workflow})" if self._workflow else "")

    def _add_response(self, d: dict[str, Any]) -> None:
        self.model_calls += 1
        usage = d.get("usage")
        if isinstance(usage, dict):
            self.tokens["input"] += int(_num(usage.get("input_tokens")))
            self.tokens["output"] += int(_num(usage.get("output_tokens")))
            self.tokens["cache_read"] += int(_num(usage.get("cache_read_input_tokens")))
            self.tokens["cache_write"] += int(_num(usage.get("cache_creation_input_tokens")))
        self.cost_usd += _num(d.get("cost_usd"))

    def _agent_end(self, event: Event, d: dict[str, Any]) -> str | None:
        name = sanitized_text(self._active.pop(event.span_id, "") or str(d.get("agent") or "?"))
        self.agents_done += 1
        if d.get("status") == "error":
            self.agent_errors += 1
            error_type = sanitized(event, "none").get("error_type") or "error"
            verb = "paused" if d.get("error_type") in _PAUSES else "failed"  # resumable, not broken
            return f"agent {name} {verb} after {_num(d.get('duration_s')):.2f}s: {error_type}"
        if self.tty:
            return None
        line = f"agent {name} done in {_num(d.get('duration_s')):.2f}s"
        usage = d.get("usage")
        if isinstance(usage, dict):
            total = sum(int(_num(usage.get(k))) for k in ("input_tokens", "output_tokens",
                                                          "cache_read_input_tokens", "cache_creation_input_tokens"))
            line += f", {_fmt_tokens(total)} tokens"
        if isinstance(d.get("cost_usd"), int | float):
            line += f", ${d['cost_usd']:.4f}"
        return line

    def _count(self, kind: str) -> None:
        if kind == ev.TOOL_CALL:
            self.tool_calls += 1
        elif kind == ev.STEP_END:
            self.steps_done += 1
        elif kind == ev.RETRY:
            self.retries += 1

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._lines:  # events processed outside a stream's batch
                lines, self._lines = self._lines, []
                self._print_lines(lines)
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=2)
        with self._lock:
            if self._summary:
                self._write((_CLEAR if self._drawn else "") + self.summary() + "\n")
            elif self._drawn:
                self._write(_CLEAR)
            self._drawn = False

    def _tick(self) -> None:
        interval = max(self._min_interval, 0.05)
        while not self._stop.wait(interval):
            with self._lock:
                if self._closed:
                    return
                if time.monotonic() - self._last_draw >= 1.0:
                    self._dirty = True  # the elapsed clock moved
                self._maybe_redraw()

    # --- rendering --------------------------------------------------------------------------

    def summary(self) -> str:
        end = self._run_end or {}
        parts = ["run"]
        if self._run_id:
            parts.append(self._run_id)
        status = end.get("status") or ("unfinished" if self._run_id else None)
        if status:
            parts.append(str(status))
        duration = end.get("duration_s")
        if isinstance(duration, int | float):
            parts.append(f"in {duration:.2f}s")
        head = " ".join(parts)
        usage = end.get("usage")
        t = dict(self.tokens)
        if isinstance(usage, dict):
            t = {"input": int(_num(usage.get("input_tokens"))), "output": int(_num(usage.get("output_tokens"))),
                 "cache_read": int(_num(usage.get("cache_read_input_tokens"))),
                 "cache_write": int(_num(usage.get("cache_creation_input_tokens")))}
        calls = end.get("model_calls") if isinstance(end.get("model_calls"), int) else self.model_calls
        cost = end.get("cost_usd") if isinstance(end.get("cost_usd"), int | float) else self.cost_usd
        total = sum(t.values())
        body = [f"{self.agents_done} agent calls", f"{calls} model calls", f"{self.tool_calls} tool calls",
                f"{_fmt_tokens(total)} tokens (in {t['input']}, out {t['output']}, cache read "
                f"{t['cache_read']}, cache write {t['cache_write']})", f"${cost:.4f}"]
        if self.retries:
            body.append(f"{self.retries} retries")
        if self.agent_errors:
            body.append(f"{self.agent_errors} agent errors")
        return head + ": " + ", ".join(body)

    def status_line(self) -> str:
        active = list(self._active.values())  # raw names: redacted here, where they are shown
        shown = ", ".join(sanitized_text(name) for name in active[:3]) + (
            f" +{len(active) - 3}" if len(active) > 3 else "")
        elapsed = f"{time.time() - self._first_ts:.0f}s" if self._first_ts is not None else "0s"
        parts = [f"baton {self._workflow or self._run_id or ''}".rstrip() + f" {elapsed}",
                 f"{len(active)} running" + (f" ({shown})" if shown else ""),
                 f"{self.agents_done} agents done", f"{self.steps_done} steps",
                 f"{_fmt_tokens(sum(self.tokens.values()))} tok", f"${self.cost_usd:.4f}"]
        text = " | ".join(parts)
        width = shutil.get_terminal_size((100, 24)).columns - 1
        return text if len(text) <= width else text[: max(width - 3, 0)] + "..."

    def _elapsed(self, ts: float) -> float:
        return ts - self._first_ts if self._first_ts is not None else 0.0

    def _maybe_redraw(self) -> None:
        now = time.monotonic()
        if not self._dirty or now - self._last_draw < self._min_interval:
            return
        self._last_draw = now
        self._dirty = False
        self._drawn = True
        self._write(_CLEAR + self.status_line())

    def _print_lines(self, lines: list[str]) -> None:
        text = "\n".join(lines) + "\n"
        if self.tty:
            self._write(_CLEAR + text)
            self._drawn = False
            self._last_draw = float("-inf")  # put the status line back right away
        else:
            self._write(text)

    def _write(self, text: str) -> None:
        if self._broken:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            self._broken = True  # stderr went away (closed pipe): progress is not worth a failed run


class RunTally:
    """Counts what a run did, for the end-of-run summary: agent calls by name, model and tool
    calls, and the most agents that were running at the same time. Names and counts only."""

    event_kinds = frozenset({ev.AGENT_START, ev.AGENT_END, ev.MODEL_RESPONSE, ev.TOOL_CALL, ev.PLAN_REPAIRED})
    """The event kinds it counts."""

    def __init__(self) -> None:
        self.agents: dict[str, int] = {}
        self.model_calls = 0
        self.tool_calls = 0
        self.peak_agents = 0
        self.plan_repaired = False
        self._running: set[str] = set()
        self._lock = threading.Lock()

    def handle(self, event: Event) -> None:
        self.process(event)

    def process(self, event: Event) -> None:
        """Count one event (batched: the stream calls it at the end of the loop iteration)."""
        with self._lock:
            if event.kind == ev.AGENT_START:
                name = sanitized_text(str(event.data.get("agent") or "?"))
                self.agents[name] = self.agents.get(name, 0) + 1
                self._running.add(event.span_id)
                self.peak_agents = max(self.peak_agents, len(self._running))
            elif event.kind == ev.AGENT_END:
                self._running.discard(event.span_id)
            elif event.kind == ev.MODEL_RESPONSE:
                self.model_calls += 1
            elif event.kind == ev.TOOL_CALL:
                self.tool_calls += 1
            elif event.kind == ev.PLAN_REPAIRED:
                self.plan_repaired = True

    def batch_done(self) -> None:
        """Nothing to write per batch."""

    def close(self) -> None:
        """Nothing to flush."""


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


UI_PORT = 8377
"""``baton ui``'s default port (the end of a run points there)."""


def end_of_run(run_id: str, status: str, duration_s: float, cost_usd: float, input_tokens: int,
               output_tokens: int, tally: RunTally | None) -> str:
    """The block printed on stderr when a CLI run ends: what ran, whether in parallel, what it
    cost at Claude prices, and how to look at it."""
    lines = [f"baton: run {run_id} {status} in {duration_s:.1f}s"]
    if tally is not None:
        team = ", ".join(name if n == 1 else f"{name} x{n}" for name, n in tally.agents.items())
        calls = sum(tally.agents.values())
        lines.append(f"  ran:      {_plural(calls, 'agent call')}" + (f" ({team})" if team else "")
                     + f", {_plural(tally.model_calls, 'model call')}, {_plural(tally.tool_calls, 'tool call')}")
        lines.append("  parallel: " + (f"yes, up to {tally.peak_agents} agents at once" if tally.peak_agents > 1
                                       else "no, one agent at a time"))
        if tally.plan_repaired:
            lines.append("  plan:     repaired after invalid plans (see the plan.repaired event)")
    lines.append(f"  cost:     ${cost_usd:.4f} at Claude prices ({input_tokens} tokens in, {output_tokens} out)")
    lines.append(f"  look:     baton show {run_id}")
    lines.append(f"  browse:   baton ui, then open http://127.0.0.1:{UI_PORT}/ui/runs/{run_id}")
    return "\n".join(lines)
