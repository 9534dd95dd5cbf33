"""Run limits and the budget tracker.

Each model call reserves its worst case (estimated input + ``max_tokens`` output at the
model's price) before it is sent and settles with the real usage after. A call whose
reservation would cross a limit is not sent, so a run overshoots by at most the
estimation error of one call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from baton.errors import BudgetExceeded
from baton.messages import Usage
from baton.models.pricing import price_for
from baton.settings import Settings, setting


@dataclass(slots=True)
class Limits(Settings):
    """Per-run limits. Each field declares its bounds once (``baton.settings``): building a
    ``Limits`` checks them (NaN, infinities and negatives never pass) and the YAML schema's
    ``limits`` derives from them."""

    section: ClassVar[str] = "limits"
    what: ClassVar[str] = "limits"

    budget_usd: float | None = setting(None, "number", minimum=0)
    budget_tokens: int | None = setting(None, "integer", minimum=1)
    """Input (all kinds) plus output tokens."""
    budget_input_tokens: int | None = setting(None, "integer", minimum=1)
    budget_output_tokens: int | None = setting(None, "integer", minimum=1)
    max_model_calls: int | None = setting(None, "integer", minimum=1)
    timeout_s: float | None = setting(None, "number", exclusive_minimum=0)
    """Wall-time budget of one execution of the run (a resume starts a fresh one)."""
    max_depth: int = setting(5, "integer", minimum=1)
    concurrency: int = setting(16, "integer", minimum=1)
    """Model calls in flight at once, across the whole run."""

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def merged(self, **overrides: Any) -> Limits:
        d = asdict(self)
        d.update({k: v for k, v in overrides.items() if v is not None})
        return Limits(**d)


def estimate_tokens(text_len: int) -> int:
    """A deliberately generous estimate (3 chars per token) for reservations."""
    return text_len // 3 + 16


@dataclass(slots=True)
class Reservation:
    model: str
    input_tokens: int
    output_tokens: int
    usd: float


OnCheck = Callable[[str, float, "float | None", bool], None]
"""``(limit, spent, allowed, ok)``: a budget check's outcome."""


class BudgetTracker:
    """Spent and reserved amounts of one run. Not thread-safe: one event loop owns it."""

    def __init__(self, limits: Limits, *, spent: Usage | None = None, spent_usd: float = 0.0,
                 model_calls: int = 0, on_check: OnCheck | None = None) -> None:
        self.limits = limits
        self.usage = spent or Usage()
        self.cost_usd = spent_usd
        self.model_calls = model_calls
        self.unpriced_calls = 0
        self._reserved_usd = 0.0
        self._reserved_in = 0
        self._reserved_out = 0
        self._reserved_calls = 0
        self._started = time.monotonic()
        self.on_check = on_check
        """Called as ``on_check(limit, spent, allowed, ok)`` at each check (the runtime reports
        the failing ones as ``budget.check`` events)."""

    @property
    def deadline(self) -> float | None:
        return None if self.limits.timeout_s is None else self._started + self.limits.timeout_s

    def _fail(self, limit: str, spent: float, allowed: float, reserved: float = 0.0,
              need: float = 0.0) -> BudgetExceeded:
        """The error for a call that was not sent: what is spent, what calls in flight hold, and
        this call's worst case (a reservation, not a measurement)."""
        if self.on_check:
            self.on_check(limit, spent + reserved + need, allowed, False)
        done = f"{self.model_calls} finished call{'s' if self.model_calls != 1 else ''}"
        flight = f", {reserved:g} reserved by calls in flight" if reserved else ""
        if limit == "model_calls":
            message = (f"model_calls limit reached: {done} and {int(reserved)} in flight of {allowed:g} allowed; "
                       "the next call was not sent")
        elif limit == "wall_time_s":
            message = f"wall_time_s budget exceeded: the run has taken {spent:.1f}s of {allowed:g}s"
        else:
            message = (f"{limit} budget exceeded: {spent:g} spent by {done}{flight}; the next call could take up to "
                       f"{need:g} more (estimated input plus max_tokens), over the limit of {allowed:g}; it was "
                       "not sent")
        return BudgetExceeded(message, limit=limit, spent=spent, allowed=allowed)

    def reserve(self, model: str, input_chars: int, max_tokens: int, *, price_as: str | None = None) -> Reservation:
        lim = self.limits
        est_in = estimate_tokens(input_chars)
        price = price_for(price_as or model)
        usd = 0.0 if price is None else (est_in * price.input + max_tokens * price.output) / 1_000_000
        deadline = self.deadline
        if deadline is not None and time.monotonic() > deadline:
            raise self._fail("wall_time_s", time.monotonic() - self._started, float(lim.timeout_s or 0))
        if lim.max_model_calls is not None and self.model_calls + self._reserved_calls + 1 > lim.max_model_calls:
            raise self._fail("model_calls", self.model_calls, lim.max_model_calls, self._reserved_calls, 1)
        if lim.budget_usd is not None and self.cost_usd + self._reserved_usd + usd > lim.budget_usd:
            raise self._fail("usd", round(self.cost_usd, 6), lim.budget_usd, round(self._reserved_usd, 6),
                             round(usd, 6))
        spent_in, spent_out = self.usage.total_input_tokens, self.usage.output_tokens
        total_in = spent_in + self._reserved_in + est_in
        total_out = spent_out + self._reserved_out + max_tokens
        if lim.budget_input_tokens is not None and total_in > lim.budget_input_tokens:
            raise self._fail("input_tokens", spent_in, lim.budget_input_tokens, self._reserved_in, est_in)
        if lim.budget_output_tokens is not None and total_out > lim.budget_output_tokens:
            raise self._fail("output_tokens", spent_out, lim.budget_output_tokens, self._reserved_out, max_tokens)
        if lim.budget_tokens is not None and total_in + total_out > lim.budget_tokens:
            raise self._fail("tokens", spent_in + spent_out, lim.budget_tokens,
                             self._reserved_in + self._reserved_out, est_in + max_tokens)
        self._reserved_usd += usd
        self._reserved_in += est_in
        self._reserved_out += max_tokens
        self._reserved_calls += 1
        if self.on_check:
            self.on_check("usd", self.cost_usd + self._reserved_usd, lim.budget_usd, True)
        return Reservation(model, est_in, max_tokens, usd)

    def release(self, r: Reservation) -> None:
        self._reserved_usd -= r.usd
        self._reserved_in -= r.input_tokens
        self._reserved_out -= r.output_tokens
        self._reserved_calls -= 1

    def settle(self, r: Reservation | None, usage: Usage, cost_usd: float | None) -> None:
        """Release the reservation and book the actual usage of the final response only."""
        if r is not None:
            self.release(r)
        self.usage.add(usage)
        self.model_calls += 1
        if cost_usd is None:
            self.unpriced_calls += 1
        else:
            self.cost_usd += cost_usd
