"""Bad model output never passes as success (issue 22).

Every case runs over HTTP: AnthropicModel -> FakeAnthropicServer, and asserts the run's
status, the error or warning text and how many requests the fake served.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

import aiohttp
import pytest

import baton
from baton.errors import UsageError
from baton.models.anthropic import AnthropicModel
from baton.observe.progress import ProgressSink
from baton.patterns.fan_out import FanOut
from baton.patterns.gates import FallbackChain
from baton.patterns.handoff import Handoffs
from baton.patterns.orchestrator import Orchestrator
from baton.patterns.pipeline import Pipeline
from baton.patterns.refine import Refine
from baton.patterns.router import Router
from baton.stores.memory import MemoryStore
from baton.testing import FakeAnthropicServer, Fault, Rule, json_reply, text, tool_call
from baton.tools import tool

ANSWER = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"],
          "additionalProperties": False}
TRANSFER = {"asked": "refund", "found": {"order": 42}, "next": "refund it"}


def agent(name: str, **kw: Any) -> baton.Agent:
    return baton.Agent(name, system=f"You are {name}.", model="claude-haiku-4-5", **kw)


def who(req: Any) -> str:
    m = re.match(r"You are ([\w-]+)\.", str((req.body or {}).get("system") or ""))
    return m.group(1) if m else "?"


def served(server: FakeAnthropicServer) -> list[str]:
    """Who sent each request the fake answered (all must have been answered with 200)."""
    assert all(r.status == 200 for r in server.requests), [(r.status, r.error) for r in server.requests]
    return [who(r) for r in server.requests]



async def run(workflow: Any, input: Any, model: AnthropicModel, **kw: Any) -> baton.RunResult:
    return await baton.run(workflow, input, store=MemoryStore(), model=model, **kw)


def single(a: baton.Agent) -> Any:
    async def workflow(ctx: baton.RunContext, x: Any) -> Any:
        return (await ctx.call(a, x)).output

    return workflow


# --- stop_reason: max_tokens -------------------------------------------------------------------

LONG = " ".join(f"word{i}" for i in range(40))  # 279 characters


async def test_a_cut_off_text_answer_is_continued_into_the_full_answer(server: FakeAnthropicServer,
                                                                        model: AnthropicModel) -> None:
    server.add_rule(r"^You are writer", reply=text(LONG))
    result = await run(single(agent("writer", max_tokens=30)), "write", model)  # 120 characters per call
    assert result.status == "succeeded", result.error
    assert result.output == LONG
    assert served(server) == ["writer"] * 3  # the answer and two continuations
    stops = [r.body and r.body["messages"][-1]["role"] for r in server.requests]
    assert stops == ["user", "assistant", "assistant"]  # continuations send the cut-off text as a prefill
    assert result.model_calls == 3


async def test_a_provider_without_prefill_is_asked_to_continue() -> None:
    from baton.agent import CONTINUE_NOTE
    from baton.models.openai_compat import OpenAICompatModel
    from baton.testing.fake_openai import FakeOpenAIServer
    from baton.testing.fake_openai import Rule as OpenAIRule

    async with FakeOpenAIServer([OpenAIRule(match="Continue exactly where it stopped", text=" and the end."),
                                 OpenAIRule(text="the beginning ", finish_reason="length")]) as srv:
        chat = OpenAICompatModel(base_url=srv.url, api_key="k")
        try:
            result = await run(single(agent("writer")), "write", chat)  # type: ignore[arg-type]
        finally:
            await chat.aclose()
    assert result.status == "succeeded", result.error
    assert result.output == "the beginning and the end."
    assert len(srv.requests) == 2
    last = srv.requests[1].body["messages"][-2:]
    assert [m["role"] for m in last] == ["assistant", "user"] and last[0]["content"] == "the beginning"
    assert last[1]["content"] == CONTINUE_NOTE


async def test_an_answer_still_cut_off_after_the_continuations_fails_naming_agent_and_max_tokens(
        server: FakeAnthropicServer, model: AnthropicModel) -> None:
    server.add_rule(r"^You are writer", reply=text(LONG * 4))
    result = await run(single(agent("writer", max_tokens=30)), "write", model)
    assert result.status == "failed"
    assert result.error is not None and result.error["type"] == "OutputTruncated"
    assert "agent 'writer' stopped at its max_tokens (30)" in result.error["message"]
    assert "raise max_tokens" in result.error["message"]
    assert served(server) == ["writer"] * 3


async def test_a_cut_off_structured_answer_is_re_asked(server: FakeAnthropicServer, model: AnthropicModel) -> None:
    server.add_rule(r"^You are extractor", reply=json_reply({"answer": "x" * 400}), times=1)
    server.add_rule(r"^You are extractor", reply=json_reply({"answer": "short"}))
    result = await run(single(agent("extractor", output=ANSWER, max_tokens=40)), "extract", model)
    assert result.status == "succeeded", result.error
    assert result.output == {"answer": "short"}
    assert served(server) == ["extractor", "extractor"]
    feedback = server.requests[1].body["messages"][-1]["content"][0]
    assert feedback["type"] == "tool_result" and feedback["is_error"]
    assert "cut off at the output limit (40 tokens)" in feedback["content"]


async def test_a_structured_answer_cut_off_every_time_fails_as_truncated(server: FakeAnthropicServer,
                                                                         model: AnthropicModel) -> None:
    server.add_rule(r"^You are extractor", reply=json_reply({"answer": "x" * 400}))
    result = await run(single(agent("extractor", output=ANSWER, max_tokens=40, output_retries=1)), "x", model)
    assert result.status == "failed" and result.error is not None
    assert result.error["type"] == "OutputTruncated"
    assert "agent 'extractor': the answer was cut off at its max_tokens (40) after 2 attempts" in (
        result.error["message"])
    assert served(server) == ["extractor", "extractor"]


async def test_a_fan_out_never_splits_a_cut_off_list(server: FakeAnthropicServer, model: AnthropicModel) -> None:
    questions = "\n".join(f"question {i}?" for i in range(30))
    server.add_rule(r"^You are splitter", reply=text(questions))
    server.add_rule(r"^You are answerer", reply=text("answer"))
    flow = Pipeline([agent("splitter", max_tokens=20), FanOut(each=agent("answerer"))])
    result = await run(flow, "list questions", model)
    assert result.status == "failed" and result.error is not None
    assert "OutputTruncated" in result.error["message"] and "splitter" in result.error["message"]
    assert served(server) == ["splitter"] * 3  # no item of the partial list was called


async def test_a_full_context_window_fails_at_once(server: FakeAnthropicServer, model: AnthropicModel) -> None:
    server.add_rule(r"^You are reader", reply=text("partial", stop_reason="model_context_window_exceeded"))
    result = await run(single(agent("reader")), "a long document", model)
    assert result.status == "failed" and result.error is not None and result.error["type"] == "OutputTruncated"
    assert "agent 'reader': the conversation filled the model's context window" in result.error["message"]
    assert served(server) == ["reader"]


# --- stop_reason: refusal ------------------------------------------------------------------------


async def test_a_refusal_is_an_error_of_its_own(server: FakeAnthropicServer, model: AnthropicModel) -> None:
    server.add_rule(r"^You are helper", reply=text("I can't help with that.", stop_reason="refusal"))
    result = await run(single(agent("helper")), "x", model)
    assert result.status == "failed" and result.error is not None
    assert result.error["type"] == "ModelRefused"
    assert result.error["message"] == ("agent 'helper' was refused by the model (stop_reason refusal) on "
                                       "claude-haiku-4-5: I can't help with that.")
    assert served(server) == ["helper"]


async def test_a_refusal_goes_to_the_fallback_model(server: FakeAnthropicServer, model: AnthropicModel) -> None:
    server.add_rule(Rule(r"^You are helper", reply=text("No.", stop_reason="refusal"), model="claude-haiku-4-5"))
    server.add_rule(r"^You are helper", reply=text("Here you go."))
    result = await run(single(agent("helper", fallback_models=["claude-sonnet-4-6"])), "x", model)
    assert result.status == "succeeded", result.error
    assert result.output == "Here you go."
    assert [r.body["model"] for r in server.requests] == ["claude-haiku-4-5", "claude-sonnet-4-6"]


async def test_a_refusal_goes_to_the_next_agent_of_a_fallback_chain(server: FakeAnthropicServer,
                                                                    model: AnthropicModel) -> None:
    server.add_rule(r"^You are strict", reply=text("No.", stop_reason="refusal"))
    server.add_rule(r"^You are lenient", reply=text("Done."))
    result = await run(FallbackChain([agent("strict"), agent("lenient")]), "x", model)
    assert result.status == "succeeded" and result.output == "Done."
    assert served(server) == ["strict", "lenient"]


# --- empty answers -------------------------------------------------------------------------------


async def test_an_empty_answer_is_re_asked_then_fails_naming_the_agent(server: FakeAnthropicServer,
                                                                       model: AnthropicModel) -> None:
    server.add_rule(r"^You are", reply=text(""))
    flow = Pipeline([agent("a"), agent("b"), agent("c")])
    result = await run(flow, "x", model)
    assert result.status == "failed" and result.error is not None
    assert "stage 1 of 3 (a) failed" in result.error["message"]
    assert "agent 'a' gave an empty answer after 3 attempts" in result.error["message"]
    assert served(server) == ["a", "a", "a"]  # output_retries 2: two re-asks, stages 2 and 3 never ran
    reask = server.requests[1].body["messages"]
    assert len(reask) == 1 and reask[0]["content"][-1]["text"].startswith("Your answer was empty.")


async def test_an_empty_answer_then_a_real_one_succeeds(server: FakeAnthropicServer, model: AnthropicModel) -> None:
    server.add_rule(r"^You are a", reply=text("   "), times=1)
    server.add_rule(r"^You are a", reply=text("real answer"))
    result = await run(single(agent("a")), "x", model)
    assert result.status == "succeeded" and result.output == "real answer"
    assert served(server) == ["a", "a"]


# --- schema errors are not hidden behind max_turns --------------------------------------------------


async def test_schema_errors_are_reported_when_output_retries_outlast_max_turns(
        server: FakeAnthropicServer, model: AnthropicModel) -> None:
    server.add_rule(r"^You are extractor", reply=json_reply({"wrong": 1}))
    a = agent("extractor", output=ANSWER, max_turns=3, output_retries=10)
    result = await run(single(a), "x", model)
    assert result.status == "failed" and result.error is not None
    assert result.error["type"] == "ModelBehaviorError"
    message = result.error["message"]
    assert "agent 'extractor' returned output that does not match its schema in all 3 turns (max_turns)" in message
    assert "'answer' is a required property" in message and "used all" not in message
    assert served(server) == ["extractor"] * 3


# --- repetition -------------------------------------------------------------------------------------


async def test_identical_tool_calls_are_told_once_then_stopped(server: FakeAnthropicServer,
                                                               model: AnthropicModel) -> None:
    ran: list[str] = []

    @tool
    def lookup(q: str) -> str:
        """Look something up."""
        ran.append(q)
        return "nothing found"

    server.add_rule(r"^You are searcher", reply=tool_call("lookup", {"q": "same"}))
    a = agent("searcher", tools=[lookup], max_turns=100)
    result = await run(single(a), "find it", model)
    assert result.status == "failed" and result.error is not None
    assert result.error["type"] == "ToolLoopDetected"
    assert ("agent 'searcher' is looping: it called tool 'lookup' with the same input 4 times in a row, and "
            "again after being told (max_repeats 3)") == result.error["message"]
    assert served(server) == ["searcher"] * 4 and ran == ["same", "same"]
    told = server.requests[3].body["messages"][-1]["content"][0]
    assert told["is_error"] and "Not run: you called lookup with exactly the same input 3 times" in told["content"]


async def test_a_model_that_stops_repeating_after_the_note_finishes(server: FakeAnthropicServer,
                                                                     model: AnthropicModel) -> None:
    @tool
    def lookup(q: str) -> str:
        """Look something up."""
        return "nothing found"

    server.add_rule(r"Not run: you called lookup", reply=text("Nothing to find."))
    server.add_rule(r"^You are searcher", reply=tool_call("lookup", {"q": "same"}))
    result = await run(single(agent("searcher", tools=[lookup])), "find it", model)
    assert result.status == "succeeded" and result.output == "Nothing to find."
    assert served(server) == ["searcher"] * 4


# --- handoffs -----------------------------------------------------------------------------------


async def test_a_transfer_ends_the_turn_and_a_repeated_transfer_cannot_starve_the_peer(
        server: FakeAnthropicServer, model: AnthropicModel) -> None:
    # The triage model would call the transfer again on every turn it is given.
    server.add_rule(r"^You are triage", reply=tool_call("transfer_to_billing", TRANSFER))
    server.add_rule(r"^You are billing", reply=text("Refund issued."))
    desk = Handoffs({"triage": agent("triage"), "billing": agent("billing")}, start="triage")
    result = await run(desk, "charged twice", model)
    assert result.status == "succeeded", result.error
    assert result.output["chain"] == ["triage", "billing"] and result.output["output"] == "Refund issued."
    assert served(server) == ["triage", "billing"]  # no closing call after the transfer


# --- refine ------------------------------------------------------------------------------------


def _refine_rules(server: FakeAnthropicServer) -> None:
    server.add_rule(r"^You are critic", reply=json_reply({"approved": False, "feedback": "cite a source"}))
    server.add_rule(r"^You are writer", reply=text("a draft"))


async def test_refine_says_when_the_critics_never_approved(server: FakeAnthropicServer,
                                                           model: AnthropicModel) -> None:
    _refine_rules(server)
    result = await run(Refine(agent("writer"), [agent("critic")], max_rounds=2, name="essay"), "x", model)
    assert result.status == "succeeded" and result.output == "a draft"
    assert result.warnings == [{"source": "refine 'essay'", "code": "not_approved", "message":
                                "refine 'essay': the critics did not approve the draft after 2 rounds (critic: cite a "
                                "source); the last draft was returned"}]
    assert result.to_json()["warnings"] == result.warnings
    assert served(server) == ["writer", "critic", "writer", "critic"]


async def test_refine_with_require_approval_fails_without_approval(server: FakeAnthropicServer,
                                                                   model: AnthropicModel) -> None:
    _refine_rules(server)
    flow = Refine(agent("writer"), [agent("critic")], max_rounds=2, name="essay", require_approval=True)
    result = await run(flow, "x", model)
    assert result.status == "failed" and result.error is not None and result.error["type"] == "StepFailed"
    assert "the critics did not approve the draft after 2 rounds (critic: cite a source)" in result.error["message"]
    assert "require_approval" in result.error["message"]
    assert served(server) == ["writer", "critic", "writer", "critic"]


async def test_a_resumed_run_keeps_the_refine_warning(server: FakeAnthropicServer, model: AnthropicModel) -> None:
    _refine_rules(server)
    server.add_rule(r"^You are publisher", fault=Fault.status(400), times=1)
    server.add_rule(r"^You are publisher", reply=text("published"))
    flow = Pipeline([Refine(agent("writer"), [agent("critic")], max_rounds=1, name="essay"), agent("publisher")])
    store = MemoryStore()
    first = await baton.run(flow, "x", store=store, model=model)
    assert first.status == "failed" and [w["code"] for w in first.warnings] == ["not_approved"]
    second = await baton.resume(first.run_id, flow, store=store, model=model)
    assert second.status == "succeeded" and second.output == "published"
    assert second.warnings == first.warnings
    assert (await store.get_run(first.run_id)).metadata["warnings"] == first.warnings
    assert [who(r) for r in server.requests] == ["writer", "critic", "publisher", "publisher"]


# --- fan-out over model output -----------------------------------------------------------------


async def test_a_fan_out_over_a_long_model_list_stops_at_max_items(server: FakeAnthropicServer,
                                                                    model: AnthropicModel) -> None:
    server.add_rule(r"^You are splitter", reply=text("\n".join(f"item {i}" for i in range(150))))
    server.add_rule(r"^You are worker", reply=text("done"))
    flow = Pipeline([agent("splitter", max_tokens=4096), FanOut(each=agent("worker"), name="items")])
    result = await run(flow, "split", model)
    assert result.status == "failed" and result.error is not None
    assert ("fan-out 'items': the input has 150 items, more than max_items (100); nothing was called"
            in result.error["message"])
    assert served(server) == ["splitter"]
    ok = await run(Pipeline([agent("splitter", max_tokens=4096), FanOut(each=agent("worker"), max_items=150)]),
                   "split", model)
    assert ok.status == "succeeded" and len(ok.output) == 150


# --- orchestrator: plans, names, messages --------------------------------------------------------


def _plan(n: int, worker: str) -> dict[str, Any]:
    return {"subtasks": [{"id": f"s{i}", "worker": worker, "instruction": "do it", "depends_on": []}
                         for i in range(n)], "synthesis_instructions": "combine"}


async def test_a_huge_invalid_plan_gives_a_short_error(server: FakeAnthropicServer, model: AnthropicModel) -> None:
    server.add_rule(r"^You are planner", reply=json_reply(_plan(1000, "ghost")))
    orch = Orchestrator(agent("planner", max_tokens=200_000), [agent("researcher")], max_replans=0)
    result = await run(orch, "task", model)
    assert result.status == "failed" and result.error is not None and result.error["type"] == "PlanError"
    assert "the plan has 1000 subtasks; the limit is 10" in result.error["message"]
    assert "... and 991 more problems" in result.error["message"]
    assert len(result.error["errors"]) == 11
    assert result.error["raw_output"]["subtasks_total"] == 1000 and len(result.error["raw_output"]["subtasks"]) == 5
    assert len(json.dumps(result.error)) < 4000
    assert served(server) == ["planner"]


async def test_progress_says_re_planning_only_when_it_re_plans(server: FakeAnthropicServer,
                                                                model: AnthropicModel) -> None:
    server.add_rule(r"^You are planner", reply=json_reply(_plan(1, "ghost")))
    server.add_rule(r"^You are researcher", reply=text("found"))
    for repair, expected in ((False, ["plan invalid (attempt 1 of 2); re-planning",
                                      "plan invalid (attempt 2 of 2); giving up"]),
                             (True, ["plan invalid (attempt 1 of 2); re-planning",
                                     "plan invalid (attempt 2 of 2); repairing it", "plan repaired (1 changes)"])):
        out = io.StringIO()
        orch = Orchestrator(agent("planner"), [agent("researcher")], max_replans=1, repair_plan=repair)
        result = await run(orch, "task", model, sinks=[ProgressSink(out, tty=False)])
        assert result.status == ("succeeded" if repair else "failed")
        lines = [line.split("] ", 1)[1] for line in out.getvalue().splitlines() if "plan " in line]
        assert lines == expected


async def test_worker_names_and_routes_follow_one_rule(server: FakeAnthropicServer, model: AnthropicModel) -> None:
    server.add_rule(r"^You are planner", reply=json_reply(_plan(1, "  Researcher ")))
    server.add_rule(r"^You are classifier", reply=json_reply({"route": " BILLING ", "priority": "normal",
                                                              "reasoning": "money"}))
    server.add_rule(r"^You are researcher", reply=text("found"))
    server.add_rule(r"^You are billing", reply=text("refunded"))
    orch = await run(Orchestrator(agent("planner"), [agent("researcher")]), "task", model)
    assert orch.status == "succeeded", orch.error
    assert orch.output == {"s0": "found"}
    routed = await run(Router(agent("classifier"), {"billing": agent("billing")}), "charged twice", model)
    assert routed.status == "succeeded" and routed.output == "refunded"
    assert served(server) == ["planner", "researcher", "classifier", "billing"]
    with pytest.raises(UsageError, match="'Tech' and 'tech' differ only in case or spacing"):
        Router(agent("classifier"), {"Tech": agent("a"), "tech": agent("b")})
    with pytest.raises(UsageError, match="differ only in case or spacing"):
        Orchestrator(agent("planner"), {"Writer": agent("a"), "writer": agent("b")})


async def test_bus_names_follow_the_same_rule(server: FakeAnthropicServer, model: AnthropicModel) -> None:
    from baton.patterns.bus import Bus

    async def planner(ctx: baton.RunContext, msg: Any) -> list[dict[str, Any]]:
        return [{"type": " DRAFT ", "recipient": "Writer", "payload": "outline"}]

    server.add_rule(r"^You are writer", reply=json_reply({"messages": [{"type": "report", "recipient": "",
                                                                        "payload": "the report"}], "final": None}))
    bus = Bus({"planner": planner, "writer": agent("writer")}, {"planner": ["task"], "writer": ["draft"]},
              start={"type": "task", "to": "planner"}, terminal=["report"])
    result = await run(bus, "x", model)
    assert result.status == "succeeded", result.error
    assert result.output == "the report"
    assert served(server) == ["writer"]


# --- budget message --------------------------------------------------------------------------------


async def test_the_budget_message_says_what_was_spent_and_what_the_next_call_needed(
        server: FakeAnthropicServer, model: AnthropicModel) -> None:
    server.add_rule(r"^You are a", reply=text("x" * 240))  # 60 output tokens
    flow = Pipeline([agent("a", max_tokens=100), agent("b", max_tokens=100)])
    result = await run(flow, "x", model, limits=baton.Limits(budget_output_tokens=150))
    assert result.status == "budget_exceeded" and result.error is not None
    assert result.error["message"] == (
        "output_tokens budget exceeded: 60 spent by 1 finished call; the next call could take up to 100 more "
        "(estimated input plus max_tokens), over the limit of 150; it was not sent")
    assert served(server) == ["a"]
    calls = await run(flow, "x", model, limits=baton.Limits(max_model_calls=1))
    assert calls.status == "budget_exceeded" and calls.error is not None
    assert calls.error["message"] == ("model_calls limit reached: 1 finished call and 0 in flight of 1 allowed; "
                                      "the next call was not sent")
    assert served(server) == ["a", "a"]


# --- the fake API behaves like the real one ----------------------------------------------------------


async def _post(server: FakeAnthropicServer, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    async with aiohttp.ClientSession() as s, s.post(f"{server.url}/v1/messages", json=body, headers=headers) as r:
        return r.status, await r.json()


async def test_the_fake_answers_an_array_tool_input_with_a_400_like_the_api(server: FakeAnthropicServer) -> None:
    body = {"model": "m", "max_tokens": 10, "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": [1, 2]}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "x"}]}]}
    status, data = await _post(server, body)
    assert status == 400 and data["error"]["type"] == "invalid_request_error"
    assert data["error"]["message"] == "messages.1.content.0.input: Input should be a valid dictionary"


async def test_an_array_answer_is_re_asked_without_breaking_the_conversation(server: FakeAnthropicServer,
                                                                             model: AnthropicModel) -> None:
    server.add_rule(r"^You are extractor", reply=json_reply(["not", "an", "object"]), times=1)
    server.add_rule(r"^You are extractor", reply=json_reply({"answer": "ok"}))
    result = await run(single(agent("extractor", output=ANSWER)), "x", model)
    assert result.status == "succeeded" and result.output == {"answer": "ok"}
    assert served(server) == ["extractor", "extractor"]


async def test_the_fake_honours_max_tokens_for_json_replies(server: FakeAnthropicServer) -> None:
    server.add_rule(reply=json_reply({"answer": "x" * 5000}))
    tools = [{"name": "final_answer", "description": "d", "input_schema": ANSWER}]
    status, data = await _post(server, {"model": "m", "max_tokens": 512, "tools": tools,
                                        "tool_choice": {"type": "tool", "name": "final_answer"},
                                        "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200 and data["stop_reason"] == "max_tokens"
    assert data["usage"]["output_tokens"] == 512
    assert data["content"] == [{"type": "tool_use", "id": data["content"][0]["id"], "name": "final_answer",
                                "input": {}}]


# --- the command line: --json warnings, stderr, baton show, progress, validate ----------------------

WORKFLOW = """version: 1
name: {name}
agents:
  writer: {{model: claude-haiku-4-5, system: "You are writer.", max_tokens: {max_tokens}}}
  critic: {{model: claude-haiku-4-5, system: "You are critic."}}
workflow: {workflow}
"""


@pytest.fixture
def threaded() -> Any:
    srv = FakeAnthropicServer(api_key="test-key")
    srv.start_in_thread()
    yield srv
    srv.stop_thread()


def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], server: FakeAnthropicServer,
        tmp_path: Any, *args: str) -> tuple[int, str, str]:
    from baton.cli.main import main

    for key in ("BATON_PROVIDER", "BATON_CACHE", "BATON_RATE_LIMIT_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    monkeypatch.setenv("BATON_STORE", f"sqlite:///{tmp_path}/runs.db")
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_reports_an_unapproved_draft_in_json_stderr_and_show(threaded: FakeAnthropicServer, tmp_path: Any,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    _refine_rules(threaded)
    wf = tmp_path / "essay.yaml"
    wf.write_text(WORKFLOW.format(name="essay", max_tokens=1024,
                                  workflow="{pattern: refine, drafter: writer, critics: [critic], max_rounds: 1}"))
    code, out, err = cli(monkeypatch, capsys, threaded, tmp_path, "run", str(wf), "--input", "x", "--json")
    assert code == 0
    result = json.loads(out)
    message = ("refine 'essay': the critics did not approve the draft after 1 round (critic: cite a source); "
               "the last draft was returned")
    assert result["status"] == "succeeded" and result["warnings"] == [
        {"source": "refine 'essay'", "code": "not_approved", "message": message}]
    assert f"baton: warning: {message}" in err and "warning from refine 'essay': not_approved" in err
    assert len(threaded.requests) == 2
    code, shown, _ = cli(monkeypatch, capsys, threaded, tmp_path, "show", result["run_id"])
    assert code == 0 and f"  warning: {message}" in shown
    code, shown_json, _ = cli(monkeypatch, capsys, threaded, tmp_path, "show", result["run_id"], "--json")
    assert json.loads(shown_json)["warnings"][0]["code"] == "not_approved"

    wf.write_text(wf.read_text().replace("max_rounds: 1", "max_rounds: 1, require_approval: true"))
    code, out, err = cli(monkeypatch, capsys, threaded, tmp_path, "run", str(wf), "--input", "x", "--json")
    assert code == 1 and json.loads(out)["error"]["type"] == "StepFailed"
    assert len(threaded.requests) == 4


def test_cli_shows_the_stop_reason_in_progress_and_show(threaded: FakeAnthropicServer, tmp_path: Any,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    threaded.add_rule(r"^You are writer", reply=text(LONG))
    wf = tmp_path / "one.yaml"
    wf.write_text(WORKFLOW.format(name="one", max_tokens=30, workflow="{pattern: agent, agent: writer}"))
    code, out, err = cli(monkeypatch, capsys, threaded, tmp_path, "run", str(wf), "--input", "x", "--json")
    assert code == 0 and json.loads(out)["output"] == LONG
    assert err.count("agent writer: model claude-haiku-4-5 stopped: max_tokens") == 2
    assert len(threaded.requests) == 3
    code, shown, _ = cli(monkeypatch, capsys, threaded, tmp_path, "show", json.loads(out)["run_id"])
    assert shown.count("stop=max_tokens") == 2 and shown.count("stop=end_turn") == 1

    wf.write_text(WORKFLOW.format(name="one", max_tokens=5, workflow="{pattern: agent, agent: writer}"))
    code, out, err = cli(monkeypatch, capsys, threaded, tmp_path, "run", str(wf), "--input", "x")
    assert code == 1 and out == ""
    assert ("baton: OutputTruncated: agent 'writer' stopped at its max_tokens (5) and was still cut off after 2 "
            "continuation(s); raise max_tokens for this agent") in err
    assert len(threaded.requests) == 6


def test_validate_prints_the_run_ceiling_and_bounds_a_fan_out_by_max_items(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        threaded: FakeAnthropicServer) -> None:
    wf = tmp_path / "fan.yaml"
    wf.write_text(WORKFLOW.format(name="fan", max_tokens=100,
                                  workflow="{pattern: fan_out, each: {agent: writer}, max_items: 20}"))
    code, out, _ = cli(monkeypatch, capsys, threaded, tmp_path, "validate", str(wf), "--json")
    report = json.loads(out)
    assert code == 0 and report["max_model_calls"] == 1000
    assert report["worst_case"]["model_calls"] == 200 and not report["worst_case"]["per_input_item"]  # 20 x 10 turns
    code, out, _ = cli(monkeypatch, capsys, threaded, tmp_path, "validate", str(wf))
    assert "run ceiling: 1000 model calls (limits.max_model_calls)" in out
