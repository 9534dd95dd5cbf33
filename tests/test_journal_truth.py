"""The journal is the truth (issue 13): steps are stored exactly as they happened, so a
resumed run sees what the uninterrupted one saw; redaction belongs to the sinks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import baton
from baton.models.anthropic import AnthropicModel
from baton.observe.redact import clear_secrets, register_secret
from baton.testing import FakeAnthropicServer, Rule, json_reply

KEY = "sk-ant-test-journal-truth"
ENV_LIKE = "DATABASE_URL=postgresql://app:hunter2hunter2@db:5432/app TOKEN=tok-registered-1234"
ANSWER = {"secret": 42, "note": ENV_LIKE}

extractor = baton.Agent("extractor", system="extract", model="claude-haiku-4-5", max_tokens=256, output={
    "type": "object", "required": ["secret", "note"],
    "properties": {"secret": {"type": "integer"}, "note": {"type": "string"}}})
armed = {"fail": False}


def _maybe_fail() -> str:
    if armed["fail"]:
        armed["fail"] = False
        raise RuntimeError("crash after the model call")
    return "checked"


async def extract(ctx: baton.RunContext, text: str) -> Any:
    found = await ctx.call(extractor, text)
    await ctx.step("check", _maybe_fail)
    return found.output


@pytest.fixture(autouse=True)
def _registered_secret():
    register_secret("tok-registered-1234")  # as ``register_env_secrets`` does for *_TOKEN variables
    yield
    clear_secrets()


async def test_resumed_run_sees_exactly_what_the_uninterrupted_run_saw(tmp_path: Path) -> None:
    async with FakeAnthropicServer([Rule(reply=json_reply(ANSWER))]) as server:
        model = AnthropicModel(api_key=KEY, base_url=server.url)
        store = f"sqlite:///{tmp_path / 'runs.db'}"
        try:
            whole = await baton.run(extract, "find it", store=store, model=model)
            armed["fail"] = True
            first = await baton.run(extract, "find it", store=store, model=model)
            assert first.status == "failed"
            resumed = await baton.resume(first.run_id, extract, store=store, model=model)
        finally:
            await model.aclose()
        assert len(server.requests) == 2  # the resumed run replayed the call from the journal
    assert whole.status == resumed.status == "succeeded"
    assert whole.output == ANSWER
    assert resumed.output == whole.output  # not {"secret": "[REDACTED]", ...}
    assert isinstance(resumed.output["secret"], int)
