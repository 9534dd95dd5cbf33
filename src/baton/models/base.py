"""The model seam: one small protocol that every adapter implements.

An adapter translates a neutral ``ModelRequest`` into its wire format, sends it once
(no retries: baton's runtime owns retries), and returns a neutral ``ModelResponse`` or
raises a ``ProviderError`` whose ``retryable``/``retry_after`` say what the runtime may do.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from baton.messages import ModelRequest, ModelResponse


@runtime_checkable
class Model(Protocol):
    """A model endpoint. ``provider`` names the adapter family (for breakers, metrics)."""

    provider: str

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Send one request; raise ``baton.errors.ProviderError`` on failure."""
        ...

    async def aclose(self) -> None:
        """Release connections. Safe to call twice."""
        ...


def model_family(model_id: str) -> str:
    """The rate-limit pool a model id belongs to (Anthropic pools Opus 4.x, Sonnet 4.x...)."""
    m = model_id.lower()
    for family in ("opus", "sonnet", "haiku"):
        if family in m:
            return f"claude-{family}"
    return m
