"""Time travel: ``baton.fork`` / ``baton fork`` over a pipeline run against the fake Messages API.

The parent runs a three-stage pipeline from a workflow file (so the fork finds its workflow
as resume does, by the file's recorded hash); each stage's model step is what a fork edits
or executes again. The fake server's request log shows which steps were sent again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import baton
from baton.errors import UsageError
from baton.messages import ModelRequest
from baton.models.anthropic import AnthropicModel
from baton.runtime.ratelimit import RateGovernor
from baton.runtime.retry import RetryPolicy
from baton.spec import load_workflow_file
from baton.stores import open_store
from baton.testing import FakeAnthropicServer, json_reply, text
from baton.testing.script import Reply

pytestmark = pytest.mark.timeout(90)
ROOT = Path(__file__).resolve().parents[1]
FLOW = ROOT / "tests" / "flows" / "three_stage.yaml"


def echo(name: str) -> Any:
    def reply(req: ModelRequest) -> Reply:
        return text(f"{name} saw [{req.messages[-1].text.splitlines()[0]}]")  # the pipeline adds a stage note
    return reply


@pytest.fixture
async def server() -> AsyncIterator[FakeAnthropicServer]:
    async with FakeAnthropicServer() as s:
        for name in ("FIRST", "SECOND", "THIRD"):
            s.add_rule(f"You are {name}", reply=echo(name.lower()))
        yield s


@pytest.fixture
async def opts(server: FakeAnthropicServer, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    m = AnthropicModel(api_key="sk-test", base_url=server.url)
    yield {"store": f"sqlite:///{tmp_path}/baton.db", "model": m, "governor": RateGovernor(),
           "retry": RetryPolicy(max_attempts=1)}
    await m.aclose()


async def journal(opts: dict[str, Any], run_id: str) -> tuple[Any, list[Any]]:
    store = open_store(opts["store"])
    await store.open()
    try:
        return await store.get_run(run_id), await store.load_steps(run_id)
    finally:
        await store.close()


def sent(server: FakeAnthropicServer, name: str) -> int:
    return len(server.requests_matching(f"You are {name}"))


@pytest.fixture
async def parent(server: FakeAnthropicServer, opts: dict[str, Any]) -> tuple[Any, list[dict[str, Any]]]:
    result = await baton.run(load_workflow_file(str(FLOW)), "topic", **opts)
    assert result.ok
    record, steps = await journal(opts, result.run_id)
    assert [s.key for s in steps] == ["0/m0", "0", "1", "2/m0", "2", "3", "4/m0", "4"]
    return record, [s.to_dict() for s in steps]


async def check_parent_untouched(opts: dict[str, Any], parent: tuple[Any, list[dict[str, Any]]]) -> None:
    record, steps = await journal(opts, parent[0].run_id)
    assert [s.to_dict() for s in steps] == parent[1]
    assert record.to_dict() == parent[0].to_dict()


async def test_fork_at_a_middle_model_step_with_an_edit(server: FakeAnthropicServer, opts: dict[str, Any],
                                                        parent: tuple[Any, list[dict[str, Any]]]) -> None:
    pid = parent[0].run_id
    before = {n: sent(server, n) for n in ("FIRST", "SECOND", "THIRD")}
    result = await baton.fork(pid, at="2/m0", edit="EDITED MIDDLE", **opts)
    assert result.ok and result.run_id != pid
    assert result.output == "third saw [EDITED MIDDLE]"
    assert sent(server, "FIRST") == before["FIRST"] and sent(server, "SECOND") == before["SECOND"]
    assert sent(server, "THIRD") == before["THIRD"] + 1
    assert result.model_calls == 1  # the fork's own spend: the copied steps were paid for by the parent
    record, steps = await journal(opts, result.run_id)
    assert record.metadata["fork"] == {"parent": pid, "at": "2/m0", "edited": True}
    by_key = {s.key: s for s in steps}
    assert [s.key for s in steps][:4] == ["0/m0", "0", "1", "2/m0"]
    for key in ("0/m0", "0", "1"):  # copied as they were
        old = next(d for d in parent[1] if d["key"] == key)
        assert by_key[key].result == old["result"] and by_key[key].meta["forked_from"] == pid
    assert by_key["2/m0"].result["content"] == [{"type": "text", "text": "EDITED MIDDLE"}]
    assert by_key["2/m0"].meta["edited"] is True
    assert by_key["2"].result["output"] == "EDITED MIDDLE" and "forked_from" not in by_key["2"].meta
    assert "forked_from" not in by_key["4/m0"].meta
    await check_parent_untouched(opts, parent)


@pytest.mark.parametrize(("at", "resent"), [
    ("0/m0", {"FIRST": 1, "SECOND": 1, "THIRD": 1}),  # depth 2, the very first step
    ("0", {"FIRST": 1, "SECOND": 1, "THIRD": 1}),  # depth 1: the agent step, its model call with it
    ("2", {"FIRST": 0, "SECOND": 1, "THIRD": 1}),
    ("4/m0", {"FIRST": 0, "SECOND": 0, "THIRD": 1}),  # the last step
])
async def test_fork_without_an_edit_executes_from_the_step_on(
        server: FakeAnthropicServer, opts: dict[str, Any], parent: tuple[Any, list[dict[str, Any]]],
        at: str, resent: dict[str, int]) -> None:
    before = {n: sent(server, n) for n in resent}
    result = await baton.fork(parent[0].run_id, at=at, **opts)
    assert result.ok and result.output == parent[0].output  # the echo server answers as before
    assert {n: sent(server, n) - before[n] for n in resent} == resent
    _, steps = await journal(opts, result.run_id)
    assert [s.key for s in steps if "forked_from" in s.meta] == \
        [d["key"] for d in parent[1][:[d["key"] for d in parent[1]].index(at)]
         if not d["key"].startswith(at + "/") and not at.startswith(d["key"] + "/")]
    assert sorted(s.key for s in steps) == sorted(d["key"] for d in parent[1])
    await check_parent_untouched(opts, parent)


async def test_fork_at_an_agent_step_with_an_edit_and_a_fork_of_a_fork(
        server: FakeAnthropicServer, opts: dict[str, Any], parent: tuple[Any, list[dict[str, Any]]]) -> None:
    first = await baton.fork(parent[0].run_id, at="0", edit="NEW START", **opts)
    assert first.output == "third saw [second saw [NEW START]]"
    second = await baton.fork(first.run_id, at="4/m0", edit="THE END", **opts)
    assert second.output == "THE END"
    record, _ = await journal(opts, second.run_id)
    assert record.metadata["fork"] == {"parent": first.run_id, "at": "4/m0", "edited": True}
    await check_parent_untouched(opts, parent)


async def test_bad_forks_are_refused_and_write_nothing(opts: dict[str, Any],
                                                        parent: tuple[Any, list[dict[str, Any]]]) -> None:
    with pytest.raises(UsageError, match="not in the run's journal"):
        await baton.fork(parent[0].run_id, at="9/m0", **opts)
    with pytest.raises(UsageError, match="must be text"):
        await baton.fork(parent[0].run_id, at="2/m0", edit={"x": 1}, **opts)
    store = open_store(opts["store"])
    await store.open()
    try:
        assert [r.run_id for r in await store.list_runs(10)] == [parent[0].run_id]
    finally:
        await store.close()


def cli(tmp_path: Path, server: FakeAnthropicServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "BATON_"))}
    env.update({"ANTHROPIC_BASE_URL": server.url, "ANTHROPIC_API_KEY": "sk-test",
                "BATON_STORE": f"sqlite:///{tmp_path}/baton.db", "PYTHONPATH": str(ROOT / "src")})
    return subprocess.run([sys.executable, "-m", "baton", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)


def test_cli_fork_and_show(tmp_path: Path) -> None:
    srv = FakeAnthropicServer()
    for name in ("FIRST", "SECOND", "THIRD"):
        srv.add_rule(f"You are {name}", reply=echo(name.lower()))
    srv.start_in_thread()
    try:
        run = cli(tmp_path, srv, "run", str(FLOW), "--input", "topic", "--json", "--quiet")
        assert run.returncode == 0, run.stderr
        pid = json.loads(run.stdout)["run_id"]
        edit = tmp_path / "edit.txt"
        edit.write_text("FROM A FILE")
        out = cli(tmp_path, srv, "fork", pid, "--at", "2/m0", "--edit-file", str(edit), "--json", "--quiet")
        assert out.returncode == 0, out.stderr
        forked = json.loads(out.stdout)
        assert forked["output"] == "third saw [FROM A FILE]" and forked["run_id"] != pid
        show = cli(tmp_path, srv, "show", forked["run_id"])
        assert f"forked from run {pid} at step 2/m0 (edited result)" in show.stdout
        assert json.loads(cli(tmp_path, srv, "show", forked["run_id"], "--json").stdout)["fork"]["parent"] == pid
        bad = cli(tmp_path, srv, "fork", pid, "--at", "nope")
        assert bad.returncode == 2 and "not in the run's journal" in bad.stderr and "Traceback" not in bad.stderr
        missing = cli(tmp_path, srv, "fork", pid, "--at", "0", "--edit-file", str(tmp_path / "none.txt"))
        assert missing.returncode == 2 and "cannot read --edit-file" in missing.stderr
    finally:
        srv.stop_thread()


async def test_a_changed_workflow_file_must_be_named_and_the_fork_records_it(
        server: FakeAnthropicServer, opts: dict[str, Any], tmp_path: Path) -> None:
    flow = tmp_path / "flow.yaml"
    flow.write_text(FLOW.read_text())
    result = await baton.run(load_workflow_file(str(flow)), "topic", **opts)
    flow.write_text(FLOW.read_text() + "# changed\n")
    with pytest.raises(baton.BatonError, match="has changed since run"):
        await baton.fork(result.run_id, at="2/m0", **opts)
    named = load_workflow_file(str(flow))
    forked = await baton.fork(result.run_id, at="2/m0", workflow=named, **opts)
    assert forked.ok
    record, _ = await journal(opts, forked.run_id)
    assert record.metadata["workflow_sha256"] == named.sha256 != (await journal(opts, result.run_id))[0].metadata[
        "workflow_sha256"]


PLAN = {"subtasks": [{"id": "a", "worker": "alpha", "instruction": "do A", "depends_on": []},
                     {"id": "b", "worker": "beta", "instruction": "do B", "depends_on": ["a"]}],
        "synthesis_instructions": "merge"}


@pytest.fixture
async def orchestrated(server: FakeAnthropicServer, opts: dict[str, Any]) -> tuple[Any, list[dict[str, Any]]]:
    server.add_rule("You are PLANNER", reply=json_reply(PLAN))
    for name in ("ALPHA", "BETA"):
        server.add_rule(f"You are {name}", reply=text(f"{name.lower()} result"))
    server.add_rule("You are WRITER", reply=lambda req: text("final from: " + " | ".join(
        line for line in req.messages[-1].text.splitlines() if "result" in line or "EDITED" in line)))
    result = await baton.run(load_workflow_file(str(FLOW.parent / "orchestrated.yaml")), "topic", **opts)
    assert result.ok, result.error
    record, steps = await journal(opts, result.run_id)
    assert [s.key for s in steps] == ["0/m0", "0", "s0/0/m0", "s0/0", "s1/0/m0", "s1/0", "synthesis/0/m0",
                                      "synthesis/0"]
    return record, [s.to_dict() for s in steps]


@pytest.mark.parametrize(("at", "edit", "resent"), [
    ("s1/0/m0", "EDITED BETA", {"PLANNER": 0, "ALPHA": 0, "BETA": 0, "WRITER": 1}),  # depth 3, edited
    ("s0/0", None, {"PLANNER": 0, "ALPHA": 1, "BETA": 1, "WRITER": 1}),  # depth 2, executed again
    ("synthesis/0/m0", None, {"PLANNER": 0, "ALPHA": 0, "BETA": 0, "WRITER": 1}),
])
async def test_forks_of_an_orchestrator_run(server: FakeAnthropicServer, opts: dict[str, Any],
                                            orchestrated: tuple[Any, list[dict[str, Any]]], at: str,
                                            edit: str | None, resent: dict[str, int]) -> None:
    before = {n: sent(server, n) for n in resent}
    result = await baton.fork(orchestrated[0].run_id, at=at, edit=edit, **opts)
    assert result.ok, result.error
    assert {n: sent(server, n) - before[n] for n in resent} == resent
    if edit:
        assert "EDITED BETA" in result.output and "beta result" not in result.output
    else:
        assert result.output == orchestrated[0].output
    await check_parent_untouched(opts, orchestrated)


async def test_an_edited_plan_changes_what_the_workers_do(server: FakeAnthropicServer, opts: dict[str, Any],
                                                          orchestrated: tuple[Any, list[dict[str, Any]]]) -> None:
    only_beta = {"subtasks": [{"id": "b", "worker": "beta", "instruction": "do B", "depends_on": []}],
                 "synthesis_instructions": "merge"}
    before = {n: sent(server, n) for n in ("PLANNER", "ALPHA", "BETA", "WRITER")}
    result = await baton.fork(orchestrated[0].run_id, at="0/m0", edit=json.dumps(only_beta), **opts)
    assert result.ok, result.error
    assert {n: sent(server, n) - before[n] for n in before} == {"PLANNER": 0, "ALPHA": 0, "BETA": 1, "WRITER": 1}
    await check_parent_untouched(opts, orchestrated)
