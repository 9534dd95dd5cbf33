"""Requests in flight: a request runs as its own task, so a cancelled caller does not abort
what the provider already bills; its answer is awaited in the background and billed.

Also the usage check every response passes before it is billed.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Coroutine
from typing import Any

from baton.errors import ProviderError
from baton.messages import ModelRequest, ModelResponse

__all__ = ["IN_FLIGHT_GRACE_S", "MAX_INPUT_TOKENS", "arrival", "check_usage", "detached"]


def detached(coro: Coroutine[Any, Any, ModelResponse]) -> tuple[asyncio.Task[ModelResponse],
                                                                  asyncio.Future[ModelResponse]]:
    """``coro`` as a task, and a future that follows it: cancelling the future (the caller)
    leaves the task running. A lighter ``asyncio.shield`` (one callback, no second future
    watching the first)."""
    loop = asyncio.get_running_loop()
    task = loop.create_task(coro)
    answer: asyncio.Future[ModelResponse] = loop.create_future()
    task.add_done_callback(functools.partial(_relay, answer))
    return task, answer


def _relay(answer: asyncio.Future[ModelResponse], task: asyncio.Task[ModelResponse]) -> None:
    if answer.done():  # the caller is gone (cancelled, timed out): ``ModelCalls.adopt`` bills any answer
        if not task.cancelled():
            task.exception()  # marks a failure seen: it was handled where the caller went
        return
    if task.cancelled():
        answer.cancel()
    elif (exc := task.exception()) is not None:
        answer.set_exception(exc)
    else:
        answer.set_result(task.result())


IN_FLIGHT_GRACE_S = 10.0
"""How long the answer to a request whose caller was cancelled is awaited (in the background),
so that what the server bills is billed here too."""


async def arrival(task: asyncio.Future[ModelResponse], wire: ModelRequest, provider: str) -> ModelResponse | None:
    """The response of an in-flight request whose caller was cancelled, if it arrives in time."""
    grace = IN_FLIGHT_GRACE_S if wire.timeout_s is None else min(wire.timeout_s, IN_FLIGHT_GRACE_S)
    try:
        async with asyncio.timeout(grace):
            response = await asyncio.shield(task)
        check_usage(response, wire.max_tokens, provider)
    except (TimeoutError, asyncio.CancelledError):
        task.cancel()
        return None
    except Exception:  # the request failed after all, or its usage is impossible: nothing to bill
        return None
    return response


MAX_INPUT_TOKENS = 10_000_000
"""More input tokens than any context window holds: a response reporting this is broken."""


def check_usage(response: ModelResponse, max_tokens: int, provider: str) -> None:
    """Usage is billed: negative, fractional or absurd counts are a provider error, never a credit."""
    u = response.usage
    counts = (u.input_tokens, u.output_tokens, u.cache_creation_input_tokens, u.cache_read_input_tokens,
              u.cache_creation_1h_input_tokens)
    for n in counts:
        if type(n) is not int or n < 0:
            break
    else:
        if u.output_tokens <= 2 * max_tokens + 64 and u.cache_creation_1h_input_tokens <= \
                u.cache_creation_input_tokens and u.total_input_tokens <= MAX_INPUT_TOKENS:
            return
    rid = f" (request_id={response.request_id})" if response.request_id else ""
    raise ProviderError(f"{provider}: the response reports impossible usage ({u.to_dict()} for max_tokens="
                        f"{max_tokens}); it is not billed as a credit{rid}", status=200, error_type="invalid_usage",
                        request_id=response.request_id, retryable=True, provider=provider)
