"""MCP servers as tool sources, against real servers written with the official SDK (tests/mcp_servers/)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

import baton
from baton.messages import ToolResultBlock
from baton.spec.build import load_workflow_file
from baton.testing import Rule, ScriptedModel, text, tool_call

pytest.importorskip("mcp")

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(120)


def _workflow(tmp_path: Path, agent_tools: str, *, server: str = "files", extra: str = "", agents: str = "") -> Path:
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "note.txt").write_text("the launch code is tangerine\nsecond line\n")
    env = (f"{{FILES_ROOT: '{tmp_path / 'data'}', FILES_COUNTER: '{tmp_path / 'calls.log'}', "
           f"FILES_PIDFILE: '{tmp_path / 'pids.log'}', PYTHONPATH: '{ROOT}'}}")
    wf = tmp_path / "wf.yaml"
    wf.write_text(
        "version: 1\nname: mcp-test\n"
        f"agents:\n  reader: {{system: 'You read files.', tools: {agent_tools}}}\n{agents}"
        f"tools:\n  fs:\n    mcp: {{command: '{sys.executable}', args: ['-m', 'tests.mcp_servers.{server}'], "
        f"env: {env}, cwd: '{ROOT}'}}\n{extra}"
        "workflow: {pattern: agent, agent: reader}\n")
    return wf


def _calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "calls.log"
    return log.read_text().split() if log.exists() else []


def _tool_results(model: ScriptedModel) -> list[ToolResultBlock]:
    """Every tool result the model was sent (the last request carries the whole conversation)."""
    return [b for m in model.requests[-1].messages for b in m.content if isinstance(b, ToolResultBlock)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone as a server.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


async def test_stdio_server_tool_is_called_with_its_schema_and_stopped_at_the_end(tmp_path: Path) -> None:
    wf = load_workflow_file(_workflow(tmp_path, "[fs.read_file]"))
    model = ScriptedModel([
        Rule("tangerine", reply=text("The code is tangerine.")),
        Rule(None, reply=tool_call("fs__read_file", {"path": "note.txt"})),
    ])
    result = await baton.run(wf, "what is the code?", store="memory://", model=model)
    assert result.status == "succeeded", result.error
    assert result.output == "The code is tangerine."
    # The model saw exactly the one tool it was given, with the server's JSON schema.
    specs = {t.name: t for t in model.requests[0].tools}
    assert list(specs) == ["fs__read_file"]
    assert specs["fs__read_file"].input_schema["required"] == ["path"]
    assert specs["fs__read_file"].description.startswith("Read a text file")
    assert _calls(tmp_path) == ["read_file"]
    pids = [int(p) for p in (tmp_path / "pids.log").read_text().split()]
    assert len(pids) == 1
    assert _gone(pids[0]), "the MCP server outlived the run"


async def test_tool_not_given_to_the_agent_is_refused_and_never_runs(tmp_path: Path) -> None:
    wf = load_workflow_file(_workflow(tmp_path, "[fs.read_file]"))
    model = ScriptedModel([
        Rule("not available", reply=text("I may not list files.")),
        Rule(None, reply=tool_call("fs__list_files", {})),
    ])
    result = await baton.run(wf, "list the files", store="memory://", model=model)
    assert result.status == "succeeded", result.error
    (res,) = _tool_results(model)
    assert res.is_error and "fs__list_files" in str(res.content)
    assert "list_files" not in _calls(tmp_path)


async def test_whole_server_shared_by_two_agents_one_process(tmp_path: Path) -> None:
    path = _workflow(tmp_path, "[fs]", agents="  counter: {system: 'You count.', tools: [fs.stats]}\n")
    path.write_text(path.read_text().replace("workflow: {pattern: agent, agent: reader}",
                                             "workflow: {pattern: pipeline, stages: [reader, counter]}"))
    wf = load_workflow_file(path)
    model = ScriptedModel([
        Rule(r"You count\.[\s\S]*lines", reply=text("counted")),
        Rule(r"You count\.", reply=tool_call("fs__stats", {"path": "note.txt"})),
        Rule(r"You read files\.[\s\S]*note\.txt", reply=text("listed")),
        Rule(r"You read files\.", reply=tool_call("fs__list_files", {})),
    ])
    result = await baton.run(wf, "go", store="memory://", model=model)
    assert result.status == "succeeded", result.error
    reader_tools = {t.name for t in model.requests[0].tools}
    assert {"fs__read_file", "fs__list_files", "fs__stats", "fs__crash", "fs__hang"} <= reader_tools
    assert [t.name for t in model.requests[-1].tools] == ["fs__stats"]
    stats = [r for r in _tool_results(model) if "lines" in str(r.content)]
    assert orjson.loads(str(stats[0].content)) == {"lines": 2, "words": 7}
    assert _calls(tmp_path) == ["list_files", "stats"]
    assert len((tmp_path / "pids.log").read_text().split()) == 1  # one server for both agents


def _gone(pid: int, wait_s: float = 10.0) -> bool:
    deadline = time.time() + wait_s
    while _alive(pid) and time.time() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[int]:
    """The file server on streamable HTTP, in its own process."""
    port = _free_port()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("alpha beta\n")
    env = {**os.environ, "FILES_ROOT": str(tmp_path / "data"), "FILES_COUNTER": str(tmp_path / "calls.log"),
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "tests.mcp_servers.files", "--http", str(port)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_streamable_http_server(tmp_path: Path, http_server: int) -> None:
    wf_path = tmp_path / "wf.yaml"
    wf_path.write_text(
        "version: 1\nname: mcp-http\nagents:\n  reader: {system: 'You read.', tools: [web.stats]}\n"
        f"tools:\n  web: {{mcp: {{url: 'http://127.0.0.1:{http_server}/mcp'}}, timeout_s: 20}}\n"
        "workflow: {pattern: agent, agent: reader}\n")
    model = ScriptedModel([
        Rule("words", reply=text("two words")),
        Rule(None, reply=tool_call("web__stats", {"path": "a.txt"})),
    ])
    result = await baton.run(load_workflow_file(wf_path), "count", store="memory://", model=model)
    assert result.status == "succeeded", result.error
    (res,) = _tool_results(model)
    assert not res.is_error and orjson.loads(str(res.content)) == {"lines": 1, "words": 2}
    assert _calls(tmp_path) == ["stats"]


async def test_crashing_server_is_restarted_then_given_up_with_a_clear_error(tmp_path: Path) -> None:
    path = _workflow(tmp_path, "[fs]")
    path.write_text(path.read_text().replace("cwd: '", "max_restarts: 1, cwd: '"))
    wf = load_workflow_file(path)
    model = ScriptedModel([
        Rule("keeps failing", reply=text("gave up")),
        Rule(r"tangerine[\s\S]*stopped during the call", reply=tool_call("fs__read_file", {"path": "note.txt"}),
             times=1),
        Rule("tangerine", reply=tool_call("fs__crash", {}), times=1),
        Rule("stopped during the call", reply=tool_call("fs__read_file", {"path": "note.txt"}), times=1),
        Rule(None, reply=tool_call("fs__crash", {}), times=1),
    ])
    result = await baton.run(wf, "go", store="memory://", model=model)
    assert result.status == "succeeded", result.error
    first, second, third, fourth = (str(r.content) for r in _tool_results(model))
    assert "fs.crash" in first and "stopped during the call" in first
    assert "tangerine" in second  # restarted: the next call worked
    assert "stopped during the call" in third
    assert "keeps failing" in fourth and "not restarted again" in fourth
    assert result.output == "gave up"
    assert _calls(tmp_path) == ["crash", "read_file", "crash"]
    assert len((tmp_path / "pids.log").read_text().split()) == 2  # started once, restarted once


async def test_hung_server_call_times_out_and_the_run_goes_on(tmp_path: Path) -> None:
    path = _workflow(tmp_path, "[fs.hang, fs.read_file]")
    path.write_text(path.read_text().replace("    mcp: {", "    timeout_s: 1\n    mcp: {"))
    wf = load_workflow_file(path)
    model = ScriptedModel([
        Rule("tangerine", reply=text("done despite the hang")),
        Rule("timed out", reply=tool_call("fs__read_file", {"path": "note.txt"})),
        Rule(None, reply=tool_call("fs__hang", {})),
    ])
    t0 = time.monotonic()
    result = await asyncio.wait_for(baton.run(wf, "go", store="memory://", model=model), 60)
    assert result.status == "succeeded", result.error
    assert result.output == "done despite the hang"
    assert "timed out after 1" in str(_tool_results(model)[0].content)
    assert time.monotonic() - t0 < 30


async def test_schema_violating_output_is_an_error_to_the_model(tmp_path: Path) -> None:
    wf = load_workflow_file(_workflow(tmp_path, "[fs]", server="bad_output"))
    model = ScriptedModel([
        Rule("output schema", reply=text("the tool is broken")),
        Rule(None, reply=tool_call("fs__stats", {"text": "a b"})),
    ])
    result = await baton.run(wf, "go", store="memory://", model=model)
    assert result.status == "succeeded", result.error
    (res,) = _tool_results(model)
    assert res.is_error and "breaks its own output schema" in str(res.content)
    assert "many" not in str(res.content).split("schema:")[0]


async def test_invalid_input_is_refused_before_the_server_sees_it(tmp_path: Path) -> None:
    wf = load_workflow_file(_workflow(tmp_path, "[fs.read_file]"))
    model = ScriptedModel([
        Rule("invalid input", reply=text("fixed nothing")),
        Rule(None, reply=tool_call("fs__read_file", {"path": 42})),
    ])
    result = await baton.run(wf, "go", store="memory://", model=model)
    assert result.status == "succeeded", result.error
    (res,) = _tool_results(model)
    assert res.is_error and "invalid input" in str(res.content)
    assert _calls(tmp_path) == []


async def test_resumed_run_never_calls_a_completed_mcp_tool_again(tmp_path: Path) -> None:
    wf_path = _workflow(tmp_path, "[fs.read_file]")
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    rules = [
        Rule("tangerine", reply=text("The code is tangerine.")),
        Rule(None, reply=tool_call("fs__read_file", {"path": "note.txt"})),
    ]
    first = await baton.run(load_workflow_file(wf_path), "code?", store=store, model=ScriptedModel(rules),
                            run_id="mcp-resume", limits=baton.Limits(max_model_calls=1))
    assert first.status != "succeeded"
    assert _calls(tmp_path) == ["read_file"]
    model = ScriptedModel(rules)
    second = await baton.resume("mcp-resume", load_workflow_file(wf_path), store=store, model=model,
                                max_model_calls=10)
    assert second.status == "succeeded", second.error
    assert second.output == "The code is tangerine."
    assert _calls(tmp_path) == ["read_file"]  # replayed from the journal, not called again
    assert model.call_count == 1


def test_workflow_file_rejects_a_tool_with_both_python_and_mcp(tmp_path: Path) -> None:
    from baton.errors import WorkflowError

    wf = tmp_path / "wf.yaml"
    wf.write_text("version: 1\nname: x\nagents:\n  a: {tools: [fs]}\n"
                  "tools:\n  fs: {python: 'os:getcwd', mcp: {command: python}}\n"
                  "workflow: {pattern: agent, agent: a}\n")
    with pytest.raises(WorkflowError) as err:
        load_workflow_file(wf)
    assert err.value.problems[0]["field"].startswith("tools.fs")


@pytest.mark.parametrize("retryable", [True, False])
async def test_crash_is_retried_only_when_the_tool_is_marked_retryable(tmp_path: Path, retryable: bool) -> None:
    path = _workflow(tmp_path, "[fs.crash_once]")
    flag = "true" if retryable else "false"
    path.write_text(path.read_text().replace("    mcp: {", f"    retryable: {flag}\n    mcp: {{"))
    wf = load_workflow_file(path)
    marker = tmp_path / "crashed.marker"
    model = ScriptedModel([
        Rule("survived|stopped during", reply=text("finished")),
        Rule(None, reply=tool_call("fs__crash_once", {"marker": str(marker)})),
    ])
    result = await baton.run(wf, "go", store="memory://", model=model, sleep=_no_sleep)
    assert result.status == "succeeded", result.error
    (res,) = _tool_results(model)
    if retryable:
        assert not res.is_error and res.content == "survived"
        assert _calls(tmp_path) == ["crash_once", "crash_once"]
    else:
        assert res.is_error and "stopped during the call" in str(res.content)
        assert _calls(tmp_path) == ["crash_once"]


async def _no_sleep(_s: float) -> None:
    return None


async def test_server_that_never_answers_at_start_fails_the_run_with_a_clear_error(tmp_path: Path) -> None:
    wf_path = tmp_path / "wf.yaml"
    wf_path.write_text(
        "version: 1\nname: mcp-mute\nagents:\n  a: {tools: [mute]}\n"
        f"tools:\n  mute: {{mcp: {{command: '{sys.executable}', args: ['-c', 'import time; time.sleep(120)'], "
        "connect_timeout_s: 2}}\nworkflow: {pattern: agent, agent: a}\n")
    model = ScriptedModel([Rule(None, reply=text("never asked"))])
    t0 = time.monotonic()
    result = await asyncio.wait_for(baton.run(load_workflow_file(wf_path), "go", store="memory://", model=model), 60)
    assert result.status == "failed"
    assert "MCP server 'mute' did not answer within 2" in str(result.error)
    assert model.call_count == 0
    assert time.monotonic() - t0 < 30


async def test_mcp_calls_are_events_and_sinks_redact_their_output(tmp_path: Path) -> None:
    from baton.observe import JSONLSink
    from baton.observe.redact import clear_secrets, register_secret

    wf = load_workflow_file(_workflow(tmp_path, "[fs.read_file]"))
    secret = "tangerine"
    register_secret(secret)
    log = tmp_path / "events.jsonl"
    model = ScriptedModel([
        Rule("tangerine", reply=text("read it")),
        Rule(None, reply=tool_call("fs__read_file", {"path": "note.txt"})),
    ])
    try:
        sink = JSONLSink(log, capture="full")
        result = await baton.run(wf, "go", store="memory://", model=model, sinks=[sink])
        sink.close()
    finally:
        clear_secrets()
    assert result.status == "succeeded", result.error
    assert secret in str(_tool_results(model)[0].content)  # the model got the real text
    events = [orjson.loads(line) for line in log.read_text().splitlines()]
    calls = [e for e in events if e["kind"] == "tool.call" and e["tool"] == "fs__read_file"]
    results = [e for e in events if e["kind"] == "tool.result" and e["tool"] == "fs__read_file"]
    assert len(calls) == 1 and len(results) == 1 and results[0]["is_error"] is False
    assert secret not in log.read_text()  # redacted in the sink


async def test_restart_budget_is_per_run_in_a_long_lived_process(tmp_path: Path) -> None:
    path = _workflow(tmp_path, "[fs]")
    path.write_text(path.read_text().replace("cwd: '", "max_restarts: 0, cwd: '"))
    wf = load_workflow_file(path)  # one workflow object, two runs on one event loop (as in a service)
    first = ScriptedModel([
        Rule("keeps failing", reply=text("gave up")),
        Rule("stopped during the call", reply=tool_call("fs__read_file", {"path": "note.txt"}), times=1),
        Rule(None, reply=tool_call("fs__crash", {}), times=1),
    ])
    assert (await baton.run(wf, "go", store="memory://", model=first)).output == "gave up"
    second = ScriptedModel([
        Rule("tangerine", reply=text("fine again")),
        Rule(None, reply=tool_call("fs__read_file", {"path": "note.txt"})),
    ])
    result = await baton.run(wf, "go", store="memory://", model=second)
    assert result.output == "fine again", _tool_results(second)
