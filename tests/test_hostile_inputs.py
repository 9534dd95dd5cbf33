"""Hostile and careless inputs, replayed as a whole (issue 13, entry points and inputs).

Every try runs the real ``baton`` command in a subprocess (against the fake Messages API
where a model is needed) and checks the contract of DESIGN.md "Security model": stored
data never selects code; a workflow's folder never shadows installed modules; every bad
input gets one clear line and a stable exit code, never a traceback or a secret, and
leaves no run ``running``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import baton
from baton.errors import UsageError
from baton.stores import open_store
from baton.stores.base import RunRecord
from baton.testing import FakeAnthropicServer, text

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = """\
version: 1
name: hello
agents:
  a: {model: claude-haiku-4-5, system: "You answer."}
  b: {model: claude-haiku-4-5, system: "You polish."}
workflow: {pattern: pipeline, stages: [a, b]}
"""


@pytest.fixture(scope="module")
def server():
    srv = FakeAnthropicServer(api_key="test-key")
    srv.start_in_thread()
    yield srv
    srv.stop_thread()


@pytest.fixture
def api(server: FakeAnthropicServer) -> FakeAnthropicServer:
    server.reset()
    server.rules.clear()
    server.add_rule(None, reply=text("fine"))
    return server


def env_for(tmp_path: Path, server: FakeAnthropicServer | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "BATON_"))}
    env.update({"BATON_STORE": f"sqlite:///{tmp_path}/runs.db",
                "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), str(tmp_path)])})
    if server is not None:
        env.update({"ANTHROPIC_BASE_URL": server.url, "ANTHROPIC_API_KEY": "test-key"})
    env.update(extra)
    return env


def cli(tmp_path: Path, *args: str, server: FakeAnthropicServer | None = None, cwd: Path | None = None,
        timeout: float = 120, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "baton", *args], capture_output=True, text=True,
                          env=env_for(tmp_path, server, **extra), cwd=cwd or tmp_path, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def refused(r: subprocess.CompletedProcess[str], *words: str, code: int = 2) -> None:
    """Exit ``code``, one ``baton`` line on stderr naming ``words``, no traceback."""
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and all(line.startswith("baton") for line in lines), r.stderr  # notes may precede it
    for word in words:
        assert word in errors[0], (word, errors[0])


def runs(tmp_path: Path) -> list[dict[str, Any]]:
    r = cli(tmp_path, "runs", "--json")
    assert r.returncode == 0, r.stderr
    listed: list[dict[str, Any]] = json.loads(r.stdout)
    return listed


def put_row(tmp_path: Path, record: RunRecord) -> None:
    async def put() -> None:
        store = open_store(f"sqlite:///{tmp_path}/runs.db")
        await store.open()
        try:
            await store.create_run(record)
        finally:
            await store.close()

    asyncio.run(put())


# --- stored data never selects code ---------------------------------------------------


def test_a_run_row_naming_a_module_is_never_imported_by_resume_or_replay(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (tmp_path / "evilmod.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\n"
                                         "async def wf(ctx, input):\n    return 1\n")
    # pydoc.pipepager(text, cmd) runs cmd in a shell: a row only has to name it.
    put_row(tmp_path, RunRecord("pager", "py:pydoc:pipepager", f"touch {marker}", status="interrupted"))
    put_row(tmp_path, RunRecord("evil", "py:evilmod:wf", None, status="interrupted"))
    put_row(tmp_path, RunRecord("odd", "exec:rm -rf /", None, status="failed"))
    for run_id in ("pager", "evil"):
        for command in ("resume", "replay"):
            refused(cli(tmp_path, command, run_id), "never imports code named by stored data", "--workflow")
    refused(cli(tmp_path, "resume", "odd"), "not registered")
    time.sleep(0.5)  # a shell command started by the old code would have run by now
    assert not marker.exists()
    assert {r["run_id"]: r["status"] for r in runs(tmp_path)} == {"pager": "interrupted", "evil": "interrupted",
                                                                  "odd": "failed"}

    with pytest.raises(UsageError, match="never imports code"):
        asyncio.run(baton.resume("pager", store=f"sqlite:///{tmp_path}/runs.db"))
    with pytest.raises(UsageError, match="never imports code"):
        asyncio.run(baton.replay("evil", store=f"sqlite:///{tmp_path}/runs.db"))
    assert not marker.exists()


def test_a_workflow_file_resumes_only_while_its_content_is_what_the_run_recorded(api: FakeAnthropicServer,
                                                                                 tmp_path: Path) -> None:
    wf = tmp_path / "wf.yaml"
    wf.write_text(WORKFLOW)
    r = cli(tmp_path, "run", str(wf), "--input", "x", "--json", "--quiet", "--budget-usd", "0.0000001", server=api)
    assert r.returncode == 3, r.stderr  # stopped by the budget: resumable
    run_id = json.loads(r.stdout)["run_id"]

    wf.write_text(WORKFLOW + "# edited after the run started\n")
    refused(cli(tmp_path, "resume", run_id, server=api), "has changed since run", f"--workflow {wf}")
    refused(cli(tmp_path, "replay", run_id, server=api), "has changed since run")
    assert [x["status"] for x in runs(tmp_path)] == ["budget_exceeded"]

    r = cli(tmp_path, "resume", run_id, "--workflow", str(wf), "--json", "--quiet", "--budget-usd", "1", server=api)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "succeeded"
    r = cli(tmp_path, "replay", run_id, server=api)  # the file now matches what the resume recorded
    assert r.returncode == 0, r.stderr

    put_row(tmp_path, RunRecord("nohash", f"yaml:{wf}", "x", status="failed"))
    refused(cli(tmp_path, "resume", "nohash", server=api), "no content hash")


async def flaky(ctx: Any, input: Any) -> Any:
    """Fails on its first run, succeeds on the next (a resumable failure)."""
    FLAKY["calls"] += 1
    if FLAKY["calls"] == 1:
        raise RuntimeError("first time fails")
    return await ctx.step("answer", lambda: f"ok {input}")


FLAKY = {"calls": 0}


async def test_python_workflows_resume_when_named_or_registered() -> None:
    store = open_store("memory://")
    await store.open()
    first = await baton.run(flaky, "x", store=store)
    assert first.status == "failed"
    with pytest.raises(UsageError, match="never imports code named by stored data"):
        await baton.resume(first.run_id, store=store)
    baton.register_workflow(flaky)
    again = await baton.resume(first.run_id, store=store)
    assert again.status == "succeeded" and again.output == "ok x"
    assert baton.register_workflow(flaky) is flaky  # again: the same object is fine

    async def one(ctx: Any, input: Any) -> Any:
        return 1

    async def other(ctx: Any, input: Any) -> Any:
        return 2

    with pytest.raises(UsageError, match="give it a name"):
        baton.register_workflow(one)  # defined in a function: no module path to record
    baton.register_workflow(one, name="hostile-one")
    with pytest.raises(UsageError, match="already registered"):
        baton.register_workflow(other, name="hostile-one")
    with pytest.raises(UsageError, match="takes two arguments"):
        baton.register_workflow(lambda ctx: None, name="hostile-bad")
    named = await baton.run(one, None, store=store)
    assert (await store.get_run(named.run_id)).workflow == "registered:hostile-one"

    async def one_arg(ctx: Any) -> Any:
        return 1

    listed = len(await store.list_runs(100))
    with pytest.raises(UsageError, match="takes two arguments"):
        await baton.run(one_arg, None, store=store, run_id="wrong-signature")
    assert len(await store.list_runs(100)) == listed  # refused before anything was recorded


# --- the workflow folder is not first on sys.path -------------------------------------


def test_a_file_beside_the_workflow_does_not_shadow_an_installed_module(tmp_path: Path) -> None:
    folder = tmp_path / "wf"
    folder.mkdir()
    marker = tmp_path / "shadowed"
    (folder / "colorsys.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n"
                                        "def hls_to_rgb(h, l, s):\n    return 0\n")
    (folder / "mytools.py").write_text("def shout(text: str) -> str:\n    '''Shout.'''\n    return text.upper()\n")
    (folder / "wf.yaml").write_text(textwrap.dedent("""\
        version: 1
        name: shadow
        tools:
          colors: {python: "colorsys:hls_to_rgb", description: "convert a colour"}
          shout: {python: "mytools:shout"}
        agents:
          a: {model: claude-haiku-4-5, system: "You answer.", tools: [colors, shout]}
        workflow: {pattern: agent, agent: a}
        """))
    for cwd in (tmp_path, folder):  # python -m puts the current folder first: baton drops it
        r = cli(tmp_path, "validate", str(folder / "wf.yaml"), cwd=cwd)
        assert r.returncode == 0, r.stderr  # tools beside the file still load (mytools)
        assert not marker.exists(), f"colorsys.py beside the workflow shadowed the standard module (cwd {cwd})"


# --- files and inputs must not take the process down ----------------------------------


def alias_bomb(levels: int = 12) -> str:
    lines = ["version: 1", "a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_hostile_workflow_files_get_one_line_fast(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb())
    assert bomb.stat().st_size < 700  # 9**12 values once expanded
    t0 = time.monotonic()
    refused(cli(tmp_path, "validate", str(bomb), timeout=60), "expands to more than")
    assert time.monotonic() - t0 < 30  # seconds, not minutes and gigabytes

    cyclic = tmp_path / "cyclic.yaml"
    cyclic.write_text("version: 1\na: &a [x, *a]\n")
    refused(cli(tmp_path, "validate", str(cyclic)), "nesting deeper than")

    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    refused(cli(tmp_path, "validate", str(deep)), "nesting deeper than")

    big = tmp_path / "big.yaml"
    big.write_text("version: 1\n" + "# padding\n" * 250_000)
    refused(cli(tmp_path, "validate", str(big)), "larger than")

    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"version: 1\nname: caf\xe9\n")
    refused(cli(tmp_path, "validate", str(latin)), "not UTF-8", f"{latin}:2")

    (tmp_path / "brokenmod.py").write_text("raise RuntimeError('boom at import')\n")
    tool_wf = tmp_path / "tool.yaml"
    tool_wf.write_text(WORKFLOW.replace("agents:", "tools:\n  t: {python: \"brokenmod:f\"}\nagents:"))
    refused(cli(tmp_path, "validate", str(tool_wf)), "brokenmod", "boom at import")
    refused(cli(tmp_path, "run", str(tool_wf), "--input", "x"), "brokenmod")
    assert runs(tmp_path) == []


def test_hostile_cli_arguments_get_one_line_and_leave_no_run_running(api: FakeAnthropicServer,
                                                                      tmp_path: Path) -> None:
    wf = tmp_path / "wf.yaml"
    wf.write_text(WORKFLOW)
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    refused(cli(tmp_path, "run", str(wf), "--input-file", str(binary), server=api), "not UTF-8")
    nul = tmp_path / "nul.txt"
    nul.write_bytes(b"text\x00more")
    refused(cli(tmp_path, "run", str(wf), "--input-file", str(nul), server=api), "NUL")
    refused(cli(tmp_path, "run", str(wf), "--input-file", str(tmp_path), server=api), "cannot read --input-file")
    for port in ("99999", "-1", "http"):
        refused(cli(tmp_path, "run", str(wf), "--input", "x", "--metrics-port", port, server=api), "--metrics-port")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        refused(cli(tmp_path, "run", str(wf), "--input", "x", "--metrics-port", port, server=api),
                "cannot serve metrics", port)

    refused(cli(tmp_path, "runs", "--limit", "-1"), "--limit", "out of range")
    refused(cli(tmp_path, "stats", "--limit", "99999999999999999999"), "--limit")
    refused(cli(tmp_path, "validate", str(wf), "--assume-input-tokens", "-5"), "--assume-input-tokens")

    (tmp_path / "flows.py").write_text("async def one(ctx):\n    return 1\nCONSTANT = 5\n")
    refused(cli(tmp_path, "run", "flows:one", "--input", "x", server=api), "takes two arguments")
    refused(cli(tmp_path, "run", "flows:CONSTANT", "--input", "x", server=api), "not a function")
    refused(cli(tmp_path, "run", "flows:missing", "--input", "x", server=api), "cannot import workflow")
    refused(cli(tmp_path, "run", "no_such_module:wf", "--input", "x", server=api), "cannot import workflow")
    refused(cli(tmp_path, "runs", "--store", "redis://:hunter2@host:notaport/0"), "malformed Redis")
    refused(cli(tmp_path, "runs", "--store", "postgresql://u:hunter2@[broken/db"), "malformed PostgreSQL")
    refused(cli(tmp_path, "runs", "--store", "nonsense"), "malformed store URL")
    assert runs(tmp_path) == []  # nothing was recorded, so nothing is left running

    (tmp_path / "sync_flow.py").write_text("def wf(ctx, input):\n    return 1\n")
    r = cli(tmp_path, "run", "sync_flow:wf", "--input", "x", "--run-id", "sync", server=api)
    assert r.returncode == 1 and "not an awaitable" in r.stderr and "Traceback" not in r.stderr
    assert [(x["run_id"], x["status"]) for x in runs(tmp_path)] == [("sync", "failed")]


def test_a_reader_that_goes_away_ends_the_output_quietly(api: FakeAnthropicServer, tmp_path: Path) -> None:
    for i in range(3):
        put_row(tmp_path, RunRecord(f"run-{i}", "yaml:/nowhere.yaml", "x" * 10, status="succeeded"))
    for args in (("runs",), ("show", "run-0"), ("runs", "--json")):
        proc = subprocess.Popen([sys.executable, "-m", "baton", *args], env=env_for(tmp_path), cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        proc.stdout.close()  # like `baton runs | head` once head has its line: the reader is gone
        _, err = proc.communicate(timeout=60)
        assert "Traceback" not in err and "BrokenPipe" not in err, err
        assert proc.returncode == 0, err


# --- no secret in any message ---------------------------------------------------------


def test_url_passwords_never_show_on_stderr_json_or_show(api: FakeAnthropicServer, tmp_path: Path) -> None:
    wf = tmp_path / "wf.yaml"
    wf.write_text(WORKFLOW)
    with socket.socket() as s:  # a port nobody listens on: connection refused, fast
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    r = cli(tmp_path, "run", str(wf), "--input", "x", "--json", "--run-id", "leak",
            ANTHROPIC_BASE_URL=f"http://user:hunter2@127.0.0.1:{dead}", ANTHROPIC_API_KEY="test-key")
    assert r.returncode == 1, r.stderr
    assert "cannot connect" in r.stdout and "***@127.0.0.1" in r.stdout
    shown = [cli(tmp_path, "show", "leak"), cli(tmp_path, "show", "leak", "--json")]
    for out in [r, *shown]:
        assert "hunter2" not in out.stdout + out.stderr
    for url in ("postgresql://u:hunter2@[broken/db", "postgresql://u:hunter2/x@127.0.0.1:1/db",
                "redis://:hunter2@host:notaport/0"):
        for args in (("runs",), ("runs", "--json")):
            out = cli(tmp_path, *args, "--store", url, timeout=60)
            assert out.returncode in (1, 2) and "Traceback" not in out.stderr, out.stderr
            assert "hunter2" not in out.stdout + out.stderr, out.stdout + out.stderr


# --- approve decides only a step that is waiting --------------------------------------


def test_approve_refuses_runs_and_steps_that_are_not_waiting(api: FakeAnthropicServer, tmp_path: Path) -> None:
    flow = ("tests.flows.approval:announce",)
    done = cli(tmp_path, "run", str(ROOT / "examples/agent/calculator.yaml"), "--input", "2+2", "--json",
               "--quiet", server=api)
    done_id = json.loads(done.stdout)["run_id"]
    paused = cli(tmp_path, "run", *flow, "--input", "launch", "--json", "--quiet", server=api, cwd=ROOT)
    assert paused.returncode == 4, paused.stderr
    paused_id = json.loads(paused.stdout)["run_id"]
    before = {i: cli(tmp_path, "show", i, "--json").stdout for i in (done_id, paused_id)}

    refused(cli(tmp_path, "approve", done_id, "1.agent:solver#decision"), "not awaiting approval")
    refused(cli(tmp_path, "approve", done_id, "x#decision", "--reject"), "not awaiting approval")
    refused(cli(tmp_path, "approve", paused_id, "x#decision"), "is not awaiting a decision", "waiting:")
    refused(cli(tmp_path, "approve", paused_id, "9.approval:nope"), "is not awaiting a decision")
    after = {i: cli(tmp_path, "show", i, "--json").stdout for i in (done_id, paused_id)}
    assert after == before  # nothing written

    step = json.loads(before[paused_id])["awaiting"][0]
    ok = cli(tmp_path, "approve", paused_id, step, "--resume", "--json", "--workflow", *flow, server=api, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    refused(cli(tmp_path, "approve", paused_id, step), "not awaiting approval")


# --- SIGTERM is an interrupt ----------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_interrupts_resumably_and_json_still_prints(server: FakeAnthropicServer, tmp_path: Path,
                                                             sig: signal.Signals) -> None:
    server.reset()
    server.rules.clear()
    server.add_rule(r"draft announcements", reply=text("slow draft"), latency_s=30, times=1)
    server.add_rule(r"draft announcements", reply=text("fast draft"))
    cmd = [sys.executable, "-m", "baton", "run", "tests.flows.approval:announce", "--input", "x", "--json",
           "--quiet", "--run-id", "sig-run"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env_for(tmp_path, server), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not server.requests and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    printed = json.loads(out)
    assert printed["run_id"] == "sig-run" and printed["status"] == "interrupted"
    assert json.loads(cli(tmp_path, "show", "sig-run", "--json").stdout)["status"] == "interrupted"
    r = cli(tmp_path, "resume", "sig-run", "--json", "--workflow", "tests.flows.approval:announce", server=server,
            cwd=ROOT)
    assert r.returncode == 4, r.stderr  # resumed: the draft is made again, now it awaits approval


# --- run ids --------------------------------------------------------------------------


def test_run_ids_are_checked_where_they_enter_and_escaped_where_shown(api: FakeAnthropicServer,
                                                                      tmp_path: Path) -> None:
    wf = tmp_path / "wf.yaml"
    wf.write_text(WORKFLOW)
    for bad in ("a\x1b]0;pwned\x07b", "x" * 100_000, "two\nlines", "", "a b", "../../etc"):
        refused(cli(tmp_path, "run", str(wf), "--input", "x", "--run-id", bad, server=api), "invalid --run-id")
    refused(cli(tmp_path, "show", "bad\x1b[2J"), "invalid run id")
    assert runs(tmp_path) == []
    with pytest.raises(UsageError, match="invalid run_id"):
        asyncio.run(baton.run(flaky, "x", run_id="evil\x1b[31m", store="memory://"))

    put_row(tmp_path, RunRecord("esc\x1b]0;owned\x07\x1b[2J\nforged", "yaml:\x1b[31mred", None, status="failed"))
    r = cli(tmp_path, "runs")
    assert r.returncode == 0
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout and "\\x1b" in r.stdout
    assert len(r.stdout.strip().splitlines()) == 2  # header + one row: no forged line


# --- the Python API closes what it opened ---------------------------------------------


def test_the_python_api_leaves_no_unclosed_http_session(api: FakeAnthropicServer, tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(f"""\
        import asyncio, baton

        agent = baton.Agent("a", system="You answer.", model="claude-haiku-4-5")

        async def wf(ctx, topic):
            return (await ctx.call(agent, topic)).output

        async def main():
            for _ in range(2):
                r = await baton.run(wf, "hi", store="sqlite:///{tmp_path}/api.db", provider="anthropic")
                print(r.status)

        asyncio.run(main())
        print(baton.run_sync(wf, "again", store="sqlite:///{tmp_path}/api.db", provider="anthropic").status)
        """))
    r = subprocess.run([sys.executable, "-X", "dev", str(script)], capture_output=True, text=True,
                       env=env_for(tmp_path, api), cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["succeeded"] * 3
    assert "Unclosed" not in r.stderr, r.stderr
