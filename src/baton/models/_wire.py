"""What every HTTP adapter reads the same way: retry-after headers and token counts.

One parser for ``retry-after-ms`` / ``retry-after`` (seconds or an HTTP date), and one
check of the token counts a 200 answer reports: anything but a non-negative integer is a
``ProviderError`` (usage is billed, so an odd number must never turn into a credit).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any

from baton.errors import ProviderError

INVALID_USAGE = "invalid_usage"


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait: ``retry-after-ms`` first, then ``retry-after`` as seconds or HTTP date.
    Unparseable or non-finite values count as absent; the caller caps the result."""
    ms = _finite(headers.get("retry-after-ms"))
    if ms is not None:
        return max(0.0, ms / 1000.0)
    value = headers.get("retry-after")
    if not value:
        return None
    seconds = _finite(value)
    if seconds is not None:
        return max(0.0, seconds)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _finite(value: str | None) -> float | None:
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def wire_tokens(value: Any, name: str, *, provider: str, request_id: str | None = None) -> int:
    """A token count from a response's usage: absent is 0, a non-negative integer is itself,
    anything else (negative, fractional, a string, a bool) is a ``ProviderError``."""
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise invalid_usage(f"{name}={value!r}", provider=provider, request_id=request_id)


def invalid_usage(detail: str, *, provider: str, request_id: str | None = None) -> ProviderError:
    rid = f" (request_id={request_id})" if request_id else ""
    return ProviderError(f"{provider}: the response reports impossible usage ({detail}); it is not billed "
                         f"as a credit{rid}", status=200, error_type=INVALID_USAGE, request_id=request_id,
                         retryable=True, provider=provider)
