"""What crosses between the workflow side and the activities: plain JSON, never code.

A model request, an agent's call settings and a baton error each travel as a dict.
An error comes back as the same class from ``baton.errors`` (a fixed table: nothing
a payload says can name any other class), so patterns catch what they catch locally.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from baton import errors
from baton.messages import ModelRequest, ToolChoice, ToolSpec, message_from_dict, message_to_dict
from baton.runtime.retry import RetryPolicy

JSON = dict[str, Any]

_ERROR_CLASSES: dict[str, type[errors.BatonError]] = {
    name: cls for name, cls in vars(errors).items()
    if isinstance(cls, type) and issubclass(cls, errors.BatonError)
}


def request_to_dict(req: ModelRequest) -> JSON:
    """A model request as JSON (the activity rebuilds it with ``request_from_dict``)."""
    return {
        "model": req.model, "messages": [message_to_dict(m) for m in req.messages], "system": req.system,
        "tools": [dataclasses.asdict(t) for t in req.tools],
        "tool_choice": dataclasses.asdict(req.tool_choice) if req.tool_choice is not None else None,
        "max_tokens": req.max_tokens, "temperature": req.temperature, "stop_sequences": req.stop_sequences,
        "output_schema": req.output_schema, "timeout_s": req.timeout_s, "metadata": req.metadata,
    }


def request_from_dict(d: JSON) -> ModelRequest:
    choice = d.get("tool_choice")
    return ModelRequest(
        model=d["model"], messages=[message_from_dict(m) for m in d["messages"]], system=d.get("system"),
        tools=[ToolSpec(**t) for t in d.get("tools") or []],
        tool_choice=ToolChoice(**choice) if choice else None, max_tokens=int(d["max_tokens"]),
        temperature=d.get("temperature"), stop_sequences=d.get("stop_sequences"),
        output_schema=d.get("output_schema"), timeout_s=d.get("timeout_s"), metadata=d.get("metadata") or {},
    )


@dataclass(slots=True)
class AgentView:
    """What the call path reads of an agent (``runtime/protocols.CallSite``), as data: an activity needs no
    ``Agent`` object, so agents built at run time (a planner's workers) work the same."""

    name: str
    prompt_version: str
    model: str = ""
    fallback_models: list[str] = field(default_factory=list)
    retry: RetryPolicy | None = None
    cache_prompt: bool = False
    task_type: str | None = None
    batch: bool = False
    """Batch mode is a local-engine feature: on Temporal every model call is an activity of its own."""

    @classmethod
    def of(cls, agent: Any) -> AgentView:
        return cls(agent.name, agent.prompt_version, agent.model, list(agent.fallback_models),
                   agent.retry, bool(agent.cache_prompt), agent.task_type)

    def to_dict(self) -> JSON:
        return {"name": self.name, "prompt_version": self.prompt_version, "model": self.model,
                "fallback_models": self.fallback_models, "cache_prompt": self.cache_prompt,
                "task_type": self.task_type,
                "retry": dataclasses.asdict(self.retry) if self.retry is not None else None}

    @classmethod
    def from_dict(cls, d: JSON) -> AgentView:
        retry = d.get("retry")
        return cls(d["name"], d["prompt_version"], d.get("model", ""), list(d.get("fallback_models") or []),
                   RetryPolicy.from_dict(retry, where="agent.retry") if retry else None,
                   bool(d.get("cache_prompt")), d.get("task_type"))


def error_to_dict(exc: BaseException) -> JSON:
    """A failure as data: its class name, message (URL credentials masked: Temporal keeps it in the
    run's history) and the plain attributes it carries."""
    from baton.masking import mask_in

    attrs = {k: v for k, v in getattr(exc, "__dict__", {}).items() if _plain(v)}
    return {"type": type(exc).__name__, "message": str(mask_in(str(exc))), "attrs": attrs}


def error_from_dict(d: JSON) -> errors.BatonError:
    """The baton error ``d`` describes; a class outside ``baton.errors`` comes back as ``StepFailed``
    naming it (payloads never select code)."""
    cls = _ERROR_CLASSES.get(str(d.get("type")))
    message = str(d.get("message", ""))
    if cls is None:
        return errors.StepFailed(f"{d.get('type')}: {message}")
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    for key, value in (d.get("attrs") or {}).items():
        if isinstance(key, str) and not key.startswith("__"):
            setattr(exc, key, value)
    return exc


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, str | int | float | bool):
        return True
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False
