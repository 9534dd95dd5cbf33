"""A planted API key and a marked secret in a tool argument reach no log, span, metric,
journal row or CLI output (content capture off), through the real CLI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from baton.testing import FakeAnthropicServer, Rule, text, tool_call

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "sk-ant-api03-PLANTEDkey0123456789abcdefghijklmnopqrstuvwxyzABCDEFGH-planted"
MARKED = "MARKED-7f3a9c1e"
STORE_KEY = "Cq1PqgQ8Zl0uV2u7q3V3nS2x8v7bq0cQkzJ0y9i2Y3w="


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(120)
def test_planted_secrets_never_leave_the_process(tmp_path: Path) -> None:
    server = FakeAnthropicServer(api_key=API_KEY, rules=[
        Rule(r"research supply[\s\S]*No stored notes", reply=text("final notes"), latency_s=2.0),
        Rule(r"research supply", reply=tool_call("lookup_facts", {"topic": f"{MARKED} batteries"})),
    ])
    server.start_in_thread()
    try:
        wf = tmp_path / "wf.yaml"
        wf.write_text(
            "version: 1\nname: secrets\nagents:\n  researcher:\n    model: claude-haiku-4-5\n"
            "    system: You research supply.\n    tools: [lookup_facts]\n"
            "tools:\n  lookup_facts: {python: 'baton.sample_tools:lookup_facts'}\n"
            "workflow: {pattern: agent, agent: researcher}\n")
        db = tmp_path / "runs.db"
        log = tmp_path / "events.jsonl"
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "BATON_"))}
        # The journal stores what happened (the tool argument included); stored content is
        # protected by encryption at rest, not by rewriting it.
        env.update({"ANTHROPIC_API_KEY": API_KEY, "ANTHROPIC_BASE_URL": server.url, "CUSTOMER_SECRET": MARKED,
                    "BATON_STORE": f"sqlite:///{db}", "BATON_STORE_KEY": STORE_KEY})
        cmd = [sys.executable, "-m", "baton", "run", str(wf), "--input", "go", "--json", "--capture", "none",
               "--log-jsonl", str(log), "--trace", "console", "--metrics-port", str(port), "--run-id", "secret-run"]
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        scraped = ""
        deadline = time.time() + 30
        while proc.poll() is None and time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as resp:
                    body = resp.read().decode()
                if "baton_model_calls_total{" in body:
                    scraped = body
            except OSError:
                pass
            time.sleep(0.1)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-2000:]
        # The secret was really in play: the model's tool call carried it back to the API.
        assert MARKED in str([r.body for r in server.requests])
        show = subprocess.run([sys.executable, "-m", "baton", "show", "secret-run", "--json"], cwd=tmp_path,
                              env=env, capture_output=True, text=True)
        show_text = subprocess.run([sys.executable, "-m", "baton", "show", "secret-run"], cwd=tmp_path,
                                   env=env, capture_output=True, text=True)
        assert show.returncode == 0 and show_text.returncode == 0
        assert scraped, "the metrics endpoint was never scraped while the run was live"
        sinks = {
            "stdout": out, "stderr (progress + console spans)": err, "jsonl": log.read_text(),
            "metrics": scraped, "journal db (encrypted)": b"".join(p.read_bytes() for p in tmp_path.glob("runs.db*")).decode(
                "utf-8", "replace"),
            "show --json": show.stdout, "show": show_text.stdout,
        }
        assert "gen_ai" in err  # console spans were really written
        for where, content in sinks.items():
            assert API_KEY not in content, f"API key leaked into {where}"
            assert MARKED not in content, f"marked secret leaked into {where}"
    finally:
        server.stop_thread()
