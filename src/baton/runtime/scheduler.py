"""DAG scheduling: start each node the moment its dependencies finish (not in waves).

When more nodes are ready than the concurrency limit allows, the one with the
longest remaining critical path (its own cost plus the costliest chain of nodes that
depend on it) goes first: the classic list-scheduling heuristic, which keeps the
makespan within Graham's bound of the optimum.
"""

from __future__ import annotations

import asyncio
import graphlib
import heapq
import itertools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def _sorter(deps: Mapping[str, Sequence[str]]) -> graphlib.TopologicalSorter[str]:
    """The graph, dependencies on unknown ids left out (plan validation reports those)."""
    return graphlib.TopologicalSorter({n: [d for d in ds if d in deps] for n, ds in deps.items()})


def find_cycle(deps: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A dependency cycle as a list of ids, each depending on the next (first == last), or None."""
    try:
        _sorter(deps).prepare()
    except graphlib.CycleError as exc:
        return list(reversed(exc.args[1]))  # graphlib lists each node before what depends on it
    return None


def topological_order(deps: Mapping[str, Sequence[str]]) -> list[str]:
    """Every node after all of its dependencies; ``ValueError`` naming a cycle."""
    try:
        return list(_sorter(deps).static_order())
    except graphlib.CycleError:
        raise ValueError(f"dependency graph has a cycle: {find_cycle(deps)}") from None


def critical_paths(deps: Mapping[str, Sequence[str]], cost: Mapping[str, float] | None = None) -> dict[str, float]:
    """For each node: its cost plus the longest chain of dependants after it."""
    dependants: dict[str, list[str]] = {n: [] for n in deps}
    for node, ds in deps.items():
        for d in ds:
            dependants[d].append(node)
    memo: dict[str, float] = {}
    for node in reversed(topological_order(deps)):
        own = cost.get(node, 1.0) if cost else 1.0
        memo[node] = own + max((memo[c] for c in dependants[node]), default=0.0)
    return memo


async def run_dag(deps: Mapping[str, Sequence[str]], run: Callable[[str], Awaitable[T]], *,
                  concurrency: int | None = None, cost: Mapping[str, float] | None = None,
                  on_start: Callable[[str], Any] | None = None) -> dict[str, T]:
    """Run every node once its dependencies are done; return each node's result.

    ``deps`` must be a valid DAG (validate first). On the first failure the running
    nodes are cancelled and the error propagates: a partial graph never passes silently.
    """
    priority = critical_paths(deps, cost)
    sorter = _sorter(deps)
    sorter.prepare()
    # Heap of (-critical path, insertion order, node): longest remaining path first.
    ready: list[tuple[float, int, str]] = []
    seq = itertools.count()

    def push_ready() -> None:
        for node in sorter.get_ready():
            heapq.heappush(ready, (-priority[node], next(seq), node))

    push_ready()
    limit = concurrency if concurrency and concurrency > 0 else len(deps) or 1
    running: dict[asyncio.Task[T], str] = {}
    results: dict[str, T] = {}
    try:
        while ready or running:
            while ready and len(running) < limit:
                _, _, node = heapq.heappop(ready)
                if on_start:
                    on_start(node)
                running[asyncio.ensure_future(run(node))] = node
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                node = running.pop(task)
                results[node] = task.result()  # re-raises a node's failure
                sorter.done(node)
            push_ready()
    except BaseException:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        raise
    return results
