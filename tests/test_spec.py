"""Workflow files: schema, line-accurate errors, and Python/YAML building the same objects."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

import baton
from baton.errors import WorkflowError
from baton.patterns.compress import Compressor
from baton.patterns.orchestrator import Orchestrator
from baton.spec import load_workflow_file
from baton.spec.loader import load_yaml
from baton.spec.schema import SCHEMA

ROOT = Path(__file__).resolve().parents[1]


def test_committed_schema_matches_the_code() -> None:
    committed = json.loads((ROOT / "schemas" / "workflow-v1.schema.json").read_text())
    assert committed == json.loads(json.dumps(SCHEMA))


def test_yaml_builds_the_same_objects_as_python() -> None:
    wf = load_workflow_file(ROOT / "examples" / "market_report" / "workflow.yaml")
    root = wf.root
    assert isinstance(root, Orchestrator)
    assert list(root.workers) == ["researcher", "analyst", "critic"]
    researcher = wf.agents["researcher"]
    python_researcher = baton.Agent(
        "researcher", system=researcher.system, model="claude-sonnet-4-6", tools=researcher.tools,
        description=researcher.description, temperature=0.2, max_tokens=300, max_turns=3, tool_choice="any")
    assert researcher.prompt_version == python_researcher.prompt_version
    assert researcher == python_researcher
    assert wf.agents["writer"].sections == ["Summary", "Market", "Risks", "Next steps"]
    assert (root.min_subtasks, root.max_subtasks) == (3, 4)
    assert wf.limits == baton.Limits(budget_usd=0.5, max_model_calls=40, timeout_s=900, concurrency=4)
    assert wf.baton_ref == f"yaml:{ROOT / 'examples' / 'market_report' / 'workflow.yaml'}"


def test_duplicate_keys_and_tags_are_rejected_with_lines() -> None:
    with pytest.raises(WorkflowError) as exc:
        load_yaml("a: 1\nb: 2\na: 3\n", "f.yaml")
    assert exc.value.line == 3 and "duplicate key 'a'" in str(exc.value)
    with pytest.raises(WorkflowError) as exc:
        load_yaml("a: !!python/object:os.system x\n", "f.yaml")
    assert exc.value.line == 1


def test_nested_workflow_cycle_is_reported(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("version: 1\nname: a\nagents: {x: {}}\n"
                                     "workflow: {pattern: pipeline, stages: [x, {workflow: b.yaml}]}\n")
    (tmp_path / "b.yaml").write_text("version: 1\nname: b\nagents: {y: {}}\n"
                                     "workflow: {pattern: pipeline, stages: [y, {workflow: a.yaml}]}\n")
    with pytest.raises(WorkflowError) as exc:
        load_workflow_file(tmp_path / "a.yaml")
    assert "nested workflows include each other" in str(exc.value.problems)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    f = tmp_path / "w.yaml"
    f.write_text("version: 1\nname: w\nagents:\n  judge: {}\n"
                 "workflow:\n  pattern: consensus\n  voters: [a, b]\n  vote: majority\n  weights: {c: 1}\n")
    with pytest.raises(WorkflowError) as exc:
        load_workflow_file(f)
    fields = {p["field"] for p in exc.value.problems}
    assert {"workflow.voters[0]", "workflow.voters[1]", "workflow.weights.c"} <= fields
    assert all(p["file"] == str(f) and p["line"] for p in exc.value.problems)


def test_unknown_limit_and_retry_keys(tmp_path: Path) -> None:
    f = tmp_path / "w.yaml"
    f.write_text("version: 1\nname: w\nagents:\n  a: {retry: {max_attemps: 3}}\n"
                 "workflow: {pattern: agent, agent: a}\nlimits: {budget: 3}\n")
    with pytest.raises(WorkflowError) as exc:
        load_workflow_file(f)
    fields = {p["field"] for p in exc.value.problems}
    assert {"agents.a.retry.max_attemps", "limits.budget"} <= fields


@pytest.mark.parametrize("workflow, attrs", [
    ("{pattern: orchestrator, planner: a, workers: [b], compress_context: {agent: b}}",
     ("max_subtasks", "max_replans", "concurrency", "repair_plan", "min_subtasks")),
    ("{pattern: fan_out, each: {agent: a}}", ("over", "policy", "max_items")),
    ("{pattern: refine, drafter: a, critics: [b]}", ("max_rounds", "require_approval")),
    ("{pattern: handoffs, agents: [a, b], start: a}", ("max_handoffs",)),
    ("{pattern: consensus, voters: [a, b], vote: majority}", ("weights", "shuffle")),
])
def test_settings_a_file_leaves_out_take_the_python_defaults(tmp_path: Path, workflow: str,
                                                             attrs: tuple[str, ...]) -> None:
    f = tmp_path / "w.yaml"
    f.write_text(f"version: 1\nname: w\nagents: {{a: {{}}, b: {{}}}}\nworkflow: {workflow}\n")
    built = load_workflow_file(f).root
    defaults = {f.name: f.default for f in dataclasses.fields(built)}
    assert {a: getattr(built, a) for a in attrs} == {a: defaults[a] for a in attrs}
    if isinstance(built, Orchestrator):
        assert built.compress is not None and built.compress.over_chars == Compressor().over_chars


@pytest.mark.parametrize("workflow, field, bad", [
    ("{pattern: orchestrator, planner: a, workers: [b]}", "max_subtasks", 0),
    ("{pattern: orchestrator, planner: a, workers: [b]}", "max_replans", -1),
    ("{pattern: fan_out, each: {agent: a}}", "max_items", 0),
    ("{pattern: refine, drafter: a, critics: [b]}", "max_rounds", 0),
    ("{pattern: handoffs, agents: [a, b], start: a}", "max_handoffs", -1),
    ("{pattern: bus, subscriptions: {a: [t]}, start: {type: t}}", "max_messages", 0),
    ("{pattern: consensus, voters: [a, b], vote: majority}", "shuffle", 1),
])
def test_pattern_settings_are_checked_alike_in_python_and_yaml(tmp_path: Path, workflow: str, field: str,
                                                               bad: object) -> None:
    """One declaration per setting: the Python check and the YAML schema refuse the same values."""
    f = tmp_path / "w.yaml"
    f.write_text(f"version: 1\nname: w\nagents: {{a: {{}}, b: {{}}}}\nworkflow: {workflow}\n")
    built = load_workflow_file(f).root
    with pytest.raises(WorkflowError, match=f"{field}: must be"):
        dataclasses.replace(built, **{field: bad})
    f.write_text(f"version: 1\nname: w\nagents: {{a: {{}}, b: {{}}}}\nworkflow: {workflow[:-1]}, {field}: {bad}}}\n")
    with pytest.raises(WorkflowError) as exc:
        load_workflow_file(f)
    assert exc.value.field == f"workflow.{field}"
    schema = SCHEMA["$defs"]["workflow"]["allOf"]
    declared = {k for p in schema for k in p["then"]["properties"]}
    assert field in declared


def test_a_file_loads_only_the_patterns_it_uses() -> None:
    """The workflow schema needs the patterns' settings only (``patterns/_settings``), not the patterns."""
    import subprocess
    import sys

    code = ("import sys; from baton.spec import load_workflow_file; load_workflow_file(sys.argv[1]); "
            "print(sorted(m for m in sys.modules if m.startswith('baton.patterns.')))")
    for example, expected in (("agent/calculator.yaml", ["baton.patterns._settings"]),
                              ("pipeline/content.yaml", ["baton.patterns._base", "baton.patterns._settings",
                                                         "baton.patterns.gates", "baton.patterns.pipeline"])):
        out = subprocess.run([sys.executable, "-c", code, str(ROOT / "examples" / example)], capture_output=True,
                             text=True, check=True, timeout=120).stdout.strip()
        assert out == repr(expected), example
