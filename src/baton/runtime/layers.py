"""The layers around each attempt of a model call: one concern each.

An attempt enters the layers in order (``OUTER`` ones before it takes a concurrency slot,
``SLOT`` ones inside it), then the adapter is called. Afterwards every layer the attempt
entered hears exactly one outcome:

- ``succeeded`` (all layers, in list order): the response is billed, journaled, cached, reported;
- ``failed`` with the ``ProviderError`` (the retry loop may try again);
- ``abandoned``: cancelled, refused by a later layer, or any other error; undo what ``enter`` took.

Each layer emits its own events. The list is explicit (``default_layers``), so a layer can
be tested alone with a bare ``RunServices`` and a new one (e.g. batch submission) slots in.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Literal

from baton.errors import ProviderError
from baton.messages import ModelRequest, ModelResponse, message_to_dict, response_from_dict
from baton.models.pricing import cost_of
from baton.observe import events as ev
from baton.observe.events import new_id
from baton.runtime.breaker import CircuitBreaker, counts_as_failure
from baton.runtime.budget import Reservation
from baton.runtime.retry import RetryPolicy
from baton.runtime.services import ModelBinding, RunServices
from baton.stores.base import StepRecord

if TYPE_CHECKING:
    from baton.runtime.protocols import CallScope, CallSite

__all__ = ["AttemptLayer", "BreakerLayer", "BudgetLayer", "CacheLayer", "EventsLayer", "GovernorLayer",
           "JournalLayer", "ModelCall", "default_layers"]

Phase = Literal["outer", "slot", "after"]


class ModelCall:
    """One model call across its attempts: what the layers read and write.

    A plain slotted class, not a dataclass: twenty generated fields would cost ``import baton``
    about 2 ms."""

    __slots__ = ("site", "scope", "key", "wire", "binding", "model_id", "breaker", "policy", "chars", "started",
                 "fingerprint", "cache_key", "attempt", "span", "t0", "reservation", "adopted", "latency",
                 "result", "cost", "batched", "batch_id")

    def __init__(self, site: CallSite, scope: CallScope, key: str, wire: ModelRequest, binding: ModelBinding,
                 model_id: str, breaker: CircuitBreaker, policy: RetryPolicy, chars: int, started: float,
                 fingerprint: dict[str, str] | None) -> None:
        self.site, self.scope, self.key, self.model_id = site, scope, key, model_id
        self.wire: ModelRequest = wire
        """The request as sent (the provider's model id)."""
        self.binding, self.breaker, self.policy = binding, breaker, policy
        self.chars = chars
        """Characters of the request: the budget's input estimate."""
        self.started, self.fingerprint = started, fingerprint
        self.cache_key: str | None = None
        self.attempt, self.span = 0, ""
        self.t0 = 0.0
        """``perf_counter`` when the attempt passed the budget and the breaker."""
        self.reservation: Reservation | None = None
        self.adopted = False
        """The attempt's caller was cancelled with its request on the wire (see ``ModelCalls.adopt``)."""
        self.latency = 0.0
        self.result: Any = None
        """The response as journaled (set before ``succeeded``)."""
        self.cost: float | None = None
        """The response's price (None: not in the price table)."""
        self.batched = False
        """The next attempt goes through a Message Batch (``runtime/batch.py``)."""
        self.batch_id: str | None = None
        """The batch the current attempt went through (billed at the batch price)."""

    def meta(self, **extra: Any) -> dict[str, Any]:
        """The journal record's ``meta``: model, prompt version, the request's fingerprint."""
        meta: dict[str, Any] = {"model": self.model_id, "prompt_version": self.site.prompt_version, **extra}
        if self.fingerprint is not None:
            meta["request"] = self.fingerprint
        return meta


class AttemptLayer:
    """One concern around an attempt. Every hook is optional; see the module docstring."""

    phase: Phase = "after"

    def __init__(self, run: RunServices) -> None:
        self.run = run

    async def enter(self, call: ModelCall) -> None:
        """Before the request; raising stops the attempt (the layers entered so far are abandoned)."""

    async def succeeded(self, call: ModelCall, response: ModelResponse) -> None:
        """The response arrived and passed the usage check."""

    def failed(self, call: ModelCall, exc: ProviderError) -> None:
        """The provider failed; the retry loop decides whether to try again."""

    def abandoned(self, call: ModelCall) -> None:
        """The attempt ended without an answer to bill (cancelled, or stopped by another layer)."""


class BudgetLayer(AttemptLayer):
    """Reserve the worst case before the request, settle with the real usage and price after."""

    phase: Phase = "outer"

    async def enter(self, call: ModelCall) -> None:
        call.reservation = self.run.budget.reserve(call.model_id, call.chars, call.wire.max_tokens,
                                                   price_as=call.binding.price_as)

    async def succeeded(self, call: ModelCall, response: ModelResponse) -> None:
        call.cost = cost_of(call.binding.price_as, response.usage, batch=call.batch_id is not None)
        self.run.budget.settle(call.reservation, response.usage, call.cost)

    def failed(self, call: ModelCall, exc: ProviderError) -> None:
        self.abandoned(call)

    def abandoned(self, call: ModelCall) -> None:
        if call.reservation is not None:
            self.run.budget.release(call.reservation)


class BreakerLayer(AttemptLayer):
    """Fail fast while the target's breaker is open; a half-open breaker lets this call probe."""

    phase: Phase = "outer"

    async def enter(self, call: ModelCall) -> None:
        call.breaker.check()

    async def succeeded(self, call: ModelCall, response: ModelResponse) -> None:
        call.breaker.record_success()

    def failed(self, call: ModelCall, exc: ProviderError) -> None:
        if counts_as_failure(exc, count_rate_limits=False):  # 429s are the governor's business
            call.breaker.record_failure()
        else:
            call.breaker.release()

    def abandoned(self, call: ModelCall) -> None:
        call.breaker.release()


class GovernorLayer(AttemptLayer):
    """Wait for the model's rate buckets; afterwards correct them with the real usage and headers."""

    phase: Phase = "slot"

    async def enter(self, call: ModelCall) -> None:
        assert call.reservation is not None  # the budget layer comes first
        waited = await self.run.governor.acquire(call.binding.price_as, input_tokens=call.reservation.input_tokens,
                                                 output_tokens=call.wire.max_tokens, priority=call.scope.priority)
        if waited:
            self.run.emit(ev.RATE_LIMIT_WAIT, new_id(), call.scope.span_id,
                          {"model": call.model_id, "wait_s": waited, "priority": call.scope.priority})

    async def succeeded(self, call: ModelCall, response: ModelResponse) -> None:
        if call.batch_id is not None:  # a batch takes nothing from the Messages API's rate limits
            return
        usage, price_as = response.usage, call.binding.price_as
        self._settle(call, usage.input_tokens + usage.cache_creation_input_tokens, usage.output_tokens)
        if response.headers:
            self.run.governor.observe_headers(price_as, response.headers)

    def failed(self, call: ModelCall, exc: ProviderError) -> None:
        self._settle(call, 0, 0)
        retry_after = call.policy.retry_after_wait(exc)
        if exc.status == 429 and retry_after:
            self.run.governor.penalize(call.binding.price_as, retry_after)  # held no longer than the retry waits

    def _settle(self, call: ModelCall, actual_input: int, actual_output: int) -> None:
        assert call.reservation is not None
        self.run.governor.settle(call.binding.price_as, estimated_input=call.reservation.input_tokens,
                                 actual_input=actual_input, estimated_output=call.wire.max_tokens,
                                 actual_output=actual_output)


class JournalLayer(AttemptLayer):
    """Commit the answer with its usage, cost and attempts (the result and the record are one write)."""

    async def succeeded(self, call: ModelCall, response: ModelResponse) -> None:
        run = self.run
        await run.commit(StepRecord(
            run.run_id, call.key, "model", call.site.name, "completed", result=call.result, started_at=call.started,
            ended_at=time.time(), usage=response.usage.to_dict(), cost_usd=call.cost or 0.0, attempts=call.attempt,
            meta=call.meta(latency_s=call.latency, stop_reason=response.stop_reason, priced=call.cost is not None,
                           **({"batch_id": call.batch_id} if call.batch_id is not None else {}))))


class CacheLayer(AttemptLayer):
    """The result cache: a hit answers the call before any attempt; an answer is stored after."""

    async def lookup(self, call: ModelCall) -> ModelResponse | None:
        """A cached answer, journaled exactly as cached (an entry that is no response is a miss)."""
        run = self.run
        if run.cache is None or call.cache_key is None:
            return None
        hit = await run.cache.get(call.cache_key)
        if hit is None:
            return None
        try:
            response = response_from_dict(hit)
        except (AttributeError, KeyError, TypeError, ValueError):
            return None  # not a response: call the model, and the fresh answer replaces the entry
        await run.commit(StepRecord(run.run_id, call.key, "model", call.site.name, "completed", result=hit,
                                    started_at=time.time(), ended_at=time.time(), usage={}, cost_usd=0.0,
                                    meta=call.meta(cache_hit=True)))
        run.emit(ev.CACHE_HIT, new_id(), call.scope.span_id,
                 {"agent": call.site.name, "model": call.model_id, "key": call.key})
        return response

    async def succeeded(self, call: ModelCall, response: ModelResponse) -> None:
        if call.cache_key is not None and self.run.cache is not None:
            await self.run.cache.put(call.cache_key, call.result, self.run.cache_ttl_s)


class EventsLayer(AttemptLayer):
    """``model.request`` as the request goes out, then ``model.response`` or ``model.error``."""

    phase: Phase = "slot"

    async def enter(self, call: ModelCall) -> None:
        if self.run.events.wants(ev.MODEL_REQUEST):  # its message list is built only for a sink that takes it
            site, wire = call.site, call.wire
            self.run.emit(ev.MODEL_REQUEST, call.span, call.scope.span_id, {
                "agent": site.name, "model": call.model_id, "key": call.key, "provider": call.binding.model.provider,
                "prompt_version": site.prompt_version, "attempt": call.attempt, "max_tokens": wire.max_tokens,
                "messages": [message_to_dict(m) for m in wire.messages]})

    async def succeeded(self, call: ModelCall, response: ModelResponse) -> None:
        if self.run.events.wants(ev.MODEL_RESPONSE):
            self.run.emit(ev.MODEL_RESPONSE, call.span, call.scope.span_id, {
                "agent": call.site.name, "model": call.model_id, "key": call.key,
                "prompt_version": call.site.prompt_version, "usage": response.usage.to_dict(), "cost_usd": call.cost,
                "latency_s": call.latency, "stop_reason": response.stop_reason, "request_id": response.request_id,
                "output": call.result["content"]})

    def failed(self, call: ModelCall, exc: ProviderError) -> None:
        self.run.emit(ev.MODEL_ERROR, call.span, call.scope.span_id, {
            "agent": call.site.name, "model": call.model_id, "key": call.key, "error_type": exc.error_type,
            "status": exc.status, "retryable": exc.retryable, "latency_s": time.perf_counter() - call.t0})


def default_layers(run: RunServices) -> list[AttemptLayer]:
    """The layers of a model call, in the order their ``succeeded`` hooks run: billing first,
    then the breaker and the governor, then the journal, the cache, and the events last."""
    return [BudgetLayer(run), BreakerLayer(run), GovernorLayer(run), JournalLayer(run), CacheLayer(run),
            EventsLayer(run)]
