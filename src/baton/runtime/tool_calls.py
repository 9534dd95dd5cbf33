"""The tool call path: least privilege, journal lookup, the in-flight rule for non-idempotent
tools, then the tool under its breaker inside the one retry loop (the agent's policy, else
the run's), journal commit and events.

Every failure of a tool (an exception, a timeout, a schema-invalid input or output, a result
that is not JSON, an open breaker) becomes a tool result the model is told about; only a
tool's ``KeyboardInterrupt`` stops the run (as interrupted, resumable).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

from baton.errors import CircuitOpenError, DecisionRequired, ToolError, ToolInterrupted
from baton.messages import ToolResultBlock, ToolUseBlock
from baton.observe import events as ev
from baton.observe.events import new_id
from baton.runtime.breaker import CircuitBreaker, counts_as_failure
from baton.runtime.journal import decision_key
from baton.runtime.protocols import CallScope, CallSite, RuntimeTool, ToolContext
from baton.runtime.retry import retrying
from baton.runtime.services import RunServices
from baton.stores.base import StepRecord

__all__ = ["ToolCalls"]


class ToolCalls:
    """The tool call path of one run (see the module docstring)."""

    def __init__(self, run: RunServices) -> None:
        self.run = run

    async def run_all(self, scope: CallScope, site: CallSite, prefix: str, uses: list[ToolUseBlock],
                      tools: Mapping[str, RuntimeTool]) -> list[ToolResultBlock]:
        """Run every requested tool concurrently; results come back in request order."""
        calls = [self.call(scope, site, f"{prefix}.{i}", u, tools.get(u.name)) for i, u in enumerate(uses)]
        if len(calls) == 1:
            return [await calls[0]]
        return list(await asyncio.gather(*calls))

    async def call(self, scope: CallScope, site: CallSite, key: str, use: ToolUseBlock,
                   tool: RuntimeTool | None) -> ToolResultBlock:
        """One tool call at journal ``key``; ``tool`` None: the agent was not given that tool."""
        run = self.run
        if tool is None:
            # Least privilege: a tool the agent was not given is never executed.
            run.emit(ev.TOOL_DENIED, new_id(), scope.span_id, {"agent": site.name, "tool": use.name})
            return ToolResultBlock(use.id, f"Error: tool {use.name!r} is not available to agent {site.name!r}.",
                                   is_error=True)
        rec = run.check_replay(key, "tool", tool.name)
        if rec is not None:
            run.report_replayed(rec, scope.span_id)
            return ToolResultBlock(use.id, str(rec.result["content"]), bool(rec.result.get("is_error")))
        if run.journal is not None and not tool.idempotent:
            settled = await self._unsure(scope, key, use, tool)
            if settled is not None:
                return settled
        return await self._execute(scope, site, key, use, tool)

    async def _execute(self, scope: CallScope, site: CallSite, key: str, use: ToolUseBlock,
                       tool: RuntimeTool) -> ToolResultBlock:
        run = self.run
        span = new_id()
        about = {"agent": site.name, "tool": tool.name, "key": key, "call_id": use.id}
        run.emit(ev.TOOL_CALL, span, scope.span_id, {**about, "input": use.input})
        started, t0 = time.time(), time.perf_counter()
        tctx = ToolContext(run_id=run.run_id, agent=site.name, step_key=key,
                           idempotency_key=f"{run.run_id}:{key}", state=scope.state)
        try:
            content, is_error, attempts = await self._attempts(scope, site, tool, use, tctx)
        except ToolInterrupted as exc:
            # Not journaled: the call did not finish, so a resume runs it again (or asks, if not idempotent).
            run.emit(ev.TOOL_RESULT, span, scope.span_id, {**about, "is_error": True, "error_type": "interrupted",
                                                           "duration_s": time.perf_counter() - t0})
            run.stop_reason = str(exc)
            raise asyncio.CancelledError(str(exc)) from exc
        duration = time.perf_counter() - t0
        await run.commit(StepRecord(run.run_id, key, "tool", tool.name, "completed",
                                    result={"content": content, "is_error": is_error}, started_at=started,
                                    ended_at=time.time(), attempts=attempts,
                                    meta={"agent": site.name, "idempotent": tool.idempotent}))
        run.emit(ev.TOOL_RESULT, span, scope.span_id, {**about, "is_error": is_error, "duration_s": duration,
                                                       "output": content})
        return ToolResultBlock(use.id, content, is_error)

    async def _unsure(self, scope: CallScope, key: str, use: ToolUseBlock,
                      tool: RuntimeTool) -> ToolResultBlock | None:
        """A non-idempotent tool: ask before re-running a call that was in flight at a crash.

        Returns the settled result when a human rejected the re-run, None to go ahead.
        """
        run = self.run
        assert run.journal is not None
        prior = run.journal.get(key)
        crashes = prior.attempts if prior is not None and prior.status == "started" else 0
        if crashes:
            dkey = decision_key(key, crashes)
            decision = run.journal.completed(dkey)
            if decision is None:
                raise DecisionRequired(
                    f"non-idempotent tool {tool.name!r} (step {key}) was in flight when the run stopped; its "
                    f"outcome is unknown, so it is not re-run blindly. Decide with: baton approve "
                    f"{run.run_id} {dkey} --approve (run it again) or --reject (report it failed)",
                    step=dkey)
            run.emit(ev.APPROVAL_DECIDED, new_id(), scope.span_id, {
                "step": dkey, "name": tool.name, "approved": bool(decision.result.get("approved")),
                "by": decision.result.get("by"), "edited": decision.result.get("edit") is not None,
                "decided_at": decision.ended_at})
            if not decision.result.get("approved"):
                edit = decision.result.get("edit")
                content = edit if edit is not None else f"tool {tool.name!r} outcome unknown after a crash; not re-run"
                block = ToolResultBlock(use.id, str(content), is_error=edit is None)
                await run.commit(StepRecord(run.run_id, key, "tool", tool.name, "completed",
                                            result={"content": block.content, "is_error": block.is_error},
                                            started_at=time.time(), ended_at=time.time()))
                return block
        await run.commit(StepRecord(run.run_id, key, "tool", tool.name, "started", started_at=time.time(),
                                    attempts=crashes + 1, meta={"idempotent": False}))
        return None

    async def _attempts(self, scope: CallScope, site: CallSite, tool: RuntimeTool, use: ToolUseBlock,
                        tctx: ToolContext) -> tuple[str, bool, int]:
        """The tool under its breaker, in the retry loop with the agent's policy (else the run's):
        (content, is_error, attempts).

        Every failure is a tool error the model is told about; retried first when the tool is
        ``retryable``, or when it is idempotent and the failure transient (a timeout, a lost
        connection).
        """
        run = self.run
        policy = site.retry or run.retry
        breaker = run.breakers.get(f"tool:{tool.name}")
        made = 0

        async def attempt(n: int) -> str:
            nonlocal made
            made = n
            return await _guarded(breaker, tool, use, tctx)

        def delay(n: int, exc: ToolError) -> float | None:
            if not (tool.retryable or tool.idempotent):
                return None
            return policy.delay_for(n, exc, now=time.monotonic(), deadline=run.budget.deadline,
                                    retry_tool_errors=tool.retryable)

        def retrying_now(n: int, wait: float, exc: ToolError) -> None:
            run.emit(ev.RETRY, new_id(), scope.span_id, {"agent": site.name, "target": tool.name, "attempt": n,
                                                         "delay_s": wait, "error_type": "tool_error"})

        try:
            content = await retrying(attempt, delay, retry_on=ToolError, sleep=run.sleep, on_retry=retrying_now)
        except CircuitOpenError:
            return f"Error: tool {tool.name!r} is unavailable (circuit open); try later.", True, made
        except ToolError as exc:
            return f"Error: {exc}", True, made
        return content, False, made


async def _guarded(breaker: CircuitBreaker, tool: RuntimeTool, use: ToolUseBlock, tctx: ToolContext) -> str:
    """One attempt under the tool's breaker: fail fast while it is open, report the outcome."""
    breaker.check()
    try:
        content = tool.result_text(await tool.invoke(use.input, tctx))
    except ToolError as exc:
        if counts_as_failure(exc):
            breaker.record_failure()
        else:
            breaker.release()
        raise
    except BaseException:
        breaker.release()
        raise
    breaker.record_success()
    return content
