"""The CLI of the Temporal engine: ``baton worker`` and ``baton run ... --engine temporal``."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import TYPE_CHECKING, Any

from baton.errors import UsageError
from baton.stores import open_store

if TYPE_CHECKING:  # the CLI imports this module for its options: nothing heavy at import
    from baton.runtime.budget import Limits
    from baton.runtime.engine import RunResult
    from baton.temporal.client import TemporalEngine


def add_engine_options(sp: argparse.ArgumentParser) -> None:
    """``--engine local|temporal`` and where Temporal is (run, serve)."""
    sp.add_argument("--engine", choices=["local", "temporal"], default="local",
                    help="run here (local, default) or on Temporal workers (see baton worker)")
    sp.add_argument("--temporal", metavar="HOST:PORT", default=os.environ.get("BATON_TEMPORAL"),
                    help="the Temporal service for --engine temporal (default: $BATON_TEMPORAL)")
    sp.add_argument("--namespace", default="default", help="Temporal namespace (default: default)")
    sp.add_argument("--task-queue", default="baton", help="Temporal task queue of the workers (default: baton)")


def _address(args: argparse.Namespace) -> str:
    address = getattr(args, "temporal", None)
    if not address:
        raise UsageError("--engine temporal needs --temporal HOST:PORT (or BATON_TEMPORAL)")
    host, sep, port = str(address).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--temporal {address!r} is not HOST:PORT")
    return str(address)


def temporal_engine(args: argparse.Namespace) -> TemporalEngine:
    """The ``TemporalEngine`` the engine options name (``--temporal``, ``--namespace``, ``--task-queue``)."""
    from baton.temporal.client import TemporalEngine

    return TemporalEngine(_address(args), namespace=args.namespace, task_queue=args.task_queue, store=args.store)


async def run_on_temporal(args: argparse.Namespace, workflow: Any, input: Any, run_id: str,
                          limits: Limits) -> RunResult:
    """``baton run --engine temporal``: record the run, start it on the workers, wait for its result."""
    if getattr(args, "stream", False):
        raise UsageError("--stream is not available with --engine temporal (the text is generated on the workers)")
    here = [flag for flag, on in (("--log-jsonl", args.log_jsonl), ("--metrics-port", args.metrics_port),
                                  ("--trace", args.trace), ("--cache", args.cache)) if on]
    if here:  # the run's events and calls happen on the workers: their options decide
        print(f"baton: {', '.join(here)} apply to the workers with --engine temporal (set them on baton worker); "
              f"ignored here", file=sys.stderr)
    return await temporal_engine(args).run(workflow, input, run_id=run_id, limits=limits)


def add_worker_parser(sub: Any) -> None:
    w = sub.add_parser("worker", help="host workflows on a Temporal task queue (scale-out; docs/scaling.md)")
    w.add_argument("--temporal", metavar="HOST:PORT", default=os.environ.get("BATON_TEMPORAL"),
                   help="the Temporal service (default: $BATON_TEMPORAL)")
    w.add_argument("--namespace", default="default")
    w.add_argument("--task-queue", default="baton")
    w.add_argument("--workflows", metavar="DIR", required=True, help="host every *.yaml/*.yml in DIR by its name:")
    w.add_argument("--store", help="store URL shared by all workers (default: $BATON_STORE or sqlite:///.baton/baton.db)")
    w.add_argument("--provider", help="anthropic | local | openai (as for baton run)")
    w.add_argument("--log-jsonl", metavar="PATH", help="append every event of the work done here as one JSON line")
    w.add_argument("--max-activities", type=int, default=1000, metavar="N",
                   help="model/tool calls this worker runs at once (default: 1000)")
    w.set_defaults(fn=cmd_worker)


async def cmd_worker(args: argparse.Namespace) -> int:
    from baton.server.registry import load_registry
    from baton.temporal.worker import WorkerOptions, run_worker

    if not 1 <= args.max_activities <= 1_000_000:
        raise UsageError(f"--max-activities {args.max_activities} is out of range (1-1000000)")
    hosted = load_registry(args.workflows)
    sinks: list[Any] = []
    if args.log_jsonl:
        from baton.observe.jsonl import JSONLSink

        sinks.append(JSONLSink(args.log_jsonl))
    governor = None
    if os.environ.get("BATON_RATE_LIMIT_URL"):  # rate limits shared by every worker through Redis
        from baton.runtime.ratelimit_redis import RedisRateGovernor

        governor = RedisRateGovernor(os.environ["BATON_RATE_LIMIT_URL"])
    from baton.models.resolve import provider_and_reason

    provider = provider_and_reason(args.provider)[0]
    opts = WorkerOptions(_address(args), args.namespace, args.task_queue, [r.workflow for r in hosted.values()],
                         store=args.store, provider=provider, sinks=sinks, governor=governor,
                         max_activities=args.max_activities)

    def ready() -> None:
        print(f"baton: worker on {opts.address} (namespace {opts.namespace}, task queue {opts.task_queue}) hosting: "
              f"{', '.join(sorted(hosted)) or 'nothing'}", file=sys.stderr, flush=True)

    try:
        await run_worker(opts, ready=ready)
    except asyncio.CancelledError:  # SIGTERM/SIGINT: a normal stop (calls in flight got DRAIN_S to finish)
        print("baton: worker stopped", file=sys.stderr, flush=True)
    return 0


def add_address_option(sp: argparse.ArgumentParser) -> None:
    """``--temporal HOST:PORT`` for commands acting on a run that may live on Temporal (approve)."""
    sp.add_argument("--temporal", metavar="HOST:PORT", default=os.environ.get("BATON_TEMPORAL"),
                    help="for a run on the Temporal engine: where to signal it (default: $BATON_TEMPORAL)")


async def temporal_run(args: argparse.Namespace) -> TemporalEngine | None:
    """The engine to signal when ``args.run_id`` runs on Temporal (None: a local run).
    A Temporal run without ``--temporal`` is refused before anything is written."""
    store = open_store(args.store)
    await store.open()
    try:
        meta = (await store.get_run(args.run_id)).metadata
    finally:
        await store.close()
    if meta.get("engine") != "temporal":
        return None
    if not getattr(args, "temporal", None):
        raise UsageError(f"run {args.run_id} runs on Temporal: pass --temporal HOST:PORT (or set BATON_TEMPORAL) "
                         f"to reach it")
    from baton.temporal.client import TemporalEngine

    return TemporalEngine(_address(args), namespace=str(meta.get("namespace") or "default"),
                          task_queue=str(meta.get("task_queue") or "baton"), store=args.store)


async def cancel_on_temporal(engine: TemporalEngine, run_id: str) -> Any:
    """``baton cancel`` of a run on Temporal: cancel its workflow, return the record its workers wrote."""
    from baton.temporal.service import ServiceEngine

    store = open_store(engine.store if isinstance(engine.store, str) else None)
    await store.open()
    try:
        return await ServiceEngine(engine, store).cancel(run_id)
    finally:
        await store.close()
