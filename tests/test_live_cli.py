"""``baton run --stream`` and ``baton fork``, the real command in subprocesses over the fake API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from baton.testing import FakeAnthropicServer, Fault, text

ROOT = Path(__file__).resolve().parents[1]
FLOW = str(ROOT / "tests" / "flows" / "three_stage.yaml")
THIRD = "The third stage writes the final words, slowly and at length. " * 4


@pytest.fixture(scope="module")
def server() -> Iterator[FakeAnthropicServer]:
    srv = FakeAnthropicServer(api_key="test-key")
    srv.start_in_thread()
    yield srv
    srv.stop_thread()


@pytest.fixture
def fresh(server: FakeAnthropicServer) -> FakeAnthropicServer:
    server.reset()
    server.rules.clear()
    server.add_rule("FIRST", reply=text("first says one"))
    server.add_rule("SECOND", reply=text("second says two"))
    server.add_rule("THIRD", reply=text(THIRD))
    return server


def baton(tmp_path: Path, server: FakeAnthropicServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "BATON_"))}
    env.update({"ANTHROPIC_BASE_URL": server.url, "ANTHROPIC_API_KEY": "test-key",
                "BATON_STORE": f"sqlite:///{tmp_path}/cli.db", "PYTHONPATH": str(ROOT / "src")})
    return subprocess.run([sys.executable, "-m", "baton", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)


def test_run_stream_prints_text_as_generated_then_the_result(fresh: FakeAnthropicServer, tmp_path: Path) -> None:
    r = baton(tmp_path, fresh, "run", FLOW, "--input", "topic", "--stream", "--quiet")
    assert r.returncode == 0, r.stderr
    # Each agent's text, streamed, then the result (the final agent's text) once more.
    assert r.stdout == f"first says one\nsecond says two\n{THIRD}\n{THIRD.rstrip()}\n"
    assert "--- third ---" in r.stderr
    assert all(req.stream for req in fresh.requests)


def test_run_without_stream_does_not_stream(fresh: FakeAnthropicServer, tmp_path: Path) -> None:
    r = baton(tmp_path, fresh, "run", FLOW, "--input", "topic", "--json", "--quiet")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["output"].strip() == THIRD.strip()
    assert not any(req.stream for req in fresh.requests)


def test_resume_stream_prints_only_the_steps_it_executes(fresh: FakeAnthropicServer, tmp_path: Path) -> None:
    fresh.rules.clear()
    fresh.add_rule("FIRST", reply=text("first says one"))
    fresh.add_rule("SECOND", fault=Fault.status(400), times=1)
    fresh.add_rule("SECOND", reply=text("second says two"))
    fresh.add_rule("THIRD", reply=text(THIRD))
    r = baton(tmp_path, fresh, "run", FLOW, "--input", "topic", "--stream", "--quiet", "--json")
    assert r.returncode == 1 and r.stdout.startswith("first says one\n")
    run_id = json.loads(r.stdout[len("first says one\n"):])["run_id"]
    again = baton(tmp_path, fresh, "resume", run_id, "--stream", "--quiet")
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"second says two\n{THIRD}\n{THIRD.rstrip()}\n"  # the first stage is not printed again
