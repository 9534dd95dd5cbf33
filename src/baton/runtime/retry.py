"""Retry policy: which failures are worth another attempt, and how long to wait first.

baton is the one retry owner (provider SDK retries are off), so this module decides for
every model and tool call. Backoff is exponential with full jitter; a server's
``retry-after`` is a floor (never retry earlier than the server asked), capped so a
hostile or buggy upstream cannot stall a run; a deadline turns "sleep past it" into
"give up now".
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from baton.errors import ProviderError, ProviderTimeout, ToolError
from baton.settings import Settings, setting

_RNG = random.Random()


def is_retryable(error: BaseException, *, retry_timeouts: bool = True, retry_tool_errors: bool = False) -> bool:
    """Whether another attempt could succeed.

    ``ProviderError.retryable`` is the adapter's verdict (429/5xx/529/408/409, ``x-should-retry``,
    spend-limit 429 = never). Timeouts only when ``retry_timeouts``; a ``ToolError`` when the
    tool declared itself retryable (``retry_tool_errors``) or the failure is transient (a timeout,
    under ``retry_timeouts``, or a lost connection; the caller asks only for idempotent tools).
    Everything else is final.
    """
    if isinstance(error, ProviderTimeout | TimeoutError):  # asyncio.TimeoutError is TimeoutError on 3.11
        return retry_timeouts
    if isinstance(error, ProviderError):
        return error.retryable
    if isinstance(error, ToolError):
        if retry_tool_errors:
            return True
        return error.transient and (retry_timeouts or not isinstance(error.__cause__, TimeoutError))
    return False


@dataclass(frozen=True, slots=True)
class RetryPolicy(Settings):
    """How many attempts a call gets and the backoff between them (the YAML ``retry:`` section)."""

    section: ClassVar[str] = "retry"
    what: ClassVar[str] = "retry settings"

    max_attempts: int = setting(4, "integer", minimum=1)
    """Total attempts including the first; 1 disables retries."""
    initial_delay_s: float = setting(0.5, "number", minimum=0)
    """Upper bound of the first jittered delay."""
    max_delay_s: float = setting(8.0, "number", minimum=0)
    """Upper bound of any backoff delay (a server retry-after may exceed it)."""
    multiplier: float = setting(2.0, "number", minimum=1)
    """Growth of the delay bound per attempt."""
    max_retry_after_s: float = setting(60.0, "number", minimum=0)
    """A server retry-after above this is capped to it: the retry delay and the rate governor's
    hold on the model class both wait at most this long."""
    retry_timeouts: bool = setting(True, "boolean")
    """Retry calls that got no answer in time."""

    def backoff_bound(self, attempt: int) -> float:
        """The jitter range ``[0, bound]`` after ``attempt`` attempts: ``min(max, initial * mult**(attempt-1))``."""
        try:
            bound = self.initial_delay_s * self.multiplier ** max(attempt - 1, 0)
        except OverflowError:
            return self.max_delay_s
        return min(self.max_delay_s, bound) if math.isfinite(bound) else self.max_delay_s

    def retry_after_wait(self, error: BaseException) -> float | None:
        """The server's retry-after for ``error``, capped at ``max_retry_after_s`` (None: none given).
        Every wait a retry-after causes (the retry delay, the rate governor's hold) is this one."""
        retry_after = error.retry_after if isinstance(error, ProviderError) else None
        if retry_after is None or not retry_after > 0:
            return None
        return min(float(retry_after), self.max_retry_after_s)

    def delay_for(self, attempt: int, error: BaseException, *, now: float | None = None,
                  deadline: float | None = None, rng: random.Random | None = None,
                  retry_tool_errors: bool = False) -> float | None:
        """Seconds to sleep before the next attempt, or ``None`` to give up.

        ``attempt`` is the number of attempts already made (1 after the first failure).
        ``deadline`` is in ``time.monotonic()`` seconds (``now`` defaults to that clock): when
        sleeping would pass it, there is no point in trying again.
        """
        if attempt >= self.max_attempts:
            return None
        if not is_retryable(error, retry_timeouts=self.retry_timeouts, retry_tool_errors=retry_tool_errors):
            return None
        delay = (rng or _RNG).uniform(0.0, self.backoff_bound(attempt))
        retry_after = self.retry_after_wait(error)
        if retry_after is not None:
            delay = max(delay, retry_after)
        if deadline is not None:
            current = time.monotonic() if now is None else now
            if current + delay > deadline:
                return None
        return delay


T = TypeVar("T")
E = TypeVar("E", bound=Exception)


async def retrying(attempt: Callable[[int], Awaitable[T]], delay: Callable[[int, E], float | None], *,
                   retry_on: type[E], sleep: Callable[[float], Awaitable[Any]],
                   on_retry: Callable[[int, float, E], None]) -> T:
    """The one retry loop, for model and tool calls alike.

    Calls ``attempt(n)`` for n = 1, 2, ...; when it raises ``retry_on``, ``delay(n, exc)`` says
    how long to wait before the next one (None: give up and re-raise). ``on_retry`` hears each
    retry before the wait (it emits the ``retry`` event). Anything else propagates at once.
    """
    n = 0
    while True:
        n += 1
        try:
            return await attempt(n)
        except retry_on as exc:
            wait = delay(n, exc)
            if wait is None:
                raise
            on_retry(n, wait, exc)
            await sleep(wait)
