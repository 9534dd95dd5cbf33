"""What crosses between a Temporal workflow and its activities (no server needed): requests
and errors survive the trip as the same values and classes, and bad options are refused."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("temporalio", reason="temporalio is not installed (pip install 'baton-agents[temporal]')")

import baton  # noqa: E402
from baton.errors import BudgetExceeded, ProviderError, StepFailed, UsageError  # noqa: E402
from baton.messages import Message, ModelRequest, TextBlock, ToolChoice, ToolSpec, ToolUseBlock  # noqa: E402
from baton.runtime.retry import RetryPolicy  # noqa: E402
from baton.temporal.client import TemporalEngine, engine_from_options  # noqa: E402
from baton.temporal.codec import (  # noqa: E402
    AgentView,
    error_from_dict,
    error_to_dict,
    request_from_dict,
    request_to_dict,
)
from baton.temporal.flow import CallOptions  # noqa: E402


def test_a_model_request_survives_the_trip() -> None:
    req = ModelRequest(
        "claude-haiku-4-5",
        [Message("user", [TextBlock("hi")]), Message("assistant", [ToolUseBlock("t1", "look", {"q": 1})])],
        system=[{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral"}}],
        tools=[ToolSpec("look", "Look up", {"type": "object"}, {"type": "ephemeral"})],
        tool_choice=ToolChoice("tool", "look"), max_tokens=77, temperature=0.2, stop_sequences=["END"],
        output_schema={"type": "object"}, timeout_s=9.0, metadata={"k": "v"})
    assert request_from_dict(request_to_dict(req)) == req


def test_an_agent_view_keeps_what_the_call_path_reads() -> None:
    agent = baton.Agent("a", system="s", fallback_models=["claude-haiku-4-5"], cache_prompt=True,
                        retry=RetryPolicy(max_attempts=2), task_type="extraction")
    view = AgentView.from_dict(AgentView.of(agent).to_dict())
    assert (view.name, view.prompt_version, view.fallback_models, view.cache_prompt, view.task_type) == (
        "a", agent.prompt_version, ["claude-haiku-4-5"], True, "extraction")
    assert view.retry == RetryPolicy(max_attempts=2)


def test_errors_come_back_as_the_same_baton_class() -> None:
    budget = error_from_dict(error_to_dict(BudgetExceeded("over", limit="usd", spent=2.0, allowed=1.0)))
    assert isinstance(budget, BudgetExceeded) and str(budget) == "over"
    assert (budget.limit, budget.spent, budget.allowed) == ("usd", 2.0, 1.0)
    provider = error_from_dict(error_to_dict(ProviderError("boom", status=529, retryable=True)))
    assert isinstance(provider, ProviderError) and provider.status == 529 and provider.retryable


def test_a_payload_cannot_name_a_class_outside_the_error_tree() -> None:
    for name in ("SystemExit", "os.system", "KeyboardInterrupt", "Exception"):
        exc = error_from_dict({"type": name, "message": "x", "attrs": {"__class__": "boom"}})
        assert type(exc) is StepFailed and name in str(exc)


@pytest.mark.parametrize("options", [
    {"heartbeat_s": math.nan}, {"heartbeat_s": -1}, {"heartbeat_s": math.inf}, {"call_timeout_s": 0},
    {"max_attempts": 0}, {"max_attempts": True}, {"max_attempts": 1.5}, {"heartbeat": 3},
])
def test_odd_call_options_are_refused(options: dict[str, object]) -> None:
    with pytest.raises(UsageError, match="call option"):
        CallOptions.from_dict(options)
    with pytest.raises(UsageError):
        TemporalEngine("127.0.0.1:7233", options=options)


def test_engine_options_are_checked() -> None:
    with pytest.raises(UsageError, match="needs temporal='HOST:PORT'"):
        engine_from_options({})
    with pytest.raises(UsageError, match="unknown option 'model'"):
        engine_from_options({"temporal": "h:1", "model": object()})
    assert engine_from_options({"temporal": "h:1", "task_queue": "q"}).task_queue == "q"


async def test_an_unknown_engine_is_a_usage_error() -> None:
    async def wf(ctx: baton.RunContext, input: str) -> str:
        return input

    with pytest.raises(UsageError, match="unknown engine 'nope'"):
        await baton.run(wf, "x", engine="nope", store="memory://")


async def test_an_unreachable_temporal_records_nothing(tmp_path: object) -> None:
    from baton.temporal.devserver import free_port

    store = f"sqlite:///{tmp_path}/b.db"
    engine = TemporalEngine(f"127.0.0.1:{free_port()}", store=store)
    with pytest.raises(UsageError, match="cannot reach Temporal"):
        await engine.start("anything", "x", run_id="r1")
    from baton.stores import open_store

    st = open_store(store)
    await st.open()
    try:
        assert await st.list_runs() == []
    finally:
        await st.close()
