"""A tool cannot take a run down: hangs, exits, interrupts, odd or huge results, transient failures.

Each case runs the whole call path against the fake Messages API: the scripted model asks
for the tool, and the test checks the run's status and exit code, the error text, and
that the model was told (an ``is_error`` tool_result it can act on).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import baton
from baton.models.anthropic import AnthropicModel
from baton.observe.events import Event
from baton.runtime.breaker import BreakerRegistry
from baton.runtime.engine import Engine
from baton.runtime.ratelimit import RateGovernor
from baton.runtime.retry import RetryPolicy
from baton.spec import load_workflow_file
from baton.stores.sqlite import SQLiteStore
from baton.testing import FakeAnthropicServer, text, tool_call

ROOT = Path(__file__).resolve().parents[1]
QUICK = RetryPolicy(max_attempts=3, initial_delay_s=0.01, max_delay_s=0.02)
ONCE = RetryPolicy(max_attempts=1)



def engine(model: AnthropicModel, store: Any = None, **options: Any) -> Engine:
    return Engine(store=store or "memory://", model=model, governor=RateGovernor(), breakers=BreakerRegistry(),
                  **options)


def one_agent(agent: baton.Agent) -> Any:
    async def workflow(ctx: baton.RunContext, _: Any) -> str:
        return (await ctx.call(agent, "use the tool")).text

    return workflow


def tool_results(server: FakeAnthropicServer) -> list[dict[str, Any]]:
    """Every tool_result block the model was sent, in order."""
    found = []
    for r in server.requests:
        for m in (r.body or {}).get("messages", []):
            if isinstance(m.get("content"), list):
                found += [b for b in m["content"] if b.get("type") == "tool_result"]
    return found


# --- a result that is not JSON -------------------------------------------------------------------


async def test_a_result_that_is_not_json_is_a_tool_error_the_model_sees(server: FakeAnthropicServer,
                                                                      model: AnthropicModel) -> None:
    @baton.tool
    def tags(topic: str) -> Any:
        """Tags of a topic.

        Args:
            topic: the topic
        """
        return {"tags": {"a", "b"}}  # a set: orjson cannot encode it

    server.add_rule(r"not JSON", reply=text("the tool returned garbage"))
    server.add_rule(reply=tool_call("tags", {"topic": "x"}))
    result = await engine(model).run(one_agent(baton.Agent("a", model="claude-haiku-4-5", tools=[tags])))
    assert result.status == "succeeded", result.error
    assert result.output == "the tool returned garbage"
    [block] = tool_results(server)
    assert block["is_error"] is True
    assert "tool 'tags' returned a value that is not JSON (dict)" in block["content"]


# --- SystemExit ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_system_exit_in_a_tool_is_a_tool_error(server: FakeAnthropicServer, model: AnthropicModel,
                                                     tmp_path: Path, kind: str) -> None:
    def quit_now(code: int) -> str:
        """Exits.

        Args:
            code: exit status
        """
        raise SystemExit(code)

    async def quit_async(code: int) -> str:
        """Exits.

        Args:
            code: exit status
        """
        raise SystemExit(code)

    quitter = baton.tool(quit_now if kind == "sync" else quit_async, name="quitter")
    server.add_rule(r"SystemExit", reply=text("the tool tried to exit"))
    server.add_rule(reply=tool_call("quitter", {"code": 3}))
    store = SQLiteStore(f"sqlite:///{tmp_path}/runs.db")
    result = await engine(model, store).run(one_agent(baton.Agent("a", model="claude-haiku-4-5", tools=[quitter])))
    assert result.status == "succeeded", result.error
    [block] = tool_results(server)
    assert block["is_error"] is True
    assert "tool 'quitter' tried to exit the process (SystemExit: 3)" in block["content"]
    await store.open()
    try:
        assert (await store.get_run(result.run_id)).status == "succeeded"
    finally:
        await store.close()


# --- KeyboardInterrupt in an async tool ------------------------------------------------------------


async def test_keyboard_interrupt_in_an_async_tool_leaves_the_run_interrupted_not_running(
        server: FakeAnthropicServer, model: AnthropicModel, tmp_path: Path) -> None:
    calm: list[bool] = []

    @baton.tool
    async def poll(x: int) -> str:
        """Polls.

        Args:
            x: anything
        """
        if not calm:
            raise KeyboardInterrupt
        return "calm"

    server.add_rule(r"calm", reply=text("finished"))
    server.add_rule(reply=tool_call("poll", {"x": 1}))
    workflow = one_agent(baton.Agent("a", model="claude-haiku-4-5", tools=[poll]))
    store = SQLiteStore(f"sqlite:///{tmp_path}/runs.db")
    result = await engine(model, store).run(workflow, run_id="ki-async")
    assert result.status == "interrupted"
    assert result.error is not None and "tool 'poll' raised KeyboardInterrupt" in result.error["message"]
    await store.open()
    try:
        assert (await store.get_run("ki-async")).status == "interrupted"
    finally:
        await store.close()
    calm.append(True)
    resumed = await engine(model, store).resume("ki-async", workflow)
    assert resumed.status == "succeeded" and resumed.output == "finished"


# --- size cap ---------------------------------------------------------------------------------------


async def test_a_huge_result_is_cut_at_the_default_cap_saying_so(server: FakeAnthropicServer,
                                                                 model: AnthropicModel) -> None:
    @baton.tool
    def dump(what: str) -> str:
        """Dumps everything.

        Args:
            what: what to dump
        """
        return "x" * 3_000_000

    server.add_rule(r"truncated", reply=text("got a part"))
    server.add_rule(reply=tool_call("dump", {"what": "all"}))
    result = await engine(model).run(one_agent(baton.Agent("a", model="claude-haiku-4-5", tools=[dump])))
    assert result.status == "succeeded", result.error
    [block] = tool_results(server)
    content = block["content"]
    assert len(content) < 100_200
    assert content.startswith("x" * 100_000)
    assert content.endswith("[truncated: tool 'dump' returned 3000000 characters; the first 100000 are shown "
                            "(max_result_chars)]")


async def test_the_cap_is_a_yaml_setting_of_the_tool(server: FakeAnthropicServer, model: AnthropicModel,
                                                     tmp_path: Path) -> None:
    (tmp_path / "captools_mod.py").write_text("def listing(n: int) -> list:\n    return list(range(n))\n")
    wf = tmp_path / "cap.yaml"
    wf.write_text(textwrap.dedent("""\
        version: 1
        name: cap
        agents:
          a: {model: claude-haiku-4-5, tools: [listing]}
        tools:
          listing: {python: "captools_mod:listing", max_result_chars: 20}
        workflow: {pattern: agent, agent: a}
        """))
    sys.path.insert(0, str(tmp_path))
    try:
        workflow = load_workflow_file(str(wf))
    finally:
        sys.path.remove(str(tmp_path))
    server.add_rule(r"truncated", reply=text("short"))
    server.add_rule(reply=tool_call("listing", {"n": 1000}))
    result = await engine(model).run(workflow, "go")
    assert result.status == "succeeded", result.error
    [block] = tool_results(server)
    assert block["content"].startswith("[0,1,2,3,4,5,6,7,8,9")
    full = len(json.dumps(list(range(1000)), separators=(",", ":")))
    assert f"tool 'listing' returned {full} characters; the first 20 are shown (max_result_chars)" in block["content"]

    (tmp_path / "bad.yaml").write_text(wf.read_text().replace("max_result_chars: 20", "max_result_chars: 0"))
    with pytest.raises(baton.errors.WorkflowError, match="max_result_chars"):
        load_workflow_file(str(tmp_path / "bad.yaml"))


# --- transient failures and the agent's retry policy -------------------------------------------------


async def test_an_idempotent_tool_retries_transient_errors_under_the_agents_policy(
        server: FakeAnthropicServer, model: AnthropicModel) -> None:
    attempts: list[str] = []

    def flaky(sku: str) -> str:
        """Stock of a product.

        Args:
            sku: product id
        """
        attempts.append(sku)
        if len(attempts) < 3:
            raise ConnectionError("inventory connection reset")
        return "7 in stock"

    events: list[Event] = []

    class Capture:
        def handle(self, e: Event) -> None:
            events.append(e)

        def close(self) -> None:
            pass

    server.add_rule(r"in stock|Error", reply=text("done"))
    server.add_rule(reply=tool_call("flaky", {"sku": "A1"}))
    agent = baton.Agent("clerk", model="claude-haiku-4-5", tools=[baton.tool(flaky)], retry=QUICK)
    # The run's own policy allows no retry: only the agent's policy can explain a second attempt.
    result = await engine(model, retry=ONCE, sinks=[Capture()]).run(one_agent(agent))
    assert result.status == "succeeded", result.error
    assert len(attempts) == 3
    [block] = tool_results(server)
    assert block["content"] == "7 in stock" and not block.get("is_error")
    retries = [e.data for e in events if e.kind == "retry"]
    assert [(r["target"], r["attempt"]) for r in retries] == [("flaky", 1), ("flaky", 2)]


async def test_a_tool_that_is_not_idempotent_is_not_retried(server: FakeAnthropicServer,
                                                            model: AnthropicModel) -> None:
    attempts: list[str] = []

    def charge(card: str) -> str:
        """Charge a card.

        Args:
            card: card id
        """
        attempts.append(card)
        raise ConnectionError("payment gateway reset the connection")

    server.add_rule(r"Error", reply=text("payment failed"))
    server.add_rule(reply=tool_call("charge", {"card": "c1"}))
    agent = baton.Agent("till", model="claude-haiku-4-5", tools=[baton.tool(charge, idempotent=False)],
                        retry=QUICK)
    result = await engine(model).run(one_agent(agent))
    assert result.status == "succeeded", result.error
    assert attempts == ["c1"]
    [block] = tool_results(server)
    assert block["is_error"] and "ConnectionError: payment gateway reset the connection" in block["content"]


# --- the CLI: a hung sync tool, a KeyboardInterrupt --------------------------------------------------


@pytest.fixture(scope="module")
def threaded_server() -> Iterator[FakeAnthropicServer]:
    srv = FakeAnthropicServer(api_key="test-key")
    srv.start_in_thread()
    yield srv
    srv.stop_thread()


TOOLS_MODULE = '''
import os, time

def hang(seconds: int) -> str:
    """Never comes back in time."""
    time.sleep(seconds)
    return "woke up"

def stop(x: int) -> str:
    """Raises KeyboardInterrupt until told otherwise."""
    if os.environ.get("SAFETY_TOOL_CALM") != "1":
        raise KeyboardInterrupt
    return "calm"
'''

WORKFLOW = """\
version: 1
name: safety
agents:
  a: {{model: claude-haiku-4-5, max_tokens: 64, tools: [{tool}]}}
tools:
  hang: {{python: "safety_tools_mod:hang", timeout_s: 1}}
  stop: {{python: "safety_tools_mod:stop"}}
workflow: {{pattern: agent, agent: a}}
retry: {{max_attempts: 1}}
"""


def cli(tmp_path: Path, server: FakeAnthropicServer, *args: str, extra: dict[str, str] | None = None,
        ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "BATON_"))}
    env.update({"ANTHROPIC_BASE_URL": server.url, "ANTHROPIC_API_KEY": "test-key",
                "BATON_STORE": f"sqlite:///{tmp_path}/cli.db",
                "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(tmp_path)]), **(extra or {})})
    return subprocess.run([sys.executable, "-m", "baton", *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=150)


def test_a_hung_sync_tool_times_out_and_does_not_keep_the_process_alive(
        threaded_server: FakeAnthropicServer, tmp_path: Path) -> None:
    server = threaded_server
    server.reset()
    server.rules.clear()
    server.add_rule(r"timed out", reply=text("the tool hung"))
    server.add_rule(reply=tool_call("hang", {"seconds": 90}))
    (tmp_path / "safety_tools_mod.py").write_text(TOOLS_MODULE)
    (tmp_path / "wf.yaml").write_text(WORKFLOW.format(tool="hang"))
    t0 = time.monotonic()
    r = cli(tmp_path, server, "run", "wf.yaml", "--input", "go", "--json")
    elapsed = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["status"] == "succeeded" and out["output"] == "the tool hung"
    # Before: the process waited for the sleeping thread (90 s) after the run had ended.
    assert elapsed < 45, elapsed
    [block] = tool_results(server)
    assert block["is_error"] and "tool 'hang' timed out after 1" in block["content"]


def test_keyboard_interrupt_in_a_tool_stops_the_run_as_interrupted_and_resumable(
        threaded_server: FakeAnthropicServer, tmp_path: Path) -> None:
    server = threaded_server
    server.reset()
    server.rules.clear()
    server.add_rule(r"calm", reply=text("finished"))
    server.add_rule(reply=tool_call("stop", {"x": 1}))
    (tmp_path / "safety_tools_mod.py").write_text(TOOLS_MODULE)
    (tmp_path / "wf.yaml").write_text(WORKFLOW.format(tool="stop"))
    r = cli(tmp_path, server, "run", "wf.yaml", "--input", "go", "--json", "--run-id", "ki-run")
    assert r.returncode == 130, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    out = json.loads(r.stdout)
    assert out["status"] == "interrupted"
    assert "tool 'stop' raised KeyboardInterrupt" in out["error"]["message"]
    shown = json.loads(cli(tmp_path, server, "show", "ki-run", "--json").stdout)
    assert shown["status"] == "interrupted"  # never left "running"

    resumed = cli(tmp_path, server, "resume", "ki-run", "--json", extra={"SAFETY_TOOL_CALM": "1"})
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["output"] == "finished"
