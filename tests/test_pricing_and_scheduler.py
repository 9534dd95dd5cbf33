"""Prices from the editable table, cost from usage; DAG scheduling order and timing."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from baton.messages import Usage
from baton.models import pricing
from baton.models.pricing import cost_of, price_for
from baton.runtime.scheduler import critical_paths, find_cycle, run_dag


def test_cost_includes_cache_writes_reads_and_batch() -> None:
    usage = Usage(input_tokens=1_000, output_tokens=2_000, cache_creation_input_tokens=10_000,
                  cache_read_input_tokens=100_000, cache_creation_1h_input_tokens=4_000)
    # Sonnet 4.6: $3 in, $15 out, 5m write 1.25x, 1h write 2x, read 0.1x (per million tokens).
    expected = (1_000 * 3 + 6_000 * 3.75 + 4_000 * 6 + 100_000 * 0.3 + 2_000 * 15) / 1e6
    assert cost_of("claude-sonnet-4-6", usage) == pytest.approx(expected)
    assert cost_of("claude-sonnet-4-6", usage, batch=True) == pytest.approx(expected / 2)
    assert cost_of("claude-haiku-4-5-20251001", Usage(1_000_000)) == pytest.approx(1.0)  # alias


def test_unknown_models_are_priced_as_unknown_not_zero() -> None:
    assert price_for("gpt-9") is None and cost_of("gpt-9", Usage(100, 100)) is None


def test_price_table_is_editable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = tmp_path / "prices.toml"
    table.write_text('[models."my-model"]\ninput = 2.0\noutput = 4.0\ncache_read = 0.5\n')
    monkeypatch.setenv("BATON_PRICES", str(table))
    price = price_for("my-model")
    assert price is not None and price.cache_read == 1.0 and price.cache_write_5m == 2.5
    assert price_for("claude-sonnet-4-6") is None  # the file replaces the shipped table
    pricing._table.cache_clear()


def test_cycle_detection_and_critical_paths() -> None:
    assert find_cycle({"a": ["c"], "b": ["a"], "c": ["b"]}) in (["a", "c", "b", "a"], ["c", "b", "a", "c"],
                                                                 ["b", "a", "c", "b"])
    assert find_cycle({"a": [], "b": ["a"]}) is None
    cp = critical_paths({"a": [], "b": ["a"], "c": ["b"], "d": []}, {"a": 1, "b": 2, "c": 3, "d": 5})
    assert cp == {"a": 6, "b": 5, "c": 3, "d": 5}


async def test_nodes_start_when_their_own_dependencies_finish_not_in_waves() -> None:
    latency = {"slow": 0.3, "fast": 0.05, "after_fast": 0.05}
    started: dict[str, float] = {}
    t0 = time.monotonic()

    async def run(node: str) -> str:
        started[node] = time.monotonic() - t0
        await asyncio.sleep(latency[node])
        return node

    out = await run_dag({"slow": [], "fast": [], "after_fast": ["fast"]}, run)
    assert out == {"slow": "slow", "fast": "fast", "after_fast": "after_fast"}
    assert started["after_fast"] < 0.2  # did not wait for 'slow' (a wave scheduler would)


async def test_longest_critical_path_goes_first_when_capacity_is_short() -> None:
    order: list[str] = []

    async def run(node: str) -> None:
        order.append(node)
        await asyncio.sleep(0.01)

    deps = {"leaf1": [], "leaf2": [], "chain1": [], "chain2": ["chain1"], "chain3": ["chain2"]}
    await run_dag(deps, run, concurrency=1)
    assert order[0] == "chain1"


async def test_a_failing_node_cancels_the_rest_and_propagates() -> None:
    cancelled = []

    async def run(node: str) -> None:
        if node == "bad":
            raise RuntimeError("boom")
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(node)
            raise

    with pytest.raises(RuntimeError, match="boom"):
        await run_dag({"bad": [], "slow": [], "later": ["bad"]}, run)
    assert cancelled == ["slow"]
