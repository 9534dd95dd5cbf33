"""Test doubles shipped with baton: a scripted model, a fake Messages-API server, faults."""

from typing import TYPE_CHECKING, Any

from baton.testing.script import Fault, Reply, Rule, json_reply, text, tool_call, tool_calls
from baton.testing.scripted import ScriptedModel

if TYPE_CHECKING:
    from baton.testing.fake_anthropic import FakeAnthropicServer, LoggedRequest, RateLimitConfig

# The server module is also a CLI (python -m baton.testing.fake_anthropic); importing it
# here eagerly would make runpy warn that it was imported before being run.
_LAZY = {"FakeAnthropicServer", "LoggedRequest", "RateLimitConfig"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from baton.testing import fake_anthropic

        return getattr(fake_anthropic, name)
    raise AttributeError(f"module 'baton.testing' has no attribute {name!r}")


__all__ = [
    "FakeAnthropicServer",
    "Fault",
    "LoggedRequest",
    "RateLimitConfig",
    "Reply",
    "Rule",
    "ScriptedModel",
    "json_reply",
    "text",
    "tool_call",
    "tool_calls",
]
