"""``baton worker``: host baton workflows on a Temporal task queue.

Start as many workers as you like, on as many machines, against one Temporal
service and one baton store (PostgreSQL, or SQLite on one machine): each takes
workflow tasks and activities from the queue; a worker that dies loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from baton.errors import UsageError
from baton.observe.events import Sink
from baton.runtime.engine import Engine, _release_models, shared_governor
from baton.temporal.context import WorkerContext, install, uninstall

DRAIN_S = 10.0
"""On SIGTERM a worker takes no new work and lets calls in flight finish this long (then they
run again elsewhere): a deploy does not resend calls that were about to answer."""

SANDBOX_PASSTHROUGH = ("baton", "orjson", "pydantic", "pydantic_core", "yaml", "jsonschema", "aiohttp",
                       "referencing", "rpds", "psycopg", "redis", "anyio", "httpx", "mcp")
"""Modules the workflow sandbox imports once, outside it (baton's workflow side keeps to the
run's arguments and the activities' results; the replay test checks that)."""


_connected = False


def connected() -> bool:
    """Whether this process opened a Temporal client (the CLI then exits without finalization)."""
    return _connected


async def connect(address: str, namespace: str = "default") -> Any:
    """A Temporal client; an unreachable address is a ``UsageError`` naming it.

    ``BATON_TEMPORAL_API_KEY`` (Temporal Cloud) connects with that key over TLS;
    ``BATON_TEMPORAL_TLS=1`` asks for TLS without a key (a self-hosted cluster behind TLS).
    """
    from temporalio.client import Client

    from baton.masking import mask_in

    api_key = os.environ.get("BATON_TEMPORAL_API_KEY") or None
    tls = api_key is not None or os.environ.get("BATON_TEMPORAL_TLS", "") in ("1", "true")
    global _connected
    _connected = True
    try:
        return await Client.connect(address, namespace=namespace, api_key=api_key, tls=tls)
    except Exception as exc:  # the SDK raises RuntimeError for a refused connection
        message = str(mask_in(str(exc))).replace(api_key or "\0", "***")
        raise UsageError(f"cannot reach Temporal at {address} (namespace {namespace}): {message}") from None


@dataclass
class WorkerOptions:
    """What ``baton worker`` takes: where to connect, which queue, what to host."""

    address: str
    namespace: str = "default"
    task_queue: str = "baton"
    workflows: Sequence[Any] = ()
    """Workflow files (``YamlWorkflow``) or Python workflow functions to host."""
    tools: Sequence[Any] = ()
    """Tools of Python workflows (a workflow file's tools are found from its agents)."""
    store: Any = None
    provider: str | None = None
    model: Any = None
    models: Any = None
    sinks: list[Sink] = field(default_factory=list)
    cache: Any = None
    governor: Any = None
    max_activities: int = 1000


def _sandbox_runner() -> Any:
    from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

    return SandboxedWorkflowRunner(restrictions=SandboxRestrictions.default.with_passthrough_modules(
        *SANDBOX_PASSTHROUGH))


async def _worker_context(opts: WorkerOptions, opened: list[Any]) -> WorkerContext:
    engine = Engine(store=opts.store, model=opts.model, models=opts.models, provider=opts.provider)
    store = await engine._store()
    ctx = WorkerContext(opts.task_queue, store, engine._binder(opened), opts.governor or shared_governor(),
                        sinks=list(opts.sinks), cache=opts.cache)
    for wf in opts.workflows:
        ctx.host(wf, tools=list(opts.tools))
    return ctx


@contextlib.asynccontextmanager
async def hosting(opts: WorkerOptions) -> AsyncIterator[WorkerContext]:
    """The worker's resources, installed for its task queue in this process (workflows find them there)."""
    opened: list[Any] = []
    ctx = await _worker_context(opts, opened)
    install(ctx)
    try:
        yield ctx
    finally:
        uninstall(ctx)
        await _release_models(opened)
        with contextlib.suppress(Exception):
            await ctx.store.close()


@contextlib.asynccontextmanager
async def running_worker(opts: WorkerOptions, client: Any = None) -> AsyncIterator[Any]:
    """A started worker (yields the ``temporalio.worker.Worker``); stopped and closed on exit."""
    from temporalio.worker import Worker

    from baton.temporal.activities import Activities
    from baton.temporal.workflow import BatonRun

    client = client or await connect(opts.address, opts.namespace)
    async with hosting(opts) as ctx:
        worker = Worker(client, task_queue=opts.task_queue, workflows=[BatonRun],
                        activities=Activities(ctx).all(), workflow_runner=_sandbox_runner(),
                        max_concurrent_activities=opts.max_activities,
                        max_concurrent_local_activities=opts.max_activities,
                        graceful_shutdown_timeout=timedelta(seconds=DRAIN_S))
        async with worker:
            yield worker


async def replay(history: Any, opts: WorkerOptions) -> None:
    """Replay a recorded run history against the hosted workflows (raises on any nondeterminism)."""
    from temporalio.worker import Replayer

    from baton.temporal.workflow import BatonRun

    async with hosting(opts):
        await Replayer(workflows=[BatonRun], workflow_runner=_sandbox_runner()).replay_workflow(history)


async def run_worker(opts: WorkerOptions, *, ready: Any = None) -> None:
    """Host the workflows until cancelled (SIGINT/SIGTERM in ``baton worker``)."""
    async with running_worker(opts):
        if ready is not None:
            ready()
        await asyncio.Event().wait()
