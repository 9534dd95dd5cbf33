"""The one place where model and tool calls happen.

Every model call passes, in order: journal lookup (replay) -> result cache -> budget
reservation -> concurrency slot -> rate governor -> circuit breaker -> the adapter,
inside one retry loop (baton is the only retry owner) -> cost -> journal commit ->
events. Fallback models are tried when a model's breaker is open or its retries are
spent. Tool calls get the same treatment minus tokens. Patterns never see any of this.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Coroutine
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from baton.errors import (
    CircuitOpenError,
    DecisionRequired,
    ProviderError,
    ProviderTimeout,
    ReplayDivergence,
    ToolError,
)
from baton.messages import (
    ModelRequest,
    ModelResponse,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
    message_to_dict,
    response_from_dict,
    response_to_dict,
)
from baton.models.pricing import cost_of
from baton.observe import events as ev
from baton.observe.events import Event, EventStream, new_id, trace_id_for
from baton.runtime.breaker import BreakerRegistry, counts_as_failure
from baton.runtime.budget import BudgetTracker, Reservation
from baton.runtime.fingerprint import differences, request_fingerprint
from baton.runtime.journal import Journal
from baton.runtime.retry import RetryPolicy
from baton.runtime.routing import AUTO, ModelRouter
from baton.stores.base import StepRecord
from baton.tools import Tool, ToolContext, ToolInterrupted

__all__ = ["IN_FLIGHT_GRACE_S", "ModelBinding", "ReplayDivergence", "Runtime"]
"""``ReplayDivergence`` lives in ``baton.errors``; importing it from here keeps working."""

if TYPE_CHECKING:
    from baton.agent import Agent
    from baton.context import RunContext
    from baton.models.base import Model
    from baton.runtime.cache import ResultCache
    from baton.runtime.ratelimit import RateGovernor


logger = logging.getLogger(__name__)


def _new_governor() -> RateGovernor:
    """A private governor (the runtime module loads only when a run needs one)."""
    from baton.runtime.ratelimit import RateGovernor

    return RateGovernor()


_CURRENT: ContextVar[Runtime | None] = ContextVar("baton_runtime", default=None)
"""The run whose code is executing: a breaker that changes state is reported to this run."""


def _breaker_changed(target: str, old: str, new: str) -> None:
    runtime = _CURRENT.get()
    if runtime is not None:
        runtime.emit(ev.BREAKER_CHANGE, new_id(), runtime.run_span, {"target": target, "old": old, "new": new})


@dataclass(slots=True)
class ModelBinding:
    """Which adapter serves a model id, and which price table entry its tokens are billed as."""

    model: Model
    wire_model: str
    price_as: str


def _request_chars(req: ModelRequest) -> int:
    n = len(req.system) if isinstance(req.system, str) else sum(len(b.get("text", "")) for b in req.system or [])
    for m in req.messages:
        for b in m.content:
            n += len(getattr(b, "text", "") or getattr(b, "content", "") or "") + (
                len(orjson.dumps(b.input)) if isinstance(b, ToolUseBlock) else 0)
    for t in req.tools:
        n += len(t.description) + len(orjson.dumps(t.input_schema))
    return n


@dataclass
class Runtime:
    """Everything one execution of a run shares. Built by the engine, used via RunContext."""

    run_id: str
    journal: Journal | None
    budget: BudgetTracker
    events: EventStream
    bind_model: Any
    """Callable[[str], ModelBinding]: resolves a model id to an adapter."""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    breakers: BreakerRegistry = field(default_factory=BreakerRegistry)
    governor: RateGovernor = field(default_factory=_new_governor)
    cache: ResultCache | None = None
    cache_ttl_s: float | None = None
    trace_id: str = ""
    """Empty: derived from the run id, so a resumed run stays in its first execution's trace."""
    run_span: str = field(default_factory=new_id)
    sleep: Any = asyncio.sleep
    replay_only: bool = False
    """Replay mode: any step missing from the journal is a divergence; nothing is executed."""
    router: ModelRouter = field(default_factory=ModelRouter)
    stop_reason: str | None = None
    """Why the run stopped itself as interrupted (a tool's KeyboardInterrupt), for its error message."""
    warnings: list[dict[str, Any]] = field(default_factory=list)
    """Outcomes that succeeded but deserve a reader's attention (``RunContext.warn``)."""
    stream_deltas: bool = False
    tenant: str | None = None
    """The service tenant the run belongs to (run metadata): long-term memory is kept per tenant."""
    """Someone listens for ``text.delta`` events: model calls stream and report each piece."""
    _slots: asyncio.Semaphore | None = None
    _warm: dict[str, asyncio.Event] = field(default_factory=dict)
    _in_flight: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._slots = asyncio.Semaphore(max(1, self.budget.limits.concurrency))
        if not self.trace_id:
            self.trace_id = trace_id_for(self.run_id)
        self.breakers.listen(_breaker_changed)

    async def scoped(self, work: Awaitable[Any]) -> Any:
        """Await ``work`` as this run's code: events that cannot name their run (a breaker's
        change of state) find it through the task's context."""
        _CURRENT.set(self)  # this task's own context: nothing outside it sees the change
        return await work

    # --- events ---------------------------------------------------------------

    def emit(self, kind: str, span: str, parent: str | None, data: dict[str, Any]) -> None:
        if self.events.active:
            self.events.emit(Event(kind, self.run_id, self.trace_id, span, parent, data))

    def _replayed(self, rec: StepRecord, span: str | None) -> None:
        self.emit(ev.STEP_REPLAYED, new_id(), span, {"key": rec.key, "kind": rec.kind, "name": rec.name})

    def check_replay(self, key: str, kind: str, name: str) -> StepRecord | None:
        """The completed record at ``key``, after checking it is the same step."""
        if self.journal is None:
            return None
        rec = self.journal.completed(key)
        if rec is not None and (rec.kind != kind or rec.name != name):
            raise ReplayDivergence(
                f"workflow diverged from the journal at step {key}: journal has {rec.kind} {rec.name!r}, "
                f"the workflow now asks for {kind} {name!r}", step=key, differs=["kind/name"])
        if rec is None and self.replay_only:
            raise ReplayDivergence(f"workflow diverged from the journal at step {key}: the journal has no "
                                   f"record there, the workflow now asks for {kind} {name!r}", step=key)
        return rec

    def check_agent_replay(self, key: str, name: str) -> StepRecord | None:
        """``check_replay`` for an agent step. A replay goes into a completed agent whose model
        calls are journaled, so that each model request is compared with the one recorded."""
        rec = self.check_replay(key, "agent", name)
        if rec is not None and self.replay_only and self.journal is not None \
                and self.journal.completed(f"{key}/m0") is not None:
            return None
        return rec

    def _check_request(self, rec: StepRecord, key: str, agent: Agent, fingerprint: dict[str, str]) -> None:
        """Replay: the model request at ``key`` must be the one journaled (old records: not checked)."""
        differs = differences(rec.meta.get("request"), fingerprint)
        if differs:
            raise ReplayDivergence(
                f"workflow diverged from the journal at step {key}: agent {agent.name!r} now sends a different "
                f"model request; it differs in {', '.join(differs)}", step=key, differs=differs)

    async def commit(self, record: StepRecord) -> None:
        if self.journal is not None:
            # The journal is the truth: results are stored exactly as they happened, so a resumed
            # run sees what the uninterrupted one saw. Redaction belongs to the sinks; stored
            # content is protected by file modes and, where asked, encryption (stores/_codec.py).
            await self.journal.commit(record)

    # --- seams another engine overrides (baton.temporal runs these as Temporal activities) ---

    async def run_step(self, key: str, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Execute the effect of ``ctx.step`` at ``key`` (here: call it in this process)."""
        result = fn(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def await_decision(self, span: str, key: str, name: str, request: Any) -> dict[str, Any] | None:
        """Wait for a human decision on approval step ``key`` when the engine can keep the run
        alive meanwhile; None (here): the run stops resumably with ``ApprovalRequired``."""
        return None

    # --- model calls ------------------------------------------------------------

    async def model_call(self, ctx: RunContext, agent: Agent, key: str,
                         request: ModelRequest) -> tuple[ModelResponse, float | None]:
        rec = self.check_replay(key, "model", agent.name)
        fingerprint = request_fingerprint(request) if self.journal is not None else None
        if rec is not None:
            if self.replay_only and fingerprint is not None:
                self._check_request(rec, key, agent, fingerprint)
            self._replayed(rec, ctx.span_id)
            return response_from_dict(rec.result), rec.cost_usd
        if request.model == AUTO:
            chosen = self.router.choose(agent.task_type, request.messages[0].text if request.messages else "")
            request = _with_model(request, chosen)
        candidates = [request.model, *agent.fallback_models]
        failures: list[str] = []
        for i, model_id in enumerate(candidates):
            binding = self.bind_model(model_id)
            target = f"{binding.model.provider}:{binding.wire_model}"
            if self.breakers.get(target).state == "open":
                failures.append(f"{model_id}: circuit open")
                continue
            try:
                return await self._attempts(ctx, agent, key, request, binding, model_id, target, fingerprint)
            except (ProviderError, CircuitOpenError) as exc:
                failures.append(f"{model_id}: {exc}")
                last = i + 1 == len(candidates)
                if last or (isinstance(exc, ProviderError) and not exc.retryable):
                    raise
        raise CircuitOpenError(f"no model available for agent {agent.name!r}: " + "; ".join(failures),
                               target=candidates[-1])

    async def _attempts(self, ctx: RunContext, agent: Agent, key: str, request: ModelRequest,
                        binding: ModelBinding, model_id: str, target: str,
                        fingerprint: dict[str, str] | None) -> tuple[ModelResponse, float | None]:
        policy: RetryPolicy = agent.retry or self.retry
        wire = request if binding.wire_model == request.model else _with_model(request, binding.wire_model)
        call = _Call(agent, key, wire, binding, model_id, self.breakers.get(target), None, _request_chars(wire),
                     time.time(), fingerprint)
        if self.cache is not None:
            call.cache_key = self._cache_key(agent, wire)
            hit = await self._cache_hit(ctx, call)
            if hit is not None:
                return hit, 0.0
        if not agent.cache_prompt:
            return await self._attempt_loop(ctx, call, policy)
        # A prompt-cache entry is readable only once the first response has begun: let the first
        # call with this prefix go alone and release the rest of a fan-out when it answers.
        gate = self._warm.get(agent.prompt_version)
        if gate is None:
            gate = self._warm[agent.prompt_version] = asyncio.Event()
            try:
                return await self._attempt_loop(ctx, call, policy)
            finally:
                gate.set()
        await gate.wait()
        return await self._attempt_loop(ctx, call, policy)

    async def _cache_hit(self, ctx: RunContext, call: _Call) -> ModelResponse | None:
        """A cached answer, journaled exactly as cached (an entry that is no response is a miss)."""
        assert self.cache is not None and call.cache_key is not None
        hit = await self.cache.get(call.cache_key)
        if hit is None:
            return None
        try:
            response = response_from_dict(hit)
        except (AttributeError, KeyError, TypeError, ValueError):
            return None  # not a response: call the model, and the fresh answer replaces the entry
        agent = call.agent
        await self.commit(StepRecord(self.run_id, call.key, "model", agent.name, "completed",
                                     result=hit, started_at=time.time(), ended_at=time.time(),
                                     usage={}, cost_usd=0.0, meta=self._meta(call, cache_hit=True)))
        self.emit(ev.CACHE_HIT, new_id(), ctx.span_id, {"agent": agent.name, "model": call.model_id, "key": call.key})
        return response

    @staticmethod
    def _meta(call: _Call, **extra: Any) -> dict[str, Any]:
        meta: dict[str, Any] = {"model": call.model_id, "prompt_version": call.agent.prompt_version, **extra}
        if call.fingerprint is not None:
            meta["request"] = call.fingerprint
        return meta

    async def _attempt_loop(self, ctx: RunContext, call: _Call,
                            policy: RetryPolicy) -> tuple[ModelResponse, float | None]:
        agent, key, wire, binding, model_id, breaker = (call.agent, call.key, call.wire, call.binding,
                                                         call.model_id, call.breaker)
        attempt = 0
        while True:
            attempt += 1
            reservation = self.budget.reserve(model_id, call.chars, wire.max_tokens, price_as=binding.price_as)
            try:
                breaker.check()  # open: fail fast (CircuitOpenError); half-open: this call is the probe
            except CircuitOpenError:
                self.budget.release(reservation)
                raise
            span = new_id()
            t0 = time.perf_counter()
            try:
                response = await self._send(ctx, call, reservation, span, attempt)
            except ProviderError as exc:
                self.budget.release(reservation)
                self.governor.settle(binding.price_as, estimated_input=reservation.input_tokens, actual_input=0,
                                     estimated_output=wire.max_tokens, actual_output=0)
                retry_after = policy.retry_after_wait(exc)
                if exc.status == 429 and retry_after:
                    self.governor.penalize(binding.price_as, retry_after)  # held no longer than the retry waits
                if counts_as_failure(exc, count_rate_limits=False):
                    breaker.record_failure()
                else:
                    breaker.release()
                self.emit(ev.MODEL_ERROR, span, ctx.span_id,
                          {"agent": agent.name, "model": model_id, "key": key, "error_type": exc.error_type,
                           "status": exc.status, "retryable": exc.retryable,
                           "latency_s": time.perf_counter() - t0})
                delay = policy.delay_for(attempt, exc, now=time.monotonic(), deadline=self.budget.deadline)
                if delay is None or breaker.state == "open":
                    raise
                self.emit(ev.RETRY, new_id(), ctx.span_id, {"agent": agent.name, "target": model_id,
                                                            "attempt": attempt, "delay_s": delay,
                                                            "error_type": exc.error_type})
                await self.sleep(delay)
                continue
            except BaseException:
                if not call.adopted:  # an adopted request settles its reservation when it ends
                    self.budget.release(reservation)
                    breaker.release()
                raise
            cost = await self._book(ctx, call, reservation, response, span, attempt, time.perf_counter() - t0)
            return response, cost

    async def _send(self, ctx: RunContext, call: _Call, reservation: Reservation, span: str,
                    attempt: int) -> ModelResponse:
        """One attempt: concurrency slot, rate governor, the adapter. A caller cancelled while its
        request is on the wire returns at once; the request is adopted (``_adopt``)."""
        call.adopted = False
        wire, binding, agent = call.wire, call.binding, call.agent
        assert self._slots is not None
        async with self._slots:
            waited = await self.governor.acquire(binding.price_as, input_tokens=reservation.input_tokens,
                                                 output_tokens=wire.max_tokens, priority=ctx.priority)
            if waited:
                self.emit(ev.RATE_LIMIT_WAIT, new_id(), ctx.span_id,
                          {"model": call.model_id, "wait_s": waited, "priority": ctx.priority})
            if self.events.active:
                data: dict[str, Any] = {"agent": agent.name, "model": call.model_id, "key": call.key,
                                        "provider": binding.model.provider,
                                        "prompt_version": agent.prompt_version, "attempt": attempt,
                                        "max_tokens": wire.max_tokens,
                                        "messages": [message_to_dict(m) for m in wire.messages]}
                self.emit(ev.MODEL_REQUEST, span, ctx.span_id, data)
            t0 = time.perf_counter()
            # The request runs as its own task, so cancelling the caller does not abort a request
            # already on the wire (the provider bills it): see ``_adopt``.
            if self.stream_deltas:  # someone listens for text deltas (one flag test when nobody does)
                task, answer = _detached(self._streamed(ctx, call, span, attempt))
            else:
                task, answer = _detached(binding.model.complete(wire))
            try:
                if wire.timeout_s is None:
                    response = await answer
                else:
                    async with asyncio.timeout(wire.timeout_s):
                        response = await answer
            except TimeoutError as exc:
                task.cancel()
                raise ProviderTimeout(f"model call to {call.model_id} timed out after {wire.timeout_s}s",
                                      provider=binding.model.provider) from exc
            except asyncio.CancelledError:
                self._adopt(ctx, call, task, reservation, span, attempt, t0)
                raise
        _check_usage(response, wire.max_tokens, binding.model.provider)
        return response

    async def _streamed(self, ctx: RunContext, call: _Call, span: str, attempt: int) -> ModelResponse:
        """The call, with a ``text.delta`` event for each piece as it arrives. A model that cannot
        stream gives its whole answer as one delta per block once it is back."""
        model, events, agent = call.binding.model, self.events, call.agent.name

        def on_delta(index: int, kind: str, piece: str) -> None:
            events.emit_delta(Event(ev.TEXT_DELTA, self.run_id, self.trace_id, span, ctx.span_id, {
                "agent": agent, "key": call.key, "attempt": attempt, "index": index, "type": kind,
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

    def _adopt(self, ctx: RunContext, call: _Call, task: asyncio.Future[ModelResponse], reservation: Reservation,
               span: str, attempt: int, t0: float) -> None:
        """The caller was cancelled (a gather stopping at a budget trip, an agent timeout) while its
        request was on the wire: the server will answer and bill it, so the answer is awaited in the
        background (up to ``IN_FLIGHT_GRACE_S``), then billed, journaled and reported like any other.
        Its reservation stays held until then; the engine waits for these before it records the run."""
        call.adopted = True
        straggler = asyncio.get_running_loop().create_task(
            self._settle_adopted(ctx, call, task, reservation, span, attempt, t0))
        self._in_flight.add(straggler)
        straggler.add_done_callback(self._in_flight.discard)

    async def _settle_adopted(self, ctx: RunContext, call: _Call, task: asyncio.Future[ModelResponse],
                              reservation: Reservation, span: str, attempt: int, t0: float) -> None:
        response = await _arrival(task, call.wire, call.binding.model.provider)
        if response is None:  # no answer in time, or a failed one: nothing the server bills
            self.budget.release(reservation)
            call.breaker.release()
            return
        try:
            await self._book(ctx, call, reservation, response, span, attempt, time.perf_counter() - t0)
        except Exception:  # e.g. the journal is gone: the budget was settled, the run goes on
            logger.exception("could not journal the answer to cancelled call %s of run %s", call.key, self.run_id)

    async def settle_in_flight(self, *, wait: bool = True) -> None:
        """Wait for the answers to requests whose callers were cancelled (``wait=False``: an
        interrupt, give them up now). Call before recording a run's usage and cost."""
        if not wait:
            for straggler in self._in_flight:
                straggler.cancel()
        while self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def _book(self, ctx: RunContext, call: _Call, reservation: Reservation, response: ModelResponse,
                    span: str, attempt: int, latency: float) -> float | None:
        """Bill a response that arrived, journal it, cache it, tell the sinks; its cost."""
        agent, binding, model_id = call.agent, call.binding, call.model_id
        call.breaker.record_success()
        usage = response.usage
        cost = cost_of(binding.price_as, usage)
        self.budget.settle(reservation, usage, cost)
        self.governor.settle(binding.price_as, estimated_input=reservation.input_tokens,
                             actual_input=usage.input_tokens + usage.cache_creation_input_tokens,
                             estimated_output=call.wire.max_tokens, actual_output=usage.output_tokens)
        if response.headers:
            self.governor.observe_headers(binding.price_as, response.headers)
        result = response_to_dict(response)
        await self.commit(StepRecord(
            self.run_id, call.key, "model", agent.name, "completed", result=result, started_at=call.started,
            ended_at=time.time(), usage=usage.to_dict(), cost_usd=cost or 0.0, attempts=attempt,
            meta=self._meta(call, latency_s=latency, stop_reason=response.stop_reason, priced=cost is not None)))
        if call.cache_key is not None and self.cache is not None:
            await self.cache.put(call.cache_key, result, self.cache_ttl_s)
        if self.events.active:
            self.emit(ev.MODEL_RESPONSE, span, ctx.span_id, {
                "agent": agent.name, "model": model_id, "key": call.key, "prompt_version": agent.prompt_version,
                "usage": usage.to_dict(), "cost_usd": cost, "latency_s": latency,
                "stop_reason": response.stop_reason, "request_id": response.request_id,
                "output": result["content"]})
        return cost

    def _cache_key(self, agent: Agent, req: ModelRequest) -> str:
        from baton.runtime.cache import cache_key

        return cache_key(model=req.model, prompt_version=agent.prompt_version,
                         messages=[message_to_dict(m) for m in req.messages],
                         tools=[{"name": t.name, "schema": t.input_schema} for t in req.tools],
                         output_schema=req.output_schema, temperature=req.temperature, max_tokens=req.max_tokens)

    # --- tool calls ---------------------------------------------------------------

    async def run_tools(self, ctx: RunContext, agent: Agent, prefix: str, uses: list[ToolUseBlock],
                        tools: dict[str, Tool]) -> list[ToolResultBlock]:
        """Run every requested tool concurrently; results come back in request order."""
        calls = [self.tool_call(ctx, agent, f"{prefix}.{i}", u, tools.get(u.name)) for i, u in enumerate(uses)]
        if len(calls) == 1:
            return [await calls[0]]
        return list(await asyncio.gather(*calls))

    async def tool_call(self, ctx: RunContext, agent: Agent, key: str, use: ToolUseBlock,
                        tool: Tool | None) -> ToolResultBlock:
        if tool is None:
            # Least privilege: a tool the agent was not given is never executed.
            self.emit(ev.TOOL_DENIED, new_id(), ctx.span_id, {"agent": agent.name, "tool": use.name})
            return ToolResultBlock(use.id, f"Error: tool {use.name!r} is not available to agent {agent.name!r}.",
                                   is_error=True)
        rec = self.check_replay(key, "tool", tool.name)
        if rec is not None:
            self._replayed(rec, ctx.span_id)
            return ToolResultBlock(use.id, str(rec.result["content"]), bool(rec.result.get("is_error")))
        if self.journal is not None and not tool.idempotent:
            settled = await self._unsure_tool_call(ctx, key, use, tool)
            if settled is not None:
                return settled
        span = new_id()
        self.emit(ev.TOOL_CALL, span, ctx.span_id, {"agent": agent.name, "tool": tool.name, "key": key,
                                                    "call_id": use.id, "input": use.input})
        started = time.time()
        t0 = time.perf_counter()
        tctx = ToolContext(run_id=self.run_id, agent=agent.name, step_key=key,
                           idempotency_key=f"{self.run_id}:{key}", state=ctx.state)
        try:
            content, is_error, attempt = await self._tool_attempts(ctx, agent, tool, use, tctx)
        except ToolInterrupted as exc:
            # Not journaled: the call did not finish, so a resume runs it again (or asks, if not idempotent).
            self.emit(ev.TOOL_RESULT, span, ctx.span_id, {"agent": agent.name, "tool": tool.name, "key": key,
                                                          "call_id": use.id, "is_error": True,
                                                          "error_type": "interrupted",
                                                          "duration_s": time.perf_counter() - t0})
            self.stop_reason = str(exc)
            raise asyncio.CancelledError(str(exc)) from exc
        duration = time.perf_counter() - t0
        await self.commit(StepRecord(self.run_id, key, "tool", tool.name, "completed",
                                     result={"content": content, "is_error": is_error}, started_at=started,
                                     ended_at=time.time(), attempts=attempt,
                                     meta={"agent": agent.name, "idempotent": tool.idempotent}))
        self.emit(ev.TOOL_RESULT, span, ctx.span_id, {"agent": agent.name, "tool": tool.name, "key": key,
                                                      "call_id": use.id, "is_error": is_error, "duration_s": duration,
                                                      "output": content})
        return ToolResultBlock(use.id, content, is_error)

    async def _unsure_tool_call(self, ctx: RunContext, key: str, use: ToolUseBlock,
                                tool: Tool) -> ToolResultBlock | None:
        """A non-idempotent tool: ask before re-running a call that was in flight at a crash.

        Returns the settled result when a human rejected the re-run, None to go ahead.
        """
        assert self.journal is not None
        prior = self.journal.get(key)
        started_before = prior.attempts if prior is not None and prior.status == "started" else 0
        if started_before:
            # Each crash while in flight needs its own decision: approving one re-run
            # does not approve the re-run after the next crash.
            dkey = f"{key}#decision" if started_before == 1 else f"{key}#decision-{started_before}"
            decision = self.journal.completed(dkey)
            if decision is None:
                raise DecisionRequired(
                    f"non-idempotent tool {tool.name!r} (step {key}) was in flight when the run stopped; its "
                    f"outcome is unknown, so it is not re-run blindly. Decide with: baton approve "
                    f"{self.run_id} {dkey} --approve (run it again) or --reject (report it failed)",
                    step=dkey)
            self.emit(ev.APPROVAL_DECIDED, new_id(), ctx.span_id, {
                "step": dkey, "name": tool.name, "approved": bool(decision.result.get("approved")),
                "by": decision.result.get("by"), "edited": decision.result.get("edit") is not None,
                "decided_at": decision.ended_at})
            if not decision.result.get("approved"):
                edit = decision.result.get("edit")
                content = edit if edit is not None else f"tool {tool.name!r} outcome unknown after a crash; not re-run"
                block = ToolResultBlock(use.id, str(content), is_error=edit is None)
                await self.commit(StepRecord(self.run_id, key, "tool", tool.name, "completed",
                                             result={"content": block.content, "is_error": block.is_error},
                                             started_at=time.time(), ended_at=time.time()))
                return block
        await self.commit(StepRecord(self.run_id, key, "tool", tool.name, "started", started_at=time.time(),
                                     attempts=started_before + 1, meta={"idempotent": False}))
        return None

    async def _tool_attempts(self, ctx: RunContext, agent: Agent, tool: Tool, use: ToolUseBlock,
                             tctx: ToolContext) -> tuple[str, bool, int]:
        """Call the tool under its breaker and the agent's retry policy: (content, is_error, attempts).

        Every failure of the tool, a result that is not JSON included, is a tool error the
        model is told about; retried first when the tool is ``retryable``, or when it is
        idempotent and the failure transient (a timeout, a lost connection).
        """
        policy: RetryPolicy = agent.retry or self.retry
        breaker = self.breakers.get(f"tool:{tool.name}")
        attempt = 0
        while True:
            attempt += 1
            if not breaker.allow():
                return f"Error: tool {tool.name!r} is unavailable (circuit open); try later.", True, attempt
            try:
                content = tool.result_text(await tool.invoke(use.input, tctx))
            except ToolError as exc:
                if counts_as_failure(exc):
                    breaker.record_failure()
                else:
                    breaker.release()
                delay = None
                if tool.retryable or tool.idempotent:
                    delay = policy.delay_for(attempt, exc, now=time.monotonic(), deadline=self.budget.deadline,
                                             retry_tool_errors=tool.retryable)
                if delay is None:
                    return f"Error: {exc}", True, attempt
                self.emit(ev.RETRY, new_id(), ctx.span_id, {"agent": agent.name, "target": tool.name,
                                                            "attempt": attempt, "delay_s": delay,
                                                            "error_type": "tool_error"})
                await self.sleep(delay)
                continue
            except BaseException:
                breaker.release()
                raise
            breaker.record_success()
            return content, False, attempt


@dataclass(slots=True)
class _Call:
    """One model call across its attempts."""

    agent: Agent
    key: str
    wire: ModelRequest
    binding: ModelBinding
    model_id: str
    breaker: Any
    cache_key: str | None
    chars: int
    started: float
    fingerprint: dict[str, str] | None
    adopted: bool = False
    """The current attempt's caller was cancelled with its request on the wire (see ``_adopt``)."""


def _detached(coro: Coroutine[Any, Any, ModelResponse]) -> tuple[asyncio.Task[ModelResponse],
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
    if answer.done():  # the caller is gone (cancelled, timed out): ``_adopt`` bills any answer
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


async def _arrival(task: asyncio.Future[ModelResponse], wire: ModelRequest, provider: str) -> ModelResponse | None:
    """The response of an in-flight request whose caller was cancelled, if it arrives in time."""
    grace = IN_FLIGHT_GRACE_S if wire.timeout_s is None else min(wire.timeout_s, IN_FLIGHT_GRACE_S)
    try:
        async with asyncio.timeout(grace):
            response = await asyncio.shield(task)
        _check_usage(response, wire.max_tokens, provider)
    except (TimeoutError, asyncio.CancelledError):
        task.cancel()
        return None
    except Exception:  # the request failed after all, or its usage is impossible: nothing to bill
        return None
    return response


MAX_INPUT_TOKENS = 10_000_000
"""More input tokens than any context window holds: a response reporting this is broken."""


def _check_usage(response: ModelResponse, max_tokens: int, provider: str) -> None:
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


def _with_model(req: ModelRequest, model: str) -> ModelRequest:
    from dataclasses import replace

    return replace(req, model=model)

