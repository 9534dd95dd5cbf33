"""Circuit breakers: stop calling a target that keeps failing, probe it again after a cooldown.

States::

    closed ──(failure_threshold failures in window_s, at least failure_rate of the calls)──> open
    open ──(cooldown_s elapsed, noticed lazily on read)──> half_open
    half_open ──(a probe succeeds)──> closed
    half_open ──(a probe fails)──> open (cooldown restarts)

The rate counts every call *started* in the window, including calls still in flight:
under a concurrent burst the fast failures (resets, 5xx) return before the successes,
and counting only finished calls would trip a breaker at a 20 % error rate.

One breaker per model endpoint or tool, created on first use by a ``BreakerRegistry``.
Only failures that say the target is unhealthy should be recorded (``counts_as_failure``):
a 400 is the caller's fault and says nothing about the endpoint.

Callers (the model and the tool call paths alike) ask with ``check()``, which raises
``CircuitOpenError`` saying when the target will be probed again (``allow()`` is the bare
yes/no under it). After a call was let through the caller reports exactly one of
``record_success``, ``record_failure`` or ``release`` (no verdict: cancelled, or an error
that does not count), so a half-open probe slot is never lost. Not thread-safe: one event loop owns it.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal

import orjson

from baton.errors import CircuitOpenError, ProviderError, ToolError
from baton.settings import Settings, setting

logger = logging.getLogger(__name__)

State = Literal["closed", "open", "half_open"]
OnChange = Callable[[str, str, str], None]

@dataclass(frozen=True, slots=True)
class BreakerSettings(Settings):
    """A breaker's settings (the YAML ``breaker:`` section), declared once: the checks, the
    defaults of ``CircuitBreaker`` and the YAML schema's ``$defs/breaker`` derive from these fields."""

    section: ClassVar[str] = "breaker"
    what: ClassVar[str] = "circuit-breaker settings"

    failure_threshold: int = setting(5, "integer", minimum=1)
    """Failures in the window that may open the breaker."""
    cooldown_s: float = setting(30.0, "number", minimum=0)
    """Seconds open before a probe is let through."""
    half_open_max_calls: int = setting(1, "integer", minimum=1)
    """Probes in flight at once while half-open."""
    failure_rate: float = setting(0.5, "number", exclusive_minimum=0, maximum=1)
    """Share of the window's calls that must have failed as well."""
    window_s: float = setting(60.0, "number", minimum=0)
    """How far back failures and calls are counted."""


SETTINGS = tuple(f.name for f in fields(BreakerSettings))


def counts_as_failure(error: BaseException, *, count_rate_limits: bool = True) -> bool:
    """Whether ``error`` says the target is unhealthy.

    Counts: a retryable ``ProviderError`` or one with status >= 500 (this includes connection
    errors and provider timeouts), plain timeouts and connection errors, and ``ToolError``.
    Does not count: other 4xx (the request was wrong), budget, validation, model-behaviour and
    open-circuit errors. ``count_rate_limits=False`` leaves 429s to the rate governor.
    """
    if isinstance(error, ProviderError):
        if error.status == 429 and not count_rate_limits:
            return False
        return error.retryable or (error.status is not None and error.status >= 500)
    return isinstance(error, TimeoutError | ConnectionError | ToolError)


def _check_settings(settings: Mapping[str, Any], where: str) -> dict[str, Any]:
    BreakerSettings.from_dict(settings, where=where)  # unknown keys and bad values: WorkflowError
    return dict(settings)


class CircuitBreaker:
    """The health state of one call target."""

    def __init__(self, name: str, *, clock: Callable[[], float] = time.monotonic,
                 on_change: OnChange | None = None, **settings: Any) -> None:
        """``settings``: any of ``BreakerSettings``' fields (their defaults otherwise)."""
        checked = BreakerSettings.from_dict(settings, where=f"breaker {name}")
        self.name = name
        self.failure_threshold: int = checked.failure_threshold
        self.cooldown_s: float = float(checked.cooldown_s)
        self.half_open_max_calls: int = checked.half_open_max_calls
        self.failure_rate: float = float(checked.failure_rate)
        self.window_s: float = float(checked.window_s)
        self._started: deque[float] = deque()  # start times of calls allowed in the window
        self._failed: deque[float] = deque()  # times of failures in the window
        self._clock = clock
        self._on_change = on_change
        self._state: State = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._probes = 0

    def configure(self, **settings: Any) -> None:
        """Change settings in place, keeping the current state."""
        for key, value in _check_settings(settings, f"breaker {self.name}").items():
            setattr(self, key, float(value) if key in ("cooldown_s", "window_s", "failure_rate") else value)

    @property
    def state(self) -> State:
        if self._state == "open" and self._clock() - self._opened_at >= self.cooldown_s:
            self._probes = 0
            self._transition("half_open")
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a probe through (0.0 when not open)."""
        if self.state != "open":
            return 0.0
        return max(0.0, self._opened_at + self.cooldown_s - self._clock())

    def allow(self) -> bool:
        """May a call go to the target now? Half-open admits a bounded number of probes."""
        state = self.state
        if state == "closed":
            self._started.append(self._clock())
            return True
        if state == "half_open" and self._probes < self.half_open_max_calls:
            self._probes += 1
            return True
        return False

    def check(self) -> None:
        """``allow()`` or raise ``CircuitOpenError`` saying when the target will be probed again."""
        if not self.allow():
            if self.state == "open":
                detail = f"next probe in {self.retry_in():.1f}s"
            else:
                detail = f"{self.half_open_max_calls} probe call(s) already in flight"
            raise CircuitOpenError(
                f"circuit breaker for {self.name!r} is {self.state} after {len(self._failed)} failure(s) in "
                f"{self.window_s:g}s; failing fast ({detail})", target=self.name)

    def record_success(self) -> None:
        state = self.state
        self._release_probe()
        if state == "open":
            return  # a straggler from before the breaker opened; the cooldown still stands
        self._failures = 0
        if state == "half_open":
            self._started.clear()
            self._failed.clear()
            self._transition("closed")

    def record_failure(self) -> None:
        state = self.state
        self._release_probe()
        self._failures += 1
        now = self._clock()
        self._failed.append(now)
        if state == "half_open" or (state == "closed" and self._window_trips(now)):
            self._opened_at = now
            self._transition("open")

    def _window_trips(self, now: float) -> bool:
        horizon = now - self.window_s
        while self._started and self._started[0] < horizon:
            self._started.popleft()
        while self._failed and self._failed[0] < horizon:
            self._failed.popleft()
        failures = len(self._failed)
        attempts = max(len(self._started), failures)
        return failures >= self.failure_threshold and failures >= self.failure_rate * attempts

    def release(self) -> None:
        """The allowed call ended without a verdict (cancelled, or an error that does not count)."""
        self._release_probe()

    def _release_probe(self) -> None:
        if self._probes > 0:
            self._probes -= 1

    def _transition(self, new: State) -> None:
        old, self._state = self._state, new
        if old == new or self._on_change is None:
            return
        try:
            self._on_change(self.name, old, new)
        except Exception:  # an observer must never break the call path
            logger.exception("breaker on_change callback failed for %s (%s -> %s)", self.name, old, new)

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self._state!r}, failures={self._failures})"


class BreakerRegistry:
    """One breaker per target name, created on first use with the defaults plus per-name settings."""

    def __init__(self, *, defaults: Mapping[str, Any] | None = None, on_change: OnChange | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._defaults = _check_settings(defaults or {}, "breaker")
        self._overrides: dict[str, dict[str, Any]] = {}
        self._breakers: dict[str, CircuitBreaker] = {}
        self._listeners: list[OnChange] = [on_change] if on_change is not None else []
        self._clock = clock

    def listen(self, fn: OnChange) -> None:
        """Call ``fn(name, old, new)`` on every state change of every breaker here (once per ``fn``)."""
        if fn not in self._listeners:
            self._listeners.append(fn)

    def _changed(self, name: str, old: str, new: str) -> None:
        for fn in self._listeners:
            try:
                fn(name, old, new)
            except Exception:  # an observer must never break the call path
                logger.exception("breaker listener failed for %s (%s -> %s)", name, old, new)

    def get(self, name: str) -> CircuitBreaker:
        breaker = self._breakers.get(name)
        if breaker is None:
            settings = {**self._defaults, **self._overrides.get(name, {})}
            breaker = CircuitBreaker(name, clock=self._clock, on_change=self._changed, **settings)
            self._breakers[name] = breaker
        return breaker

    def configure(self, name: str, **settings: Any) -> None:
        """Per-target settings; applied now if the breaker exists, else when it is created."""
        checked = _check_settings(settings, f"breaker {name}")
        self._overrides.setdefault(name, {}).update(checked)
        if name in self._breakers:
            self._breakers[name].configure(**checked)

    def states(self) -> dict[str, str]:
        return {name: breaker.state for name, breaker in self._breakers.items()}

    def __contains__(self, name: object) -> bool:
        return name in self._breakers


_by_adapter: weakref.WeakKeyDictionary[Any, dict[str, BreakerRegistry]] = weakref.WeakKeyDictionary()
_by_name: dict[Any, dict[str, BreakerRegistry]] = {}


def shared_breakers(owner: Any, defaults: Mapping[str, Any] | None = None) -> BreakerRegistry:
    """The process's breaker set for the runs that call through ``owner`` with these defaults.

    ``owner`` is what decides which endpoint a breaker guards: an adapter object (kept weakly,
    so a test's adapter takes its breakers with it) or a hashable key such as the provider
    and its base URL. Runs that share an endpoint share its health; a workflow with its own
    ``breaker:`` settings gets its own set.
    """
    settings = _check_settings(defaults, "breaker") if defaults else {}
    variant = orjson.dumps(settings, option=orjson.OPT_SORT_KEYS).decode() if settings else ""
    try:
        sets = _by_adapter.setdefault(owner, {})
    except TypeError:  # not weakly referenceable (a key such as a tuple): kept for the process
        try:
            sets = _by_name.setdefault(owner, {})
        except TypeError:  # unhashable: nothing to share it by
            return BreakerRegistry(defaults=settings)
    registry = sets.get(variant)
    if registry is None:
        registry = sets[variant] = BreakerRegistry(defaults=settings)
    return registry
