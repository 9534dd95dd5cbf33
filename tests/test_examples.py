"""Every example workflow runs end to end over real sockets against the fake Messages API."""

from __future__ import annotations

from pathlib import Path

import pytest

from baton.models.anthropic import AnthropicModel
from baton.runtime.engine import Engine
from baton.runtime.ratelimit import RateGovernor
from baton.spec import load_workflow_file
from baton.stores.memory import MemoryStore
from baton.testing import FakeAnthropicServer, Rule, json_reply, text, tool_call

ROOT = Path(__file__).resolve().parents[1]
EX = ROOT / "examples"

PLAN = {"subtasks": [
    {"id": "r1", "worker": "researcher", "instruction": "Research supply", "depends_on": []},
    {"id": "r2", "worker": "researcher", "instruction": "Research demand", "depends_on": []},
    {"id": "a1", "worker": "analyst", "instruction": "Size the market", "depends_on": ["r1", "r2"]},
    {"id": "c1", "worker": "critic", "instruction": "Check the analysis", "depends_on": ["a1"]},
], "synthesis_instructions": "Write the report."}

CASES: dict[str, tuple[str, str, list[Rule]]] = {
    "agent": ("agent/calculator.yaml", "What is 6 times 7?", [
        Rule(r"solve arithmetic[\s\S]*42", reply=text("42")),
        Rule(r"solve arithmetic", reply=tool_call("calculator", {"expression": "6*7"}))]),
    "orchestrator": ("market_report/workflow.yaml", "heat pumps", [
        Rule(r"research director", reply=json_reply(PLAN)),
        Rule(r"market researcher[\s\S]*EU sales", reply=text("- demand is subsidy-driven"), latency_s=0.2),
        Rule(r"market researcher", reply=tool_call("lookup_facts", {"topic": "heat pumps"}), latency_s=0.2),
        Rule(r"market analyst", reply=text("EUR 10bn, +8%/yr")),
        Rule(r"sceptical reviewer", reply=text("growth rate unsupported")),
        Rule(r"concise market reports", reply=text("REPORT: heat pumps"))]),
    "pipeline": ("pipeline/content.yaml", "batteries", [
        Rule(r"gather the key facts", reply=text("- fact one")),
        Rule(r"write a 120-word article", reply=text("An article.")),
        Rule(r"check an article", reply=json_reply({"valid": True, "reasons": []})),
        Rule(r"tighten an article", reply=text("HEADLINE: An article."))]),
    "fan_out": ("fan_out/reviews.yaml", "great product\nbroke after a week\nok value", [
        Rule(r"Summarise this customer review", reply=text("summary")),
        Rule(r"Group the review summaries", reply=text("themes: quality"))]),
    "router": ("router/support.yaml", "I was charged twice", [
        Rule(r"Classify the support request", reply=json_reply(
            {"route": "billing", "priority": "high", "reasoning": "charge"})),
        Rule(r"billing specialist", reply=text("Refund issued."))]),
    "consensus": ("consensus/review.yaml", "Store sessions in Redis", [
        Rule(r"weigh reviews", reply=json_reply({"consensus": "APPROVE", "confidence": 0.8, "key_agreements": ["ok"],
                                                 "key_disagreements": [], "recommendation": "ship"})),
        Rule(r"You review designs", reply=text("fine"))]),
    "refine": ("refine/essay.yaml", "Why sleep matters", [
        Rule(r"critique an essay", reply=json_reply({"approved": True, "feedback": "good"})),
        Rule(r"write and revise", reply=text("Sleep restores the brain."))]),
    "bus": ("bus/incident.yaml", "API latency spike", [
        Rule(r"You triage incidents", reply=json_reply(
            {"messages": [{"type": "diagnose", "recipient": "diagnoser", "payload": {"note": "latency"}}],
             "final": None})),
        Rule(r"find the likely cause", reply=json_reply(
            {"messages": [{"type": "fix", "recipient": "fixer", "payload": {"cause": "db"}}], "final": None})),
        Rule(r"propose a fix", reply=json_reply(
            {"messages": [{"type": "resolved", "recipient": "", "payload": {"fix": "add index"}}], "final": None}))]),
    "handoffs": ("handoffs/desk.yaml", "I want my money back", [
        Rule(r"handle refunds", reply=text("Refund done.")),
        Rule(r"greet the customer[\s\S]*Handoff to refunds recorded", reply=text("Passing you to refunds.")),
        Rule(r"greet the customer", reply=tool_call("transfer_to_refunds",
                                                     {"asked": "refund", "found": {}, "next": "refund it"}))]),
    "mcp_tools": ("mcp_tools/notes.yaml", "What latency did the load test show?", [
        Rule(r"meeting notes[\s\S]*340 ms", reply=text("p99 was 340 ms at 2,000 rps (standup-2026-03-03.txt).")),
        Rule(r"meeting notes", reply=tool_call("notes__grep_notes", {"word": "latency"}))]),
    "rag": ("rag/docs_qa.yaml", "How does resume avoid paying twice?", [
        Rule(r"from its documentation[\s\S]*\"passages\"", reply=text("Completed steps are replayed [docs/durability.md:3-6].")),
        Rule(r"from its documentation", reply=tool_call("search_docs", {"query": "resume completed steps journal"}))]),
    "fallback": ("fallback/summary.yaml", "Long text about tides.", [
        Rule(r"Check that a summary", reply=json_reply({"valid": True, "reasons": []})),
        Rule(r"Summarise the text", reply=text("Tides follow the moon."))]),
}


@pytest.fixture(scope="module")
def server():
    srv = FakeAnthropicServer(api_key="k")
    srv.start_in_thread()
    yield srv
    srv.stop_thread()


def test_every_example_has_a_case() -> None:
    files = {str(p.relative_to(EX)) for p in EX.glob("*/*.yaml")} - {"hierarchical/research_team.yaml"}
    assert files == {case[0] for case in CASES.values()}


@pytest.mark.parametrize("name", sorted(CASES))
async def test_example_runs_against_the_fake_api(name: str, server: FakeAnthropicServer, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON_STORE", f"sqlite:///{tmp_path / 'baton.db'}")  # where knowledge indexes go
    path, input_text, rules = CASES[name]
    server.reset()
    server.rules.clear()
    for r in rules:
        server.add_rule(r)
    model = AnthropicModel(base_url=server.url, api_key="k")
    store = MemoryStore()
    wf = load_workflow_file(EX / path)
    wf.rate_limits = {}  # the flagship declares tier-1 limits (50 rpm), which would serialise this test
    try:
        result = await Engine(store=store, model=model, governor=RateGovernor()).run(wf, input_text)
    finally:
        await model.aclose()
    assert result.status == "succeeded", result.error
    assert result.model_calls == len(server.requests) > 0
    assert result.cost_usd > 0
    steps = await store.load_steps(result.run_id)
    assert sum(1 for s in steps if s.kind == "model") == len(server.requests)
    if name == "orchestrator":
        # Two researchers ran concurrently (no dependency between them); the analyst saw only their outputs.
        assert server.max_concurrency >= 2
        analyst = server.requests_matching(r"market analyst")[0].body["messages"][0]["content"]
        analyst_text = analyst if isinstance(analyst, str) else analyst[0]["text"]
        assert "Result of r1" in analyst_text and "Result of r2" in analyst_text
        assert "Result of c1" not in analyst_text
        assert result.output == "REPORT: heat pumps"
    if name == "fan_out":
        assert len(server.requests_matching(r"Summarise this customer review")) == 3
    if name == "router":
        assert result.output == "Refund issued." and not server.requests_matching(r"support engineer")
    if name == "bus":
        assert result.output == {"fix": "add index"}
    if name == "handoffs":
        assert result.output["chain"] == ["receptionist", "refunds"]
    if name in ("mcp_tools", "rag"):
        # The tool really ran: its answer went back to the model.
        sent = str(server.requests[-1].body)
        assert ("standup-2026-03-03.txt: - Chen: load test" in sent) if name == "mcp_tools" else (
            "docs/durability.md:" in sent)


async def test_hierarchical_example_nests_an_orchestrator(server: FakeAnthropicServer) -> None:
    server.reset()
    server.rules.clear()
    server.add_rule(r"plan a research programme", reply=json_reply({"subtasks": [
        {"id": "t1", "worker": "market-report", "instruction": "Study heat pumps", "depends_on": []},
        {"id": "t2", "worker": "reviewer", "instruction": "Review it", "depends_on": ["t1"]}],
        "synthesis_instructions": "merge"}))
    for r in CASES["orchestrator"][2]:
        server.add_rule(r)
    server.add_rule(r"review analyses for gaps", reply=text("no gaps"))
    server.add_rule(r"merge the teams", reply=text("BRIEF"))
    model = AnthropicModel(base_url=server.url, api_key="k")
    store = MemoryStore()
    try:
        wf = load_workflow_file(EX / "hierarchical/research_team.yaml")
        result = await Engine(store=store, model=model, governor=RateGovernor()).run(wf, "heat pumps")
    finally:
        await model.aclose()
    assert result.status == "succeeded", result.error
    assert result.output == "BRIEF"
    steps = await store.load_steps(result.run_id)
    # The sub-orchestrator's steps live one level deeper, under the subtask that ran it.
    inner = [s for s in steps if s.kind == "agent" and s.name == "planner"]
    assert inner and inner[0].meta["depth"] == 2
