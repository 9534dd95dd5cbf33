"""What a worker process shares between its workflows and its activities.

A worker registers its workflows (by name) and opens one store, one set of model
adapters, one rate governor and its sinks at start; the workflow side finds them by
its task queue. Nothing a workflow's arguments say selects code: a run names a
registered workflow, and a workflow file must have the content hash the client saw.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from baton.errors import UsageError
from baton.observe.events import Sink
from baton.runtime.breaker import BreakerRegistry
from baton.runtime.journal import Journal
from baton.runtime.workflows import workflow_ref
from baton.stores.base import Store
from baton.tools import Tool

_RECENT_RUNS = 512
"""Runs whose journal and prompt-cache gates a worker keeps in memory."""


@dataclass
class Hosted:
    """One workflow a worker hosts: the callable, its file's hash, and the tools its agents use."""

    name: str
    workflow: Any
    sha256: str = ""
    tools: dict[str, Tool] = field(default_factory=dict)
    breakers: BreakerRegistry = field(default_factory=BreakerRegistry)


def hosted_key(workflow: Any) -> str:
    """The name a workflow is hosted and submitted under: a file's ``name:``, else its registered ref."""
    name = getattr(workflow, "name", None)
    if isinstance(name, str) and getattr(workflow, "sha256", None) is not None:
        return name
    return workflow_ref(workflow)


def tools_of(workflow: Any) -> dict[str, Tool]:
    """Every tool the agents of a workflow file (and its nested files) may call, by name."""
    found: dict[str, Tool] = {}
    for agent in (getattr(workflow, "agents", None) or {}).values():
        for tool in agent.tools:
            found.setdefault(tool.name, tool)
    for nested in (getattr(workflow, "nested", None) or {}).values():
        for name, tool in tools_of(nested).items():
            found.setdefault(name, tool)
    return found


@dataclass
class WorkerContext:
    """The resources of one worker (one task queue) in this process."""

    task_queue: str
    store: Store
    bind_model: Any
    governor: Any
    sinks: list[Sink] = field(default_factory=list)
    cache: Any = None
    cache_ttl_s: float | None = None
    hosted: dict[str, Hosted] = field(default_factory=dict)
    _journals: OrderedDict[str, Journal] = field(default_factory=OrderedDict)
    _warm: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)

    def host(self, workflow: Any, *, name: str | None = None, tools: list[Tool] | None = None) -> Hosted:
        key = name or hosted_key(workflow)
        if getattr(workflow, "mcp", None) is not None:
            raise UsageError(f"workflow {key!r} uses MCP tool servers, which the Temporal engine does not host "
                             f"yet: run it on the local engine")
        found = tools_of(workflow)
        for tool in tools or []:
            found[tool.name] = tool
        hosted = Hosted(key, workflow, getattr(workflow, "sha256", "") or "", found,
                        BreakerRegistry(defaults=getattr(workflow, "breaker", None)))
        self.hosted[key] = hosted
        for model_key, value in (getattr(workflow, "rate_limits", None) or {}).items():
            self.governor.set_limits(model_key, value)
        return hosted

    def workflow(self, name: str, sha256: str | None) -> Hosted:
        """The hosted workflow a run names; a file whose content differs from the client's is refused."""
        hosted = self.hosted.get(name)
        if hosted is None:
            raise UsageError(f"workflow {name!r} is not hosted by the workers on task queue {self.task_queue!r} "
                             f"(hosted: {', '.join(sorted(self.hosted)) or 'none'})")
        if sha256 and hosted.sha256 and sha256 != hosted.sha256:
            raise UsageError(f"workflow {name!r} on this worker is not the file the run was submitted with "
                             f"(content hash {hosted.sha256[:12]} here, {sha256[:12]} submitted): deploy the same "
                             f"file to every worker")
        return hosted

    def journal(self, run_id: str) -> Journal:
        """This worker's journal of a run (model and tool steps it executed), kept for recent runs."""
        journal = self._journals.get(run_id)
        if journal is None:
            journal = self._journals[run_id] = Journal(self.store, run_id)
            if len(self._journals) > _RECENT_RUNS:
                self._journals.popitem(last=False)
        return journal

    def warm_gates(self, run_id: str) -> dict[str, Any]:
        """The run's prompt-cache warm-up gates on this worker (the first call with a prefix goes alone)."""
        gates = self._warm.get(run_id)
        if gates is None:
            gates = self._warm[run_id] = {}
            if len(self._warm) > _RECENT_RUNS:
                self._warm.popitem(last=False)
        return gates


_CONTEXTS: dict[str, WorkerContext] = {}


def install(ctx: WorkerContext) -> None:
    _CONTEXTS[ctx.task_queue] = ctx


def uninstall(ctx: WorkerContext) -> None:
    if _CONTEXTS.get(ctx.task_queue) is ctx:
        del _CONTEXTS[ctx.task_queue]


def context_for(task_queue: str, submitted_to: Any = None) -> WorkerContext:
    """The worker resources for a workflow on ``task_queue``; a replayer (its own queue name)
    uses those of the queue the run was submitted to."""
    ctx = _CONTEXTS.get(task_queue) or (_CONTEXTS.get(submitted_to) if isinstance(submitted_to, str) else None)
    if ctx is None:
        raise UsageError(f"no baton worker for task queue {task_queue!r} runs in this process")
    return ctx
