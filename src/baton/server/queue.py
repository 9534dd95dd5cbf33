"""Queue intake: a Redis Streams consumer group.

``--queue redis://HOST:PORT/DB?stream=baton:runs&group=baton`` (optional ``claim_idle_ms``,
default 60000, and ``dead=STREAM``, default ``STREAM:dead``). A message is either one
field ``body`` (or ``data``) holding a JSON object, or flat fields; its keys are
``workflow``, ``input``, ``run_id`` and ``tenant`` (default ``queue``). It is acknowledged
only after its run is stored; a redelivered message maps to the same run id, so it is
never run twice. Messages a dead consumer left pending are claimed (XAUTOCLAIM) after
``claim_idle_ms``; a message that cannot be used goes to the dead-letter stream with
the reason, then is acknowledged."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import socket
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit, urlunsplit

from baton.errors import BatonError, Conflict, UsageError
from baton.server.metrics import ServerMetrics
from baton.server.registry import InputInvalid, Registered, check_input
from baton.server.runs import RunManager


class IntakeService(Protocol):
    """What the queue consumer needs from the service (``server.state.Service``)."""

    @property
    def runs(self) -> RunManager: ...

    @property
    def metrics(self) -> ServerMetrics: ...

    @property
    def registry(self) -> Mapping[str, Registered]: ...

log = logging.getLogger("baton.server.queue")


class Unusable(Exception):
    """The message cannot become a run; the text is the dead-letter reason."""


def parse_queue_url(url: str) -> tuple[str, str, str, str, int]:
    """(redis URL, stream, group, dead-letter stream, claim idle ms); ``UsageError`` if malformed."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise UsageError("--queue must be redis://HOST:PORT/DB?stream=NAME&group=NAME")
    q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    stream, group = q.get("stream", "baton:runs"), q.get("group", "baton")
    try:
        idle = int(q.get("claim_idle_ms", "60000"))
    except ValueError:
        raise UsageError("--queue: claim_idle_ms must be an integer") from None
    base = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    return base, stream, group, q.get("dead", f"{stream}:dead"), idle


def decode(fields: dict[str, str]) -> dict[str, Any]:
    raw = fields.get("body", fields.get("data"))
    if raw is not None:
        try:
            msg = json.loads(raw)
        except ValueError as exc:
            raise Unusable(f"body is not JSON: {exc}") from None
        if not isinstance(msg, dict):
            raise Unusable("body must be a JSON object")
        return msg
    return dict(fields)


class QueueConsumer:
    def __init__(self, url: str, svc: IntakeService) -> None:
        self.url, self.stream, self.group, self.dead, self.claim_idle_ms = parse_queue_url(url)
        self.svc = svc
        self.consumer = f"{socket.gethostname()}-{os.getpid()}"
        self.client: Any = None

    async def open(self) -> None:
        import redis.asyncio as redis_asyncio
        from redis.exceptions import ResponseError

        self.client = redis_asyncio.from_url(self.url, decode_responses=True, socket_connect_timeout=5)
        try:
            await self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run_forever(self) -> None:
        try:
            while not self.svc.runs.stopping:
                try:
                    await self.poll_once()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # Redis is away for now: back off and retry
                    log.warning("queue: %s", exc)
                    await asyncio.sleep(1.0)
        finally:
            await self.client.aclose()

    async def poll_once(self, block_ms: int = 1000) -> int:
        _, claimed, _ = await self.client.xautoclaim(self.stream, self.group, self.consumer,
                                                     min_idle_time=self.claim_idle_ms, start_id="0-0", count=50)
        if claimed:
            self.svc.metrics.queue.labels("claimed").inc(len(claimed))
        batch = [m for m in claimed if m and m[1] is not None]
        got = await self.client.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=20, block=block_ms)
        for _stream, messages in got or []:
            batch.extend(messages)
        for msg_id, fields in batch:
            if self.svc.runs.stopping:
                break
            await self.handle(msg_id, fields or {})
        return len(batch)

    async def handle(self, msg_id: str, fields: dict[str, str]) -> None:
        try:
            record, created = await self._store(msg_id, fields)
        except Unusable as exc:
            await self.client.xadd(self.dead, {"id": msg_id, "reason": str(exc)[:1000],
                                               "fields": json.dumps(fields)[:100_000]})
            await self.client.xack(self.stream, self.group, msg_id)
            self.svc.metrics.queue.labels("dead_lettered").inc()
            log.warning("queue: message %s dead-lettered: %s", msg_id, exc)
            return
        await self.client.xack(self.stream, self.group, msg_id)  # only now: the run is stored
        self.svc.metrics.queue.labels("stored" if created else "duplicate").inc()
        if created:
            self.svc.metrics.intake.labels("queue").inc()

    async def _store(self, msg_id: str, fields: dict[str, str]) -> tuple[Any, bool]:
        msg = decode(fields)
        name = msg.get("workflow")
        reg = self.svc.registry.get(name) if isinstance(name, str) else None
        if reg is None:
            raise Unusable(f"unknown workflow {name!r}")
        try:
            check_input(reg, msg.get("input"))
        except InputInvalid as exc:
            raise Unusable(f"invalid input: {exc}") from None
        tenant, run_id = msg.get("tenant") or "queue", msg.get("run_id")
        if not isinstance(tenant, str) or (run_id is not None and not isinstance(run_id, str)):
            raise Unusable("tenant and run_id must be strings")
        run_id = run_id or "q-" + hashlib.sha256(f"{self.stream}\0{msg_id}".encode()).hexdigest()[:24]
        try:
            return await self.svc.runs.submit(tenant, reg, msg.get("input"), run_id=run_id, limits=None,
                                              source="queue", extra={"queue_message": msg_id})
        except Conflict as exc:
            raise Unusable(str(exc)) from None
        except UsageError as exc:
            raise Unusable(f"invalid: {exc}") from None
        except BatonError:
            raise  # the store is away: leave the message pending, it is delivered again
