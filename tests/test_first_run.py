"""What the first run relies on, without the model: the grammar-bound plan, the researcher's
forced first tool call, the writer's sections, the repair event and the end-of-run summary."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import pytest

import baton
from baton.errors import UsageError
from baton.messages import ToolChoice
from baton.models.json_grammar import compile_grammar, sections_grammar
from baton.observe import events as ev
from baton.observe.events import Event
from baton.observe.progress import RunTally, end_of_run
from baton.patterns.orchestrator import Orchestrator, example_plan, grammar_plan_schema, validate_plan
from baton.stores.memory import MemoryStore
from baton.testing import Rule, ScriptedModel, json_reply, text, tool_call

WORKERS = ["researcher", "analyst", "critic"]
GOOD = {"subtasks": [
    {"id": "s1", "worker": "researcher", "instruction": "Find the main makers", "depends_on": []},
    {"id": "s2", "worker": "analyst", "instruction": "Estimate the market size", "depends_on": []},
    {"id": "s3", "worker": "critic", "instruction": "Check both for weak claims", "depends_on": ["s1", "s2"]},
], "synthesis_instructions": "Write the report"}


class GrammarBoundModel(ScriptedModel):
    """A scripted stand-in for the local model: it says it decodes under a grammar."""

    grammar_bound = True


def _team(**orchestrator: Any) -> Orchestrator:
    lookup = baton.tool(lambda topic: f"notes on {topic}", name="lookup_facts", description="Notes on a topic.")
    workers = {
        "researcher": baton.Agent("researcher", system="You research.", tools=[lookup], tool_choice="any",
                                  description="Gathers facts."),
        "analyst": baton.Agent("analyst", system="You analyse.", description="Sizes the market."),
        "critic": baton.Agent("critic", system="You review.", description="Finds weak claims."),
    }
    writer = baton.Agent("writer", system="You write reports.", sections=["Summary", "Market", "Risks", "Next steps"])
    return Orchestrator(baton.Agent("planner", system="You plan."), workers, writer, **orchestrator)


def _rules(plan: dict[str, Any]) -> list[Rule]:
    return [Rule(r"You plan", reply=json_reply(plan)),
            Rule(r"You research[\s\S]*notes on", reply=text("- facts")),
            Rule(r"You research", reply=tool_call("lookup_facts", {"topic": "batteries"})),
            Rule(r"You analyse", reply=text("big")), Rule(r"You review", reply=text("weak: size")),
            Rule(r"You write reports", reply=text("## Summary\n- ok"))]


def test_grammar_plan_schema_admits_only_small_valid_dags() -> None:
    schema = grammar_plan_schema(WORKERS, 4, 3)
    jsonschema.validate(GOOD, schema)
    assert validate_plan(GOOD, WORKERS, 4) == []
    bad = [
        ("unknown worker", {**GOOD["subtasks"][0], "worker": "writer"}, 0),
        ("a later id first", {**GOOD["subtasks"][0], "id": "s2"}, 0),
        ("the second depends on the first", {**GOOD["subtasks"][1], "depends_on": ["s1"]}, 1),
        ("a dependency on itself", {**GOOD["subtasks"][2], "depends_on": ["s3"]}, 2),
        ("a later subtask on nothing", {**GOOD["subtasks"][2], "depends_on": []}, 2),
    ]
    for why, item, at in bad:
        plan = json.loads(json.dumps(GOOD))
        plan["subtasks"][at] = item
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(plan, schema)
            pytest.fail(why)
    with pytest.raises(jsonschema.ValidationError):  # fewer than min_subtasks
        jsonschema.validate({**GOOD, "subtasks": GOOD["subtasks"][:2]}, schema)
    grammar = compile_grammar(schema, token_budget=600)
    assert '("," root-value-subtasks-3-object)?' in grammar.gbnf  # the fourth is optional, the third is not
    assert grammar.max_chars < 1200


def test_example_plan_is_valid_under_its_own_schema() -> None:
    example = example_plan({"researcher": "Gathers facts.", "analyst": "Sizes it.", "critic": "Checks it."}, 4)
    jsonschema.validate(example, grammar_plan_schema(WORKERS, 4, 3))
    assert [s["worker"] for s in example["subtasks"]] == ["researcher", "researcher", "analyst", "critic"]


def test_sections_grammar_is_bounded_and_names_every_heading() -> None:
    g = sections_grammar(["Summary", "Market", "Risks", "Next steps"])
    for heading in ("## Summary\\n", "\\n\\n## Market\\n", "\\n\\n## Risks\\n", "\\n\\n## Next steps\\n"):
        assert heading in g.gbnf
    assert 'line ::= "- " [A-Z]' in g.gbnf and '{0,2}' in g.gbnf and g.gbnf.rstrip().endswith('"."')
    assert g.max_chars < 1600
    with pytest.raises(UsageError):
        sections_grammar([])


async def test_grammar_bound_planner_gets_the_positional_schema_and_an_example() -> None:
    model = GrammarBoundModel(_rules(GOOD))
    result = await baton.run(_team(min_subtasks=3, max_subtasks=4), "solid-state batteries",
                             store=MemoryStore(), model=model)
    assert result.status == "succeeded", result.error
    plan_request = model.requests[0]
    [final] = [t for t in plan_request.tools if t.name == "final_answer"]
    assert final.input_schema == grammar_plan_schema(WORKERS, 4, 3)
    prompt = plan_request.messages[0].content[0].text
    assert "Example of a plan's shape" in prompt and '"worker":"researcher"' in prompt


async def test_claude_planner_keeps_the_plain_schema_and_no_example() -> None:
    model = ScriptedModel(_rules({**GOOD, "subtasks": [{**s, "id": f"x{i}", "depends_on": [f"x{i - 2}"] if i == 2
                                                        else []} for i, s in enumerate(GOOD["subtasks"])]}))
    result = await baton.run(_team(min_subtasks=3, max_subtasks=4), "solid-state batteries",
                             store=MemoryStore(), model=model)
    assert result.status == "succeeded", result.error
    plan_request = model.requests[0]
    [final] = [t for t in plan_request.tools if t.name == "final_answer"]
    subtasks = final.input_schema["properties"]["subtasks"]
    assert "prefixItems" not in subtasks and subtasks["minItems"] == 3  # free ids; min_subtasks still said
    assert "Example of a plan's shape" not in plan_request.messages[0].content[0].text


async def test_first_turn_tool_choice_and_sections_reach_the_model() -> None:
    model = GrammarBoundModel(_rules(GOOD))
    result = await baton.run(_team(min_subtasks=3, max_subtasks=4), "solid-state batteries",
                             store=MemoryStore(), model=model)
    assert result.status == "succeeded", result.error
    research = [r for r in model.requests if r.system == "You research."]
    assert [r.tool_choice for r in research] == [ToolChoice("any"), ToolChoice("auto")]  # forced once, then free
    [write] = [r for r in model.requests if isinstance(r.system, str) and r.system.startswith("You write reports")]
    assert write.metadata == {"sections": ["Summary", "Market", "Risks", "Next steps"]}
    assert "## Summary, ## Market, ## Risks, ## Next steps" in str(write.system)


def test_tool_choice_must_name_a_tool_the_agent_has() -> None:
    with pytest.raises(UsageError, match="tool_choice 'search'"):
        baton.Agent("a", tool_choice="search")
    assert baton.Agent("a", tool_choice="auto").tool_choice == "auto"


async def test_repair_as_last_resort_is_an_event() -> None:
    seen: list[Event] = []

    class Sink:
        def handle(self, event: Event) -> None:
            seen.append(event)

        def close(self) -> None:
            pass

    bad = {"subtasks": [{"id": "a", "worker": "nobody", "instruction": "x", "depends_on": ["zz"]}],
           "synthesis_instructions": ""}
    model = ScriptedModel(_rules(bad))
    team = _team(max_subtasks=4, max_replans=1, repair_plan=True)
    result = await baton.run(team, "t", store=MemoryStore(), model=model, sinks=[Sink()])
    assert result.status == "succeeded", result.error
    [repaired] = [e for e in seen if e.kind == ev.PLAN_REPAIRED]
    assert repaired.data["attempts"] == 2 and any("nobody" in c for c in repaired.data["changes"])
    assert len([e for e in seen if e.kind == ev.PLAN_INVALID]) == 2


def _event(kind: str, span: str, **data: Any) -> Event:
    return Event(kind=kind, run_id="r1", trace_id="t", span_id=span, parent_id="root", data=data)


def test_end_of_run_says_what_ran_in_parallel_what_it_cost_and_where_to_look() -> None:
    tally = RunTally()
    for e in [_event(ev.AGENT_START, "p", agent="planner"), _event(ev.AGENT_END, "p", agent="planner"),
              _event(ev.AGENT_START, "a", agent="researcher"), _event(ev.AGENT_START, "b", agent="researcher"),
              _event(ev.TOOL_CALL, "t", agent="researcher", tool="lookup_facts"),
              _event(ev.MODEL_RESPONSE, "m1"), _event(ev.MODEL_RESPONSE, "m2"),
              _event(ev.AGENT_END, "a"), _event(ev.AGENT_END, "b"), _event(ev.AGENT_START, "w", agent="writer")]:
        tally.handle(e)
    text = end_of_run("r1", "succeeded", 12.34, 0.0123, 1500, 400, tally)
    assert text.splitlines() == [
        "baton: run r1 succeeded in 12.3s",
        "  ran:      4 agent calls (planner, researcher x2, writer), 2 model calls, 1 tool call",
        "  parallel: yes, up to 2 agents at once",
        "  cost:     $0.0123 at Claude prices (1500 tokens in, 400 out)",
        "  look:     baton show r1",
        "  browse:   baton ui, then open http://127.0.0.1:8377/ui/runs/r1",
    ]
    serial = RunTally()
    for e in [_event(ev.AGENT_START, "p", agent="planner"), _event(ev.AGENT_END, "p")]:
        serial.handle(e)
    assert "parallel: no, one agent at a time" in end_of_run("r2", "failed", 1.0, 0.0, 0, 0, serial)
    assert re.search(r"look: +baton show r3\n  browse: +baton ui, then open http://127\.0\.0\.1:8377/ui/runs/r3$",
                     end_of_run("r3", "succeeded", 1.0, 0.0, 0, 0, None))
