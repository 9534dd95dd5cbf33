"""The service object: store, engine, run manager, live events, metrics, queue consumer."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from baton.models.resolve import close_models, provider_and_reason
from baton.observe.events import new_id
from baton.runtime.engine import Engine
from baton.server.http import ApiError
from baton.server.live import LiveEvents
from baton.server.metrics import ServerMetrics
from baton.server.runs import ACTIVE, RunManager
from baton.stores import open_store, store_url_from_env
from baton.stores.base import TERMINAL_STATUSES, RunRecord

if TYPE_CHECKING:
    from starlette.requests import Request

    from baton.server.config import ServeConfig

log = logging.getLogger("baton.server")
KEEPALIVE_S = 15.0
POLL_S = 2.0
POOL = 4


class Service:
    def __init__(self, config: ServeConfig) -> None:
        from baton.server.registry import load_registry

        self.config = config
        self.registry = load_registry(config.workflows_dir)
        self.store = open_store(config.store_url)
        self.live = LiveEvents()
        self.metrics = ServerMetrics()
        self._keys = [(k.encode(), t) for k, t in config.keys.items()]
        self.runs: RunManager = None  # type: ignore[assignment]  # built in start(), on the loop
        self._tasks: list[asyncio.Task[Any]] = []
        self._extra_stores: list[Any] = []
        self.stopped = asyncio.Event()

    # --- lifecycle ---------------------------------------------------------------------------

    def _engine(self, local: Any) -> Any:
        """``local``, or with ``--engine temporal`` the same store driving runs on Temporal workers."""
        if self.config.engine is None:
            return local
        from baton.temporal.service import ServiceEngine

        return ServiceEngine(self.config.engine, local.store)

    async def start(self) -> None:
        await self.store.open()
        provider, _ = provider_and_reason(self.config.provider)
        sinks: list[Any] = [self.live, self.metrics.sink]
        engine: Any = self._engine(Engine(store=self.store, provider=provider, sinks=sinks))
        self.runs = RunManager(self.store, engine, self.registry, max_runs=self.config.max_runs)
        url = store_url_from_env(self.config.store_url)  # store.url has its password masked
        if url.startswith(("postgres", "redis", "rediss")):
            # A networked store serializes a connection's commands: runs get connections of their own,
            # so intake and reads are not queued behind the runs' journal writes.
            for n in range(POOL + min(POOL, self.config.max_runs)):
                extra = open_store(url)
                await extra.open()
                self._extra_stores.append(extra)
                if n < POOL:
                    self.runs.pool.append(extra)
                else:
                    self.runs.executors.append(self._engine(Engine(store=extra, provider=provider, sinks=sinks)))
        n = await self.runs.recover()
        log.info("baton serve: %d workflow(s), %d run(s) recovered", len(self.registry), n)
        self._tasks.append(asyncio.create_task(self.runs.sweep_forever(self.config.sweep_s)))
        if self.config.queue_url:
            from baton.server.queue import QueueConsumer

            consumer = QueueConsumer(self.config.queue_url, self)
            await consumer.open()
            self._tasks.append(asyncio.create_task(consumer.run_forever()))

    def begin_stop(self) -> None:
        """SIGTERM: refuse new work at once (SSE streams end, intake answers 503)."""
        if self.runs is not None:
            self.runs.stopping = True
        self.stopped.set()

    async def stop(self) -> None:
        self.begin_stop()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.runs is not None:
            await self.runs.stop()
        with contextlib.suppress(Exception):
            await close_models()
        for extra in self._extra_stores:
            with contextlib.suppress(Exception):
                await extra.close()
        await self.store.close()

    # --- tenants -------------------------------------------------------------------------------

    def tenant_for(self, key: str) -> str | None:
        found = None
        given = key.encode()
        for k, tenant in self._keys:  # every key compared, in constant time each
            if hmac.compare_digest(k, given):
                found = tenant
        return found

    async def owned_run(self, tenant: str, run_id: str, request: Request) -> RunRecord:
        request.scope.setdefault("state", {})["run_id"] = run_id
        record = await self.runs.find(tenant, run_id)
        if record is None:
            raise ApiError(404, "run_not_found", f"no run {run_id!r}")
        return record

    async def check_tenant_limits(self, tenant: str) -> None:
        if self.runs.stopping:
            raise ApiError(503, "stopping", "the service is shutting down; retry on another one",
                           {"Retry-After": "5"})
        limits = self.config.tenant_limits.get(tenant)
        if limits is None:
            return
        rows = await self.runs.list(tenant, 5000)
        if limits.max_active_runs is not None:
            active = sum(1 for r in rows if r.status in ACTIVE)
            if active >= limits.max_active_runs:
                raise ApiError(429, "too_many_runs", f"tenant {tenant} has {active} runs pending or running "
                               f"(limit {limits.max_active_runs})", {"Retry-After": "10"})
        if limits.usd_per_day is not None:
            since = time.time() - 86400
            today = [r for r in rows if r.created_at >= since]
            spent = sum(r.cost_usd for r in today)
            if spent >= limits.usd_per_day:
                oldest = min(r.created_at for r in today)
                wait = max(1, int(oldest + 86400 - time.time()) + 1)
                raise ApiError(429, "daily_budget_spent", f"tenant {tenant} spent ${spent:.4f} in the last 24 h "
                               f"(limit ${limits.usd_per_day:.4f})", {"Retry-After": str(wait)})

    def new_run_id(self) -> str:
        return new_id(8)

    # --- server-sent events ----------------------------------------------------------------------

    async def sse(self, run_id: str, last: int) -> AsyncIterator[bytes]:
        """Events after ``last``; ends after the run's ``run.end`` (or, when its events are not
        here, once the stored run has stopped), or when the service stops."""
        quiet = 0.0
        while True:
            events, buf = self.live.since(run_id, last)
            for seq, kind, data in events:
                last = seq
                yield f"id: {seq}\nevent: {kind}\ndata: {json.dumps(data, default=str)}\n\n".encode()
            if buf.ended and last >= buf.seq:
                return
            if self.stopped.is_set():
                return
            changed = buf.changed
            try:
                await asyncio.wait_for(changed.wait(), POLL_S)
                continue
            except TimeoutError:
                quiet += POLL_S
            if run_id not in self.runs.active:
                end = await self._stored_end(run_id)
                if end is not None and not self.live.since(run_id, last)[0]:
                    yield end
                    return
            if quiet >= KEEPALIVE_S:
                quiet = 0.0
                yield b": keep-alive\n\n"

    async def _stored_end(self, run_id: str) -> bytes | None:
        """A closing event from the stored run, when it is not pending or running."""
        with contextlib.suppress(Exception):
            r = await self.runs.db().get_run(run_id)
            if r.status in TERMINAL_STATUSES or r.status not in ACTIVE:
                data = {"kind": "run.end", "run_id": run_id, "status": r.status, "error": r.error,
                        "from_store": True}
                return f"event: run.end\ndata: {json.dumps(data, default=str)}\n\n".encode()
        return None
