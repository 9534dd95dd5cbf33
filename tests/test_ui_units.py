"""The web UI's pure parts: sessions, start forms, what a run page is computed from
(plan DAG and node states, timeline parallelism, cost by agent/model, captured content)."""

from __future__ import annotations

from typing import Any

import pytest

from baton.observe.redact import REDACTED
from baton.server.ui import shape
from baton.server.ui.auth import Sessions
from baton.server.ui.forms import WHOLE, FormError, fields, parse
from baton.server.ui.pages import Ctx, run_main
from baton.server.ui.sample import synthetic_run
from baton.server.ui.source import Detail
from baton.stores.base import RunRecord, StepRecord

KEYS = {"key-a": "tenant-a", "key-b": "tenant-b"}


def test_a_session_cookie_names_its_tenant_and_cannot_be_forged_or_outlive_its_key() -> None:
    s = Sessions(KEYS, lifetime_s=100)
    assert s.issue("nope") is None and s.issue("key-a ") is None
    cookie = s.issue("key-a", now=1000)
    assert cookie is not None and "key-a" not in cookie
    session = s.check(cookie, now=1050)
    assert session is not None and session.tenant == "tenant-a"
    assert s.check(cookie, now=1101) is None  # expired
    kid, exp, mac = cookie.split(".")
    assert s.check(f"{kid}.{int(exp) + 500}.{mac}", now=1050) is None  # a longer life breaks the MAC
    assert s.check(f"{kid}.{exp}.{'0' * len(mac)}", now=1050) is None
    b = s.issue("key-b", now=1000)
    assert b is not None and s.check(b, now=1050).tenant == "tenant-b"  # type: ignore[union-attr]
    assert s.check(f"{b.split('.')[0]}.{exp}.{mac}", now=1050) is None  # a's MAC under b's key id
    assert Sessions({"key-b": "tenant-b"}).check(cookie, now=1050) is None  # key removed: session over
    other = s.check(s.issue("key-a", now=1001), now=1050)
    assert other is not None and other.csrf != session.csrf  # one token per session
    for junk in ("", "a.b", "a.b.c.d", f"{kid}.x.{mac}"):
        assert s.check(junk, now=1050) is None


SCHEMA = {"type": "object", "required": ["topic"], "properties": {
    "topic": {"type": "string", "description": "what about"}, "depth": {"type": "integer"},
    "ratio": {"type": "number"}, "draft": {"type": "boolean"}, "tone": {"enum": ["plain", "formal"]},
    "tags": {"type": "array", "items": {"type": "string"}}, "notes": {"type": "string", "maxLength": 5000}}}


def test_a_start_form_has_one_typed_control_per_property_and_reads_them_back() -> None:
    controls = {f.name: f.control for f in fields(SCHEMA)}
    assert controls == {"topic": "text", "depth": "integer", "ratio": "number", "draft": "checkbox",
                        "tone": "select", "tags": "json", "notes": "textarea"}
    assert [f.required for f in fields(SCHEMA)][0] is True
    got = parse(SCHEMA, {"topic": "kites", "depth": "3", "ratio": "0.5", "draft": "on", "tone": "formal",
                         "tags": '["a", "b"]', "notes": ""})
    assert got == {"topic": "kites", "depth": 3, "ratio": 0.5, "draft": True, "tone": "formal", "tags": ["a", "b"]}
    assert parse(SCHEMA, {"topic": "x"})["draft"] is False
    for name, raw in (("depth", "2.5"), ("ratio", "nan"), ("ratio", "inf"), ("tags", "[unclosed")):
        with pytest.raises(FormError) as info:
            parse(SCHEMA, {"topic": "x", name: raw})
        assert info.value.field == name


def test_without_an_object_schema_the_form_is_one_text_area_sent_as_json_when_it_parses() -> None:
    [only] = fields(None)
    assert only.name == WHOLE and only.control == "textarea"
    assert parse(None, {WHOLE: "plain words"}) == "plain words"
    assert parse({"type": "string"}, {WHOLE: '{"a": 1}'}) == {"a": 1}


def _step(key: str, kind: str, name: str, status: str = "completed", t: float = 0.0, took: float = 1.0,
          result: Any = None, **kw: Any) -> StepRecord:
    return StepRecord("r", key, kind, name, status, result=result, started_at=100 + t,  # type: ignore[arg-type]
                      ended_at=100 + t + took if status != "started" else 0.0, **kw)


PLAN = {"subtasks": [{"id": "x", "worker": "w", "instruction": "i", "depends_on": []},
                     {"id": "y", "worker": "w", "instruction": "i", "depends_on": []},
                     {"id": "z", "worker": "v", "instruction": "i", "depends_on": ["x", "y"]}]}


def test_the_plan_dag_comes_from_the_planners_output_with_each_nodes_state() -> None:
    steps = [_step("0", "agent", "planner", result={"output": {"subtasks": [{"id": "bad"}]}}),  # replanned
             _step("1", "agent", "planner", result={"output": PLAN}),
             _step("s0/0", "agent", "w"), _step("s0/0/m0", "model", "w"),
             _step("s1/0", "agent", "w", status="started"), _step("s1/0/m0", "model", "w")]
    [plan] = shape.plans(steps)
    assert plan.prefix == ""
    assert [(n.id, n.state, n.layer) for n in plan.nodes] == [("x", "done", 0), ("y", "running", 0),
                                                             ("z", "waiting", 1)]
    failed = [*steps, _step("s2/0", "agent", "v", status="failed")]
    assert shape.plans(failed)[0].nodes[2].state == "failed"
    nested = [_step("s0/0/0", "agent", "sub-planner", result={"output": PLAN}), _step("s0/0/s2/0", "agent", "v")]
    [inner] = shape.plans(nested)
    assert inner.prefix == "s0/0/" and [n.state for n in inner.nodes] == ["waiting", "waiting", "done"]
    repaired = [_step("repair_plan", "step", "repair_plan", result=[PLAN, ["renamed"]])]
    assert [n.id for n in shape.plans(repaired)[0].nodes] == ["x", "y", "z"]
    assert shape.plans([_step("0", "agent", "a", result={"output": "prose"})]) == []


def test_the_timeline_counts_agents_running_at_once_and_costs_count_each_model_call_once() -> None:
    usage = {"input_tokens": 10, "output_tokens": 5}
    steps = [_step("0", "agent", "a", t=0, took=4, usage=usage, cost_usd=1.0),
             _step("0/m0", "model", "a", t=0, took=1, usage=usage, cost_usd=1.0, meta={"model": "m1"}),
             _step("1", "agent", "b", t=1, took=2), _step("2", "agent", "c", t=2, took=5),
             _step("3", "agent", "d", t=6, took=1),
             _step("3/m0", "model", "d", t=6, took=1, usage=usage, cost_usd=2.0, meta={"model": "m2"})]
    run = RunRecord("r", "wf", None, status="succeeded", created_at=100, updated_at=108)
    t = shape.timeline(run, steps, now=200)
    assert t.peak_parallel == 3 and len(t.rows) == 6 and t.span_s == pytest.approx(8)
    by_agent, by_model = shape.costs(steps)
    assert {k: (u.calls, u.cost_usd, u.input_tokens) for k, u in by_agent.items()} == {"a": (1, 1.0, 10),
                                                                                      "d": (1, 2.0, 10)}
    assert set(by_model) == {"m1", "m2"}
    running = shape.timeline(RunRecord("r", "wf", None, status="running", created_at=100),
                             [_step("0", "agent", "a", status="started")], now=130)
    assert running.rows[0].end_s is None and running.span_s == pytest.approx(30)


def test_step_content_follows_the_capture_mode_and_is_redacted() -> None:
    secret = "token sk-ant-api03-abcdefghijklmnop1234"
    assert shape.captured(secret, "none") is None
    assert shape.captured(secret, "metadata") == f"({len(secret)} characters; content not captured)"
    full = shape.captured({"said": secret}, "full")
    assert full is not None and REDACTED in full and "abcdefghijklmnop" not in full


def test_a_500_step_run_renders_every_step_once() -> None:
    run, steps = synthetic_run("big", 500)
    assert len(steps) == 500
    html = run_main(Detail(run, steps, [], [], []), Ctx("t", False, "tenant-a", "full"), now=run.updated_at)
    assert html.count('<tr data-step="') == 500 and html.count('<g class="bar ') == 500
    assert html.count('<g class="node st-done"') == (500 - 4) // 3


def test_errors_retries_and_inputs_from_the_event_stream_show_inline_on_their_step() -> None:
    steps = [_step("0", "agent", "writer", result={"output": "the text"}, attempts=1),
             _step("0/m0", "model", "writer", attempts=3, result={"content": [{"type": "text", "text": "the text"}]}),
             _step("1", "tool", "send", status="failed", error={"type": "ToolError", "message": "smtp down"})]
    events = [(1, "agent.start", {"key": "0", "input": "write about kites"}),
              (2, "model.error", {"key": "0/m0", "error_type": "overloaded_error", "status": 529, "retryable": True}),
              (3, "model.error", {"key": "0/m0", "error_type": "api_error", "status": 500, "retryable": True})]
    run = RunRecord("r", "wf", None, status="failed", created_at=100, updated_at=103,
                    error={"type": "StepFailed", "message": "send failed"})
    full = run_main(Detail(run, steps, [], events, []), Ctx("t", False, "tenant-a", "full"), now=103)
    model_row = full.split('<tr data-step="0/m0">')[1].split("</tr>")[0]
    assert "overloaded_error (529), retried" in model_row and "api_error (500), retried" in model_row
    assert '<td class="num">2</td>' in model_row  # retries = attempts - 1
    assert "write about kites" in full.split('<tr data-step="0">')[1].split("</tr>")[0]
    assert "smtp down" in full.split('<tr data-step="1">')[1].split("</tr>")[0]
    assert 'role="alert"><strong>Error: StepFailed</strong> send failed' in full
    assert "Resume run" in full and "Cancel run" not in full
    sized = run_main(Detail(run, steps, [], events, []), Ctx("t", True, None, "metadata"), now=103)
    assert "write about kites" not in sized and "(17 characters; content not captured)" in sized
    assert "Resume run" not in sized  # read-only
