"""Provider resolution, model-name mapping and the per-process adapter cache."""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator

import pytest

from baton.errors import UsageError
from baton.models.local import LOCAL_MODEL_NAME, LocalModel
from baton.models.openai_compat import OpenAICompatModel
from baton.models.resolve import (
    announce_provider,
    close_models,
    get_model,
    model_for_provider,
    provider_and_reason,
    resolve_provider,
)
from baton.testing.fake_openai import FakeOpenAIServer, Rule

ENV = ("BATON_PROVIDER", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "BATON_OPENAI_BASE_URL", "OPENAI_BASE_URL",
       "OPENAI_API_KEY", "BATON_OPENAI_MODEL", "BATON_LOCAL_MODEL_PATH")


@pytest.fixture(autouse=True)
async def clean_env(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    await close_models()
    yield
    await close_models()


def test_default_is_local_and_announced() -> None:
    assert provider_and_reason() == ("local", "default")
    message = announce_provider("local", "default")
    assert "no ANTHROPIC_API_KEY" in message and "SmolLM2-135M" in message and "--provider" in message


def test_api_key_selects_anthropic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    assert provider_and_reason() == ("anthropic", "api_key")
    assert "sk-ant-test" not in announce_provider("anthropic", "api_key")


def test_blank_api_key_does_not_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "  ")
    assert resolve_provider() == "local"


def test_env_beats_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.setenv("BATON_PROVIDER", "local")
    assert provider_and_reason() == ("local", "env")


def test_explicit_beats_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON_PROVIDER", "local")
    assert provider_and_reason("OpenAI") == ("openai", "explicit")
    assert resolve_provider(" anthropic ") == "anthropic"


def test_unknown_provider_lists_valid_names(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError) as info:
        resolve_provider("gemini")
    assert "'gemini'" in str(info.value) and "--provider" in str(info.value)
    assert "anthropic, local, openai" in str(info.value)
    monkeypatch.setenv("BATON_PROVIDER", "bogus")
    with pytest.raises(UsageError, match="BATON_PROVIDER"):
        resolve_provider()


def test_model_names_map_onto_local_model(monkeypatch: pytest.MonkeyPatch) -> None:
    assert model_for_provider("local", "claude-sonnet-4-6") == LOCAL_MODEL_NAME
    assert model_for_provider("local", "claude-opus-4-6") == LOCAL_MODEL_NAME
    assert model_for_provider("local", "my-finetune") == "my-finetune"
    assert model_for_provider("anthropic", "claude-sonnet-4-6") == "claude-sonnet-4-6"
    assert model_for_provider("openai", "claude-sonnet-4-6") == "claude-sonnet-4-6"
    monkeypatch.setenv("BATON_OPENAI_MODEL", "qwen2.5:7b")
    assert model_for_provider("openai", "claude-haiku-4-5") == "qwen2.5:7b"
    assert model_for_provider("openai", "llama3.1") == "llama3.1"


async def test_local_model_is_shared_and_lazy() -> None:
    a = get_model("local", "claude-sonnet-4-6")
    b = get_model("local", "claude-opus-4-6")
    assert isinstance(a, LocalModel) and a is b
    assert a.price_as == "claude-sonnet-4-6"


async def test_openai_needs_an_endpoint() -> None:
    with pytest.raises(UsageError, match="BATON_OPENAI_BASE_URL"):
        get_model("openai", "x")


async def test_openai_adapter_cached_per_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    async with FakeOpenAIServer([Rule(text="pong")]) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-test")
        first = get_model("openai", "m")
        assert isinstance(first, OpenAICompatModel) and first is get_model("openai", "other")
        monkeypatch.setenv("BATON_OPENAI_BASE_URL", server.url + "/")  # BATON_ wins; same URL after strip
        assert get_model("openai", "m") is first
        monkeypatch.setenv("BATON_OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
        assert get_model("openai", "m") is not first
        from baton.messages import Message, ModelRequest

        resp = await first.complete(ModelRequest(model="m", messages=[Message.user("ping")]))
        assert resp.text == "pong"
        assert server.requests[0].headers["Authorization"] == "Bearer sk-openai-test"
        await close_models()
        assert first._session is None  # closed
        monkeypatch.delenv("BATON_OPENAI_BASE_URL")
        assert get_model("openai", "m") is not first  # a fresh instance after close


async def test_openai_defaults_to_api_openai_com_with_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-test")
    model = get_model("openai", "gpt-4o")
    assert isinstance(model, OpenAICompatModel)
    assert model.base_url == "https://api.openai.com/v1"


@pytest.mark.skipif(importlib.util.find_spec("baton.models.anthropic") is None,
                    reason="baton.models.anthropic is not written yet")
async def test_anthropic_adapter_is_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    model = get_model("anthropic", "claude-sonnet-4-6")
    assert model.provider == "anthropic"
    assert get_model("anthropic", "claude-opus-4-6") is model


def test_get_model_rejects_unknown_provider() -> None:
    with pytest.raises(UsageError, match="unknown provider"):
        get_model("scripted", "x")
