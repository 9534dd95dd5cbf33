"""The Temporal engine: baton runs as Temporal workflows, calls as activities (docs/scaling.md).

- ``TemporalEngine(address).run(workflow, input)``: submit a run and wait for it
  (``baton run WF --engine temporal --temporal HOST:PORT``).
- ``run_worker(WorkerOptions(address, workflows=[...]))``: host workflows
  (``baton worker --temporal HOST:PORT --workflows DIR``).

Needs the ``temporal`` extra: ``pip install 'baton-agents[temporal]'``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TemporalEngine", "WorkerOptions", "run_worker", "running_worker"]


def __getattr__(name: str) -> Any:  # temporalio loads on first use, not on ``import baton.temporal``
    if name == "TemporalEngine":
        from baton.temporal.client import TemporalEngine

        return TemporalEngine
    if name in ("WorkerOptions", "run_worker", "running_worker"):
        from baton.temporal import worker

        return getattr(worker, name)
    raise AttributeError(name)
