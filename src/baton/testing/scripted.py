"""``ScriptedModel``: an in-process Model that answers from a script of ``Rule``s.

It checks each request the way the Messages API does (tool_result pairing, forced tool
names, cache_control limits), counts tokens deterministically, sleeps for scripted
latency and raises scripted faults as the same ``ProviderError``s the Anthropic adapter
would raise, so retry, budget and fallback logic can be tested without sockets.
"""

from __future__ import annotations

import asyncio
import itertools

import orjson

from baton.errors import ProviderConnectionError, ProviderTimeout
from baton.messages import ModelRequest, ModelResponse, Usage
from baton.models.anthropic import content_from_wire, request_to_wire, status_error
from baton.testing.script import (
    DEFAULT_REPLY,
    Fault,
    Reply,
    ReplySpec,
    Rule,
    Script,
    input_tokens_of,
    render_reply,
    validate_body,
)


class ScriptedModel:
    """A deterministic Model for tests.

    Args:
        rules: the script; the first matching rule that is not used up answers.
        model_name: reported as the response model when the request names none.
        seed: seeds the coin for faults with ``p < 1``.
        default_latency_s: latency for requests whose rule sets none.
        validate: reject requests the real API would reject (HTTP 400 as ProviderError).

    Attributes:
        requests: every request received, in order (including failed ones).
        responses: every response returned, in order.
    """

    provider = "scripted"

    def __init__(self, rules: list[Rule] | None = None, *, model_name: str = "scripted", seed: int = 0,
                 default_latency_s: float = 0.0, validate: bool = True) -> None:
        self.script = Script(rules, seed=seed)
        self.model_name = model_name
        self.default_latency_s = default_latency_s
        self.validate = validate
        self.requests: list[ModelRequest] = []
        self.responses: list[ModelResponse] = []
        self._ids = itertools.count(1)
        self._tool_ids = itertools.count(1)

    def __repr__(self) -> str:
        return f"ScriptedModel(rules={len(self.script.rules)}, calls={len(self.requests)})"

    @property
    def rules(self) -> list[Rule]:
        return self.script.rules

    def add_rule(self, match: str | None = None, *, reply: ReplySpec | None = None, times: int | None = None,
                 latency_s: float = 0.0, fault: Fault | None = None, model: str | None = None) -> Rule:
        rule = Rule(match, reply=reply, times=times, latency_s=latency_s, fault=fault, model=model)
        self.script.add(rule)
        return rule

    @property
    def call_count(self) -> int:
        return len(self.requests)

    def _new_tool_id(self) -> str:
        return f"toolu_scripted_{next(self._tool_ids):06d}"

    async def complete(self, request: ModelRequest) -> ModelResponse:
        n = next(self._ids)
        request_id = f"req_scripted_{n:06d}"
        self.requests.append(request)
        body = request_to_wire(request)
        if self.validate:
            problem = validate_body(body)
            if problem is not None:
                raw = orjson.dumps({"type": "error", "error": {"type": "invalid_request_error", "message": problem}})
                raise status_error(400, raw, {"request-id": request_id}, provider="scripted")
        index, rule = self.script.pick(request)
        fault = rule.fault if rule is not None and self.script.fires(rule.fault) else None
        delay = rule.latency_s if rule is not None and rule.latency_s else self.default_latency_s
        if fault is not None and fault.kind == "stall":
            delay += fault.seconds
        if delay > 0:
            if request.timeout_s is not None and delay > request.timeout_s:
                await asyncio.sleep(request.timeout_s)
                raise ProviderTimeout(f"scripted: no response within {request.timeout_s:g}s", provider="scripted")
            await asyncio.sleep(delay)
        if fault is not None:
            self._raise_fault(fault, request_id)
        reply: Reply = rule.resolve(request) if rule is not None else DEFAULT_REPLY
        rendered = render_reply(reply, request, self._new_tool_id)
        response = ModelResponse(
            id=f"msg_scripted_{n:06d}",
            model=request.model or self.model_name,
            content=content_from_wire(rendered.content),
            stop_reason=rendered.stop_reason,
            usage=Usage(input_tokens=input_tokens_of(body), output_tokens=rendered.output_tokens),
            request_id=request_id,
        )
        self.responses.append(response)
        return response

    @staticmethod
    def _raise_fault(fault: Fault, request_id: str) -> None:
        if fault.kind in ("connection_reset", "stream_cut"):
            raise ProviderConnectionError("scripted: connection reset by peer", provider="scripted")
        if fault.kind in ("status", "stream_error"):
            status, headers, raw = fault.wire_error(request_id)
            raise status_error(status, raw, headers, provider="scripted")

    async def aclose(self) -> None:
        return None


def last_request_text(model: ScriptedModel) -> str:
    """The text of the last user message the model received (handy in assertions)."""
    if not model.requests:
        return ""
    for message in reversed(model.requests[-1].messages):
        if message.role == "user":
            return message.text
    return ""


__all__ = ["ScriptedModel", "last_request_text"]
