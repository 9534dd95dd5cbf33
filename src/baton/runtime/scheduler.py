"""DAG scheduling: start each node the moment its dependencies finish (not in waves).

When more nodes are ready than the concurrency limit allows, the one with the
longest remaining critical path (its own cost plus the costliest chain of nodes that
depend on it) goes first: the classic list-scheduling heuristic, which keeps the
makespan within Graham's bound of the optimum.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def find_cycle(deps: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A dependency cycle as a list of ids (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in deps.get(node, ()):
            if dep not in deps:
                continue
            if state.get(dep) == 1:
                return [*stack[stack.index(dep):], dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in deps:
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def critical_paths(deps: Mapping[str, Sequence[str]], cost: Mapping[str, float] | None = None) -> dict[str, float]:
    """For each node: its cost plus the longest chain of dependants after it."""
    dependants: dict[str, list[str]] = {n: [] for n in deps}
    for node, ds in deps.items():
        for d in ds:
            dependants[d].append(node)
    memo: dict[str, float] = {}
    order = topological_order(deps)
    for node in reversed(order):
        own = cost.get(node, 1.0) if cost else 1.0
        memo[node] = own + max((memo[c] for c in dependants[node]), default=0.0)
    return memo


def topological_order(deps: Mapping[str, Sequence[str]]) -> list[str]:
    indegree = {n: len(ds) for n, ds in deps.items()}
    dependants: dict[str, list[str]] = {n: [] for n in deps}
    for node, ds in deps.items():
        for d in ds:
            dependants[d].append(node)
    ready = [n for n, k in indegree.items() if k == 0]
    order: list[str] = []
    while ready:
        node = ready.pop()
        order.append(node)
        for c in dependants[node]:
            indegree[c] -= 1
            if indegree[c] == 0:
                ready.append(c)
    if len(order) != len(deps):
        raise ValueError(f"dependency graph has a cycle: {find_cycle(deps)}")
    return order


async def run_dag(deps: Mapping[str, Sequence[str]], run: Callable[[str], Awaitable[T]], *,
                  concurrency: int | None = None, cost: Mapping[str, float] | None = None,
                  on_start: Callable[[str], Any] | None = None) -> dict[str, T]:
    """Run every node once its dependencies are done; return each node's result.

    ``deps`` must be a valid DAG (validate first). On the first failure the running
    nodes are cancelled and the error propagates: a partial graph never passes silently.
    """
    priority = critical_paths(deps, cost)
    remaining = {n: len(ds) for n, ds in deps.items()}
    dependants: dict[str, list[str]] = {n: [] for n in deps}
    for node, ds in deps.items():
        for d in ds:
            dependants[d].append(node)
    # Heap of (-critical path, insertion order, node): longest remaining path first.
    ready: list[tuple[float, int, str]] = []
    seq = 0
    for node, k in remaining.items():
        if k == 0:
            heapq.heappush(ready, (-priority[node], seq, node))
            seq += 1
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
                for child in dependants[node]:
                    remaining[child] -= 1
                    if remaining[child] == 0:
                        heapq.heappush(ready, (-priority[child], seq, child))
                        seq += 1
    except BaseException:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        raise
    return results
