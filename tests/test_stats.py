"""`baton stats` counts every agent call, and blames a failure on the agent and prompt version
that failed (not on every agent that ran in the failed run).

Two runs of a researcher -> writer pipeline against the fake Messages API: in the first the
writer's call fails (a 400 the run does not retry), in the second both succeed.
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
from baton.cli.views import stats_json, stats_text
from baton.models.anthropic import AnthropicModel
from baton.runtime.breaker import BreakerRegistry
from baton.runtime.engine import Engine
from baton.runtime.ratelimit import RateGovernor
from baton.runtime.retry import RetryPolicy
from baton.stores.sqlite import SQLiteStore
from baton.testing import FakeAnthropicServer, Fault, text

ROOT = Path(__file__).resolve().parents[1]
HAIKU = "claude-haiku-4-5"
researcher = baton.Agent("researcher", system="You research.", model=HAIKU)
writer = baton.Agent("writer", system="You write.", model=HAIKU)


async def pipeline(ctx: baton.RunContext, topic: str) -> str:
    notes = await ctx.call(researcher, topic)
    return (await ctx.call(writer, notes.text)).text


@pytest.fixture
async def store_url(tmp_path: Path) -> AsyncIterator[str]:
    url = f"sqlite:///{tmp_path}/runs.db"
    async with FakeAnthropicServer() as server:
        model = AnthropicModel(api_key="sk-test", base_url=server.url)
        engine = Engine(store=url, model=model, governor=RateGovernor(), breakers=BreakerRegistry(),
                        retry=RetryPolicy(max_attempts=1))
        server.add_rule(r"You research", reply=text("notes"))
        server.add_rule(r"You write", times=1, fault=Fault.status(400, "invalid_request_error"))
        server.add_rule(r"You write", reply=text("article"))
        failed = await engine.run(pipeline, "topic one")
        ok = await engine.run(pipeline, "topic two")
        await model.aclose()
    assert (failed.status, ok.status) == ("failed", "succeeded")
    yield url


async def load(url: str) -> dict[str, Any]:
    store = SQLiteStore(url)
    await store.open()
    try:
        runs = await store.list_runs(100)
        return stats_json(runs, {r.run_id: await store.load_steps(r.run_id) for r in runs})
    finally:
        await store.close()


async def test_failures_are_counted_per_agent_and_prompt_version(store_url: str) -> None:
    stats = await load(store_url)
    versions = {v["agent"]: v for v in stats["prompt_versions"]}
    assert versions["researcher"]["prompt_version"] == researcher.prompt_version
    assert (versions["researcher"]["calls"], versions["researcher"]["failures"],
            versions["researcher"]["failure_rate"]) == (2, 0, 0.0)
    assert versions["writer"]["prompt_version"] == writer.prompt_version
    assert (versions["writer"]["calls"], versions["writer"]["failures"], versions["writer"]["failure_rate"],
            versions["writer"]["failed_runs"]) == (2, 1, 0.5, 1)
    agents = {a["agent"]: a for a in stats["agents"]}
    assert (agents["writer"]["calls"], agents["writer"]["failures"]) == (2, 1)  # the failed call counts
    assert (agents["researcher"]["calls"], agents["researcher"]["failures"]) == (2, 0)
    assert stats["by_status"] == {"failed": 1, "succeeded": 1}
    assert "writer" in stats_text(stats) and "failed    1" in stats_text(stats)


def test_the_cli_reports_the_same(store_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "BATON_"))}
    env["PYTHONPATH"] = str(ROOT / "src")
    r = subprocess.run([sys.executable, "-m", "baton", "stats", "--json", "--store", store_url],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    versions = {v["agent"]: v for v in json.loads(r.stdout)["prompt_versions"]}
    assert versions["researcher"]["failure_rate"] == 0.0 and versions["writer"]["failure_rate"] == 0.5
