"""The model call path: every model call of a run, from the journal to the adapter and back.

Per call: journal lookup (replay) -> model routing (``model: auto``) -> fallback models ->
result cache -> prompt-cache warm-up gate -> the retry loop. Per attempt, the layers of
``layers.py`` (budget, breaker, concurrency slot, governor, events) around the transport,
which sends the request as its own task (so a cancelled caller does not abort what the
provider already bills: its answer is adopted, awaited in the background and billed); an
answer goes back through the layers (bill, breaker, governor, journal, cache, events).
Patterns never see any of this.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Coroutine
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import orjson

from baton.errors import CircuitOpenError, ProviderError, ProviderTimeout, ReplayDivergence
from baton.messages import (
    ModelRequest,
    ModelResponse,
    TextBlock,
    ToolUseBlock,
    message_to_dict,
    response_from_dict,
    response_to_dict,
)
from baton.observe import events as ev
from baton.observe.events import Event, new_id
from baton.runtime.fingerprint import differences, request_fingerprint
from baton.runtime.layers import AttemptLayer, CacheLayer, ModelCall, default_layers
from baton.runtime.protocols import CallScope, CallSite
from baton.runtime.retry import retrying
from baton.runtime.routing import AUTO, route
from baton.runtime.services import ModelBinding, RunServices
from baton.stores.base import StepRecord

if TYPE_CHECKING:
    from baton.runtime.batch import BatchDesk

__all__ = ["IN_FLIGHT_GRACE_S", "MAX_INPUT_TOKENS", "ModelBinding", "ModelCalls", "check_usage", "request_chars"]

logger = logging.getLogger(__name__)


def request_chars(req: ModelRequest) -> int:
    """Characters of a request's system prompt, messages and tools (the budget's input estimate)."""
    n = len(req.system) if isinstance(req.system, str) else sum(len(b.get("text", "")) for b in req.system or [])
    for m in req.messages:
        for b in m.content:
            n += len(getattr(b, "text", "") or getattr(b, "content", "") or "") + (
                len(orjson.dumps(b.input)) if isinstance(b, ToolUseBlock) else 0)
    for t in req.tools:
        n += len(t.description) + len(orjson.dumps(t.input_schema))
    return n


class ModelCalls:
    """The model call path of one run (see the module docstring)."""

    def __init__(self, run: RunServices, layers: list[AttemptLayer] | None = None) -> None:
        self.run = run
        self.layers = layers if layers is not None else default_layers(run)
        """Every layer, in the order their ``succeeded`` hooks run."""
        self._outer = [layer for layer in self.layers if layer.phase == "outer"]
        self._in_slot = [layer for layer in self.layers if layer.phase == "slot"]
        self._cache = next((layer for layer in self.layers if isinstance(layer, CacheLayer)), None)
        self._slots = asyncio.Semaphore(max(1, run.budget.limits.concurrency))
        self._warm: dict[str, asyncio.Event] = {}
        self._in_flight: set[asyncio.Task[None]] = set()
        self._batch_desk: BatchDesk | None = None

    def batch_desk(self) -> BatchDesk:
        """This run's Message Batches desk (``runtime/batch.py``), made on first use."""
        if self._batch_desk is None:
            from baton.runtime.batch import BatchDesk  # deferred: only runs with batch agents load it

            self._batch_desk = BatchDesk(self.run, self.run.batch_options)
        return self._batch_desk

    async def call(self, scope: CallScope, site: CallSite, key: str,
                   request: ModelRequest) -> tuple[ModelResponse, float | None]:
        """One model call of ``site`` at journal ``key``: its response and cost (0.0: cached)."""
        run = self.run
        rec = run.check_replay(key, "model", site.name)
        fingerprint = request_fingerprint(request) if run.journal is not None else None
        if rec is not None:
            if run.replay_only and fingerprint is not None:
                _check_request(rec, key, site, fingerprint)
            run.report_replayed(rec, scope.span_id)
            return response_from_dict(rec.result), rec.cost_usd
        if request.model == AUTO:  # by task type, heuristic or an assessor's rating (runtime/routing.py)
            request = replace(request, model=await route(self, scope, site, key, request))
        return await self._with_fallbacks(scope, site, key, request, fingerprint)

    async def _with_fallbacks(self, scope: CallScope, site: CallSite, key: str, request: ModelRequest,
                              fingerprint: dict[str, str] | None) -> tuple[ModelResponse, float | None]:
        """Try the model, then each fallback while a breaker is open or retries are spent."""
        candidates = [request.model, *site.fallback_models]
        failures: list[str] = []
        for i, model_id in enumerate(candidates):
            binding = self.run.bind_model(model_id)
            target = f"{binding.model.provider}:{binding.wire_model}"
            if self.run.breakers.get(target).state == "open":
                failures.append(f"{model_id}: circuit open")
                continue
            wire = request if binding.wire_model == request.model else replace(request, model=binding.wire_model)
            call = ModelCall(site, scope, key, wire, binding, model_id, self.run.breakers.get(target),
                             site.retry or self.run.retry, request_chars(wire), time.time(), fingerprint)
            try:
                return await self._one_model(call)
            except (ProviderError, CircuitOpenError) as exc:
                failures.append(f"{model_id}: {exc}")
                if i + 1 == len(candidates) or (isinstance(exc, ProviderError) and not exc.retryable):
                    raise
        raise CircuitOpenError(f"no model available for agent {site.name!r}: " + "; ".join(failures),
                               target=candidates[-1])

    async def _one_model(self, call: ModelCall) -> tuple[ModelResponse, float | None]:
        """The cache, then the retry loop (the first call with a cached prompt prefix goes alone)."""
        prior = self.run.journal.get(call.key) if self.run.journal is not None else None
        if call.site.batch or (prior is not None and prior.status == "started"):  # a batch, or one to collect
            call.batched = self.batch_desk().wants(call)
        if self._cache is not None and self.run.cache is not None:
            call.cache_key = _cache_key(call)
            hit = await self._cache.lookup(call)
            if hit is not None:
                return hit, 0.0
        if not call.site.cache_prompt or call.batched:  # a batch is not answered in time to warm a cache
            return await self._retried(call)
        # A prompt-cache entry is readable only once the first response has begun: let the first
        # call with this prefix go alone and release the rest of a fan-out when it answers.
        version = call.site.prompt_version
        gate = self._warm.get(version)
        if gate is None:
            gate = self._warm[version] = asyncio.Event()
            try:
                return await self._retried(call)
            finally:
                gate.set()
        await gate.wait()
        return await self._retried(call)

    async def _retried(self, call: ModelCall) -> tuple[ModelResponse, float | None]:
        run = self.run

        def delay(attempt: int, exc: ProviderError) -> float | None:
            wait = call.policy.delay_for(attempt, exc, now=time.monotonic(), deadline=run.budget.deadline)
            return None if call.breaker.state == "open" else wait

        def retrying_now(attempt: int, wait: float, exc: ProviderError) -> None:
            run.emit(ev.RETRY, new_id(), call.scope.span_id, {"agent": call.site.name, "target": call.model_id,
                                                              "attempt": attempt, "delay_s": wait,
                                                              "error_type": exc.error_type})

        return await retrying(lambda n: self._attempt(call, n), delay, retry_on=ProviderError, sleep=run.sleep,
                              on_retry=retrying_now)

    async def _attempt(self, call: ModelCall, attempt: int) -> tuple[ModelResponse, float | None]:
        """One attempt through the layers: enter each, send, then report the outcome to each."""
        call.attempt, call.adopted, call.span, call.reservation = attempt, False, new_id(), None
        call.batch_id = None
        entered: list[AttemptLayer] = []
        try:
            for layer in self._outer:
                await layer.enter(call)
                entered.append(layer)
            call.t0 = time.perf_counter()
            if call.batched:  # Message Batches: no concurrency slot, no rate governor, half price
                response = await self.batch_desk().send(call)
            else:
                async with self._slots:
                    for layer in self._in_slot:
                        await layer.enter(call)
                        entered.append(layer)
                    response = await self.transport(call)
            check_usage(response, call.wire.max_tokens, call.binding.model.provider)
        except ProviderError as exc:
            for layer in entered:
                layer.failed(call, exc)
            raise
        except BaseException:
            if not call.adopted:  # an adopted request settles its layers when its answer comes
                for layer in entered:
                    layer.abandoned(call)
            raise
        await self._succeeded(call, response)
        return response, call.cost

    async def _succeeded(self, call: ModelCall, response: ModelResponse) -> None:
        call.latency = time.perf_counter() - call.t0
        call.result = response_to_dict(response)
        for layer in self.layers:
            await layer.succeeded(call, response)

    async def transport(self, call: ModelCall) -> ModelResponse:
        """Send the request to the adapter (the seam where another executor can take over).

        The request runs as its own task: a caller cancelled while its request is on the wire
        returns at once and the request is adopted (``adopt``)."""
        wire, provider = call.wire, call.binding.model.provider
        if self.run.stream_deltas:  # someone listens for text deltas (one flag test when nobody does)
            task, answer = detached(self._streamed(call))
        else:
            task, answer = detached(call.binding.model.complete(wire))
        try:
            if wire.timeout_s is None:
                return await answer
            async with asyncio.timeout(wire.timeout_s):
                return await answer
        except TimeoutError as exc:
            task.cancel()
            raise ProviderTimeout(f"model call to {call.model_id} timed out after {wire.timeout_s}s",
                                  provider=provider) from exc
        except asyncio.CancelledError:
            self.adopt(call, task)
            raise

    async def _streamed(self, call: ModelCall) -> ModelResponse:
        """The call, with a ``text.delta`` event for each piece as it arrives. A model that cannot
        stream gives its whole answer as one delta per block once it is back."""
        model, run = call.binding.model, self.run

        def on_delta(index: int, kind: str, piece: str) -> None:
            run.events.emit_delta(Event(ev.TEXT_DELTA, run.run_id, run.trace_id, call.span, call.scope.span_id, {
                "agent": call.site.name, "key": call.key, "attempt": call.attempt, "index": index, "type": kind,
                "text": piece}))

        if getattr(model, "streams_deltas", False):  # e.g. AnthropicModel: complete(request, on_delta=...)
            streaming: Any = model
            response: ModelResponse = await streaming.complete(call.wire, on_delta=on_delta)
            return response
        response = await model.complete(call.wire)
        for i, block in enumerate(response.content):
            if isinstance(block, TextBlock) and block.text:
                on_delta(i, "text", block.text)
            elif isinstance(block, ToolUseBlock):
                on_delta(i, "tool_input", orjson.dumps(block.input).decode())
        return response

    def adopt(self, call: ModelCall, task: asyncio.Future[ModelResponse]) -> None:
        """The caller was cancelled (a gather stopping at a budget trip, an agent timeout) while its
        request was on the wire: the server will answer and bill it, so the answer is awaited in the
        background (up to ``IN_FLIGHT_GRACE_S``), then billed, journaled and reported like any other.
        Its reservation stays held until then; the engine waits for these before it records the run."""
        call.adopted = True
        straggler = asyncio.get_running_loop().create_task(self._settle_adopted(call, task))
        self._in_flight.add(straggler)
        straggler.add_done_callback(self._in_flight.discard)

    async def _settle_adopted(self, call: ModelCall, task: asyncio.Future[ModelResponse]) -> None:
        response = await arrival(task, call.wire, call.binding.model.provider)
        if response is None:  # no answer in time, or a failed one: nothing the server bills
            for layer in (*self._outer, *self._in_slot):
                layer.abandoned(call)
            return
        try:
            await self._succeeded(call, response)
        except Exception:  # e.g. the journal is gone: the budget was settled, the run goes on
            logger.exception("could not journal the answer to cancelled call %s of run %s", call.key,
                             self.run.run_id)

    async def settle_in_flight(self, *, wait: bool = True) -> None:
        """Wait for the answers to requests whose callers were cancelled (``wait=False``: an
        interrupt, give them up now). Call before recording a run's usage and cost."""
        if not wait:
            for straggler in self._in_flight:
                straggler.cancel()
        while self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        if self._batch_desk is not None:  # a batch being submitted gets its id journaled first
            await self._batch_desk.settle(IN_FLIGHT_GRACE_S)


def _check_request(rec: StepRecord, key: str, site: CallSite, fingerprint: dict[str, str]) -> None:
    """Replay: the model request at ``key`` must be the one journaled (old records: not checked)."""
    differs = differences(rec.meta.get("request"), fingerprint)
    if differs:
        raise ReplayDivergence(
            f"workflow diverged from the journal at step {key}: agent {site.name!r} now sends a different "
            f"model request; it differs in {', '.join(differs)}", step=key, differs=differs)


def _cache_key(call: ModelCall) -> str:
    from baton.runtime.cache import cache_key  # deferred: the cache module loads only for runs that cache

    req = call.wire
    return cache_key(model=req.model, prompt_version=call.site.prompt_version,
                     messages=[message_to_dict(m) for m in req.messages],
                     tools=[{"name": t.name, "schema": t.input_schema} for t in req.tools],
                     output_schema=req.output_schema, temperature=req.temperature, max_tokens=req.max_tokens)


# --- requests in flight and the usage check -------------------------------------------------------


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
