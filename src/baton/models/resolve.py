"""Which provider runs a workflow, and one shared adapter per provider in the process.

Precedence: an explicit name (``--provider``) > ``BATON_PROVIDER`` > ``anthropic`` when
``ANTHROPIC_API_KEY`` is set > the embedded ``local`` model, which needs no key and no
network (the CLI announces that fallback on stderr).
"""

from __future__ import annotations

import os
import threading
from typing import Literal

from baton.errors import UsageError
from baton.models.base import Model

PROVIDERS = ("anthropic", "local", "openai")
Reason = Literal["explicit", "env", "api_key", "default"]

_cache: dict[tuple[str, str], Model] = {}
_cache_lock = threading.Lock()


def resolve_provider(explicit: str | None = None) -> str:
    """The provider to use; see the module docstring for the precedence."""
    return provider_and_reason(explicit)[0]


def provider_and_reason(explicit: str | None = None) -> tuple[str, Reason]:
    """The provider and why it was chosen (``default`` means the local fallback)."""
    if explicit and explicit.strip():
        return _check(explicit, "--provider"), "explicit"
    env = os.environ.get("BATON_PROVIDER", "").strip()
    if env:
        return _check(env, "BATON_PROVIDER"), "env"
    if os.environ.get("ANTHROPIC_API_KEY", "").strip():
        return "anthropic", "api_key"
    return "local", "default"


def _check(name: str, source: str) -> str:
    provider = name.strip().lower()
    if provider not in PROVIDERS:
        raise UsageError(f"unknown provider {name!r} (from {source}); valid providers: {', '.join(PROVIDERS)}")
    return provider


def announce_provider(provider: str, reason: str) -> str:
    """A one-line note for stderr saying which provider runs and why.

    The CLI prints it at least when ``reason == "default"`` (the silent-looking fallback
    to the embedded model); for other reasons it is informational.
    """
    if provider == "local" and reason == "default":
        return ("baton: no ANTHROPIC_API_KEY set; using the embedded local model "
                "(SmolLM2-135M, demo-grade output). Set ANTHROPIC_API_KEY or --provider to change.")
    why = {"explicit": "from --provider", "env": "from BATON_PROVIDER", "api_key": "ANTHROPIC_API_KEY is set"}
    extra = " (SmolLM2-135M, demo-grade output)" if provider == "local" else ""
    return f"baton: using provider {provider}{extra} ({why.get(reason, reason)})."


def model_for_provider(provider: str, model_id: str) -> str:
    """The model id to send: on ``local`` every Claude model maps onto the local model;
    on ``openai``, ``BATON_OPENAI_MODEL`` (if set) replaces Claude model ids."""
    if provider == "local":
        from baton.models.local import LOCAL_MODEL_NAME

        return LOCAL_MODEL_NAME if _is_claude(model_id) else model_id
    if provider == "openai":
        target = os.environ.get("BATON_OPENAI_MODEL", "").strip()
        if target and _is_claude(model_id):
            return target
    return model_id


def _is_claude(model_id: str) -> bool:
    return model_id.lower().startswith("claude")


def get_model(provider: str, model_id: str = "") -> Model:
    """The process's shared adapter for ``provider`` (one per provider and base URL).

    ``model_id`` is accepted so callers need not know which adapters serve several
    models; every adapter here does, so it does not change the instance returned.
    """
    key = adapter_key(provider)
    with _cache_lock:
        model = _cache.get(key)
        if model is None:
            model = _cache[key] = _build(provider, key[1])
        return model


def adapter_key(provider: str) -> tuple[str, str]:
    """Which shared adapter ``get_model`` returns for ``provider`` now: the provider and its endpoint."""
    provider = _check(provider, "get_model")
    if provider == "anthropic":
        return (provider, os.environ.get("ANTHROPIC_BASE_URL", ""))
    if provider == "openai":
        return (provider, _openai_base_url())
    return (provider, os.environ.get("BATON_LOCAL_MODEL_PATH", ""))


def _build(provider: str, base_url: str) -> Model:
    if provider == "anthropic":
        try:
            from baton.models.anthropic import AnthropicModel
        except ImportError as exc:
            raise UsageError(f"the Anthropic adapter could not be imported: {exc}") from exc
        return AnthropicModel()
    if provider == "openai":
        from baton.models.openai_compat import OpenAICompatModel

        return OpenAICompatModel(base_url=base_url, api_key=os.environ.get("OPENAI_API_KEY") or None)
    from baton.models.local import LocalModel

    return LocalModel()


def _openai_base_url() -> str:
    for name in ("BATON_OPENAI_BASE_URL", "OPENAI_BASE_URL"):
        value = os.environ.get(name, "").strip()
        if value:
            return value.rstrip("/")
    if os.environ.get("OPENAI_API_KEY", "").strip():
        return "https://api.openai.com/v1"
    raise UsageError("provider 'openai' needs an endpoint: set BATON_OPENAI_BASE_URL (or OPENAI_BASE_URL), "
                     "e.g. http://localhost:11434/v1 for Ollama")


async def close_models() -> None:
    """Close and forget every cached adapter (call at process or test end)."""
    with _cache_lock:
        models = list(_cache.values())
        _cache.clear()
    for model in models:
        await model.aclose()
