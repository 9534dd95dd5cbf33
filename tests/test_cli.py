"""The CLI contract: exit codes, --json, validate, show/runs/stats/replay, approve, resume.

Runs the real ``baton`` command in subprocesses against the fake Messages-API server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from baton.testing import FakeAnthropicServer, Fault, text, tool_call

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*/*.yaml"))


@pytest.fixture(scope="module")
def server():
    srv = FakeAnthropicServer(api_key="test-key")
    srv.start_in_thread()
    yield srv
    srv.stop_thread()


def baton(*args: str, env_extra: dict[str, str] | None = None, cwd: Path | None = None,
          timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "BATON_"))}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "baton", *args], capture_output=True, text=True, env=env,
                          cwd=cwd or ROOT, timeout=timeout)


def api_env(server: FakeAnthropicServer, tmp_path: Path) -> dict[str, str]:
    return {"ANTHROPIC_BASE_URL": server.url, "ANTHROPIC_API_KEY": "test-key",
            "BATON_STORE": f"sqlite:///{tmp_path}/cli.db",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}  # this checkout, not an installed copy


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.parent.name)
def test_every_example_validates(path: Path) -> None:
    r = baton("validate", str(path), "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["valid"] and report["worst_case"]["model_calls"] > 0 and report["worst_case"]["usd"] > 0


def test_invalid_workflows_exit_2_naming_file_line_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: x\nagents:\n  a:\n    model: m\n    sytem: hi\nworkflow: {pattern: agent, agent: a}\n")
    r = baton("validate", str(bad))
    assert r.returncode == 2
    assert f"{bad}:6: agents.a.sytem: unknown field 'sytem'" in r.stderr

    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\nname: x\n  oops: [\n")
    r = baton("validate", str(broken))
    assert r.returncode == 2 and f"{broken}:3" in r.stderr and "invalid YAML" in r.stderr

    refs = tmp_path / "refs.yaml"
    refs.write_text("version: 1\nname: x\nagents:\n  a: {tools: [nope]}\n"
                    "workflow: {pattern: pipeline, stages: [a, ghost]}\n")
    r = baton("validate", str(refs), "--json")
    assert r.returncode == 2
    problems = json.loads(r.stdout)["error"]["problems"]
    messages = {(p["line"], p["field"], p["message"]) for p in problems}
    assert (4, "agents.a.tools[0]", "agent 'a' uses unknown tool 'nope'") in messages
    assert any(f == "workflow.stages[1]" and "unknown agent 'ghost'" in m for _, f, m in messages)


def test_run_single_agent_with_tool_json_contract(server: FakeAnthropicServer, tmp_path: Path) -> None:
    server.reset()
    server.rules.clear()
    server.add_rule(r"calculator.*\n.*42", reply=text("The answer is 42."))
    server.add_rule(r"solve arithmetic", reply=tool_call("calculator", {"expression": "6*7"}))
    r = baton("run", "examples/agent/calculator.yaml", "--input", "What is 6 times 7?", "--json",
              env_extra=api_env(server, tmp_path))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out) == {"run_id", "status", "output", "usage", "cost_usd", "model_calls", "duration_s", "error",
                        "warnings"}
    assert out["status"] == "succeeded" and out["output"] == "The answer is 42." and out["model_calls"] == 2
    assert set(out["usage"]) >= {"input_tokens", "output_tokens", "cache_read_input_tokens",
                                 "cache_creation_input_tokens"}
    assert out["cost_usd"] > 0
    assert len(server.requests) == 2  # tool loop: two requests, no hidden retries
    second = server.requests[1].body["messages"][-1]["content"][0]
    assert second["type"] == "tool_result" and second["content"] == "42.0"

    show = baton("show", out["run_id"], "--json", env_extra=api_env(server, tmp_path))
    tree = json.loads(show.stdout)
    assert tree["status"] == "succeeded" and tree["transitions"][-1]["status"] == "succeeded"
    agent = tree["steps"][0]
    assert agent["kind"] == "agent" and agent["name"] == "solver"
    assert [c["kind"] for c in agent["children"]] == ["model", "tool", "model"]
    assert agent["children"][0]["prompt_version"] and agent["children"][0]["usage"]["input_tokens"] > 0
    assert "test-key" not in show.stdout

    runs = json.loads(baton("runs", "--json", env_extra=api_env(server, tmp_path)).stdout)
    assert out["run_id"] in [r["run_id"] for r in runs]
    stats = json.loads(baton("stats", "--json", env_extra=api_env(server, tmp_path)).stdout)
    assert stats["runs"] >= 1 and stats["cost_by_model"]["claude-haiku-4-5"]["calls"] >= 2
    assert stats["prompt_versions"][0]["agent"] == "solver"
    replay = baton("replay", out["run_id"], env_extra=api_env(server, tmp_path))
    assert replay.returncode == 0 and "matches the journal" in replay.stdout
    assert len(server.requests) == 2  # replay made no model calls


def test_budget_exit_3_then_resume_with_more_budget(server: FakeAnthropicServer, tmp_path: Path) -> None:
    server.reset()
    server.rules.clear()
    server.add_rule(r"calculator.*\n.*42", reply=text("42"))
    server.add_rule(r"solve arithmetic", reply=tool_call("calculator", {"expression": "6*7"}))
    env = api_env(server, tmp_path)
    r = baton("run", "examples/agent/calculator.yaml", "--input", "6*7?", "--json", "--budget-usd", "0.001",
              env_extra=env)
    assert r.returncode == 3, r.stderr
    out = json.loads(r.stdout)
    assert out["status"] == "budget_exceeded" and out["error"]["type"] == "BudgetExceeded"
    sent = len(server.requests)
    r2 = baton("resume", out["run_id"], "--budget-usd", "1", "--json", env_extra=env)
    assert r2.returncode == 0, r2.stderr
    assert json.loads(r2.stdout)["output"] == "42"
    assert len(server.requests) == sent + 2 - out["model_calls"]


def test_approval_exit_4_then_approve_and_resume(server: FakeAnthropicServer, tmp_path: Path) -> None:
    server.reset()
    server.rules.clear()
    server.add_rule(r"draft announcements", reply=text("We launched."))
    env = api_env(server, tmp_path)
    r = baton("run", "tests.flows.approval:announce", "--input", "launch", "--json", env_extra=env)
    assert r.returncode == 4, r.stderr
    run_id = json.loads(r.stdout)["run_id"]
    shown = json.loads(baton("show", run_id, "--json", env_extra=env).stdout)
    assert shown["status"] == "awaiting_approval" and len(shown["awaiting"]) == 1
    step = shown["awaiting"][0]
    a = baton("approve", run_id, step, "--edit", "We launched today.", "--resume", "--json",
              "--workflow", "tests.flows.approval:announce", env_extra=env)
    assert a.returncode == 0, a.stderr
    assert json.loads(a.stdout)["output"] == {"published": True, "text": "We launched today."}
    assert len(server.requests) == 1


def test_provider_errors_fail_with_exit_1_and_no_secret_in_output(server: FakeAnthropicServer,
                                                                 tmp_path: Path) -> None:
    server.reset()
    server.rules.clear()
    server.add_rule(None, fault=Fault.status(400, "invalid_request_error", message="bad request body"))
    env = api_env(server, tmp_path)
    r = baton("run", "examples/agent/calculator.yaml", "--input", "x", "--json", env_extra=env)
    assert r.returncode == 1
    out = json.loads(r.stdout)
    assert out["status"] == "failed" and out["error"]["status"] == 400 and out["error"]["retryable"] is False
    assert len(server.requests) == 1  # 400 is not retried
    assert "test-key" not in r.stdout + r.stderr


def test_sigint_interrupts_with_exit_130_and_resume_completes(server: FakeAnthropicServer, tmp_path: Path) -> None:
    server.reset()
    server.rules.clear()
    server.add_rule(r"draft announcements", reply=text("slow draft"), latency_s=30, times=1)
    server.add_rule(r"draft announcements", reply=text("fast draft"))
    env = api_env(server, tmp_path)
    cmd = [sys.executable, "-m", "baton", "run", "tests.flows.approval:announce", "--input", "x", "--json",
           "--run-id", "sigint-run"]
    full_env = {**{k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "BATON_"))}, **env}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while not server.requests and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    shown = json.loads(baton("show", "sigint-run", "--json", env_extra=env).stdout)
    assert shown["status"] == "interrupted"
    r = baton("resume", "sigint-run", "--json", "--workflow", "tests.flows.approval:announce", env_extra=env)
    assert r.returncode == 4  # resumed, called the model again (in flight), now awaits approval
    assert json.loads(r.stdout)["status"] == "awaiting_approval"


def test_no_input_is_a_usage_error(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "baton", "run", "examples/agent/calculator.yaml"], cwd=ROOT,
                       capture_output=True, text=True, stdin=subprocess.DEVNULL,
                       env={**os.environ, "BATON_STORE": f"sqlite:///{tmp_path}/x.db"})
    assert r.returncode == 2 and "no input" in r.stderr
