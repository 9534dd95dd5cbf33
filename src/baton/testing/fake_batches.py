"""The Message Batches endpoints of ``FakeAnthropicServer`` (``server.batches``).

``POST /v1/messages/batches`` (create), ``GET /v1/messages/batches/{id}`` (retrieve),
``GET /v1/messages/batches/{id}/results`` (JSONL, once ended) and
``POST /v1/messages/batches/{id}/cancel``, with the API's shapes: ``processing_status``
``in_progress`` -> ``canceling`` -> ``ended``, ``request_counts``, and one result per
``custom_id`` of type ``succeeded``, ``errored``, ``canceled`` or ``expired`` (only
``succeeded`` carries usage: the others are not billed).

Each request is answered by the server's rules, like a Messages call; a rule's ``status``
fault makes that one request ``errored`` (per-request failures). Requests finish one after
another over ``processing_s`` of the server's clock (``advance_clock`` moves it), so a
poll in between sees progress; a batch still unfinished ``expire_s`` after creation
expires. ``log`` records every call to these endpoints, so a test can prove a batch was
never submitted twice.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from baton.testing.script import match_text, prompt_segments, request_from_wire, validate_body

JSON = dict[str, Any]
_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_REQUESTS = 100_000
_UNFINISHED = {"canceled": "canceled", "expired": "expired"}


@dataclass(slots=True)
class BatchCall:
    """One call to a batch endpoint, as the server saw it."""

    op: str
    """create, retrieve, results or cancel."""
    batch_id: str | None
    status: int
    time: float
    requests: int = 0


@dataclass(slots=True)
class FakeBatch:
    """A submitted batch: its requests, when each finishes, and each one's result."""

    id: str
    created: float
    """Server clock (``server.now()``) at creation."""
    created_wall: float
    params: dict[str, JSON]
    """custom_id -> the request's params, in submission order."""
    done_at: dict[str, float]
    outcomes: dict[str, JSON]
    """custom_id -> the result it gets once done."""
    texts: dict[str, str] = field(default_factory=dict)
    """custom_id -> the system + user text rules matched against."""
    cancel_at: float | None = None
    cancel_wall: float | None = None
    ended_wall: float | None = None

    def result_type(self, cid: str, now: float, expire_s: float) -> str | None:
        """The result type of request ``cid`` now, or None while it is still processing."""
        if self.done_at[cid] <= (self.cancel_at if self.cancel_at is not None else now):
            return str(self.outcomes[cid]["type"])
        if self.cancel_at is not None:
            return "canceled"
        if now >= self.created + expire_s:
            return "expired"
        return None


class BatchDesk:
    """Serves the batch endpoints for ``server``; ``processing_s`` is how long a batch takes."""

    def __init__(self, server: Any, *, processing_s: float = 1.0,
                 expire_s: float = 24 * 3600.0) -> None:
        self.server = server
        self.processing_s = processing_s
        self.expire_s = expire_s
        self.create_latency_s = 0.0
        """How long ``create`` takes to answer (a batch is accepted only once it does)."""
        self.batches: dict[str, FakeBatch] = {}
        self.log: list[BatchCall] = []
        self._ids = itertools.count(1)

    @property
    def created(self) -> list[FakeBatch]:
        """The batches submitted so far, in order."""
        return list(self.batches.values())

    def calls(self, op: str) -> list[BatchCall]:
        """The logged calls of one kind (``create``, ``retrieve``, ``results``, ``cancel``)."""
        return [c for c in self.log if c.op == op]

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/messages/batches", self._create)
        app.router.add_get("/v1/messages/batches/{batch_id}", self._retrieve)
        app.router.add_get("/v1/messages/batches/{batch_id}/results", self._results)
        app.router.add_post("/v1/messages/batches/{batch_id}/cancel", self._cancel)

    # -- handlers --

    def _logged(self, op: str, batch_id: str | None, response: web.Response, requests: int = 0) -> web.Response:
        self.log.append(BatchCall(op, batch_id, response.status, time.time(), requests))
        return response

    def _bad(self, message: str, status: int = 400, error_type: str = "invalid_request_error") -> web.Response:
        answer: web.Response = self.server._error(status, error_type, message, f"req_fake_batch_{next(self._ids):08d}")
        return answer

    async def _create(self, request: web.Request) -> web.Response:
        refused = self.server.refused(request, "req_fake_batch")
        if refused is not None:
            return self._logged("create", None, refused)
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            return self._logged("create", None, self._bad(f"request body is not valid JSON: {exc}"))
        problem = _check_requests(body)
        if problem is not None:
            return self._logged("create", None, self._bad(problem))
        if self.create_latency_s:
            await asyncio.sleep(self.create_latency_s)
        batch = self._submit(body["requests"])
        return self._logged("create", batch.id, self._json(self._describe(batch)), len(batch.params))

    def _submit(self, requests: list[JSON]) -> FakeBatch:
        server = self.server
        now = server.now()
        bid = f"msgbatch_fake_{server._id_prefix}{next(self._ids):010d}"
        n = len(requests)
        batch = FakeBatch(bid, now, time.time(), {}, {}, {})
        for i, item in enumerate(requests):
            cid, params = item["custom_id"], item["params"]
            batch.params[cid] = params
            batch.done_at[cid] = now + self.processing_s * (i + 1) / n
            batch.outcomes[cid], batch.texts[cid] = self._outcome(params, f"{bid}_{i}")
        self.batches[bid] = batch
        return batch

    def _outcome(self, params: JSON, rid: str) -> tuple[JSON, str]:
        """What one request of a batch ends as: its rule's answer, or ``errored`` by its fault."""
        server = self.server
        neutral = request_from_wire(params)
        _, rule = server.script.pick(neutral)
        fault = rule.fault if rule is not None and server.script.fires(rule.fault) else None
        if fault is not None and fault.kind != "stall":
            etype = fault.error_type if fault.kind == "status" else "api_error"
            message = fault.message or "Internal server error"
            return {"type": "errored", "error": {"type": "error", "error": {"type": etype, "message": message}}}, \
                match_text(neutral)
        plan = server.cache.plan(params["model"], prompt_segments(params), params.get("cache_control"), server.now())
        message_json = server.answer(params, neutral, rule, plan, f"req_fake_{rid}", tier="batch")
        return {"type": "succeeded", "message": message_json}, match_text(neutral)

    async def _retrieve(self, request: web.Request) -> web.Response:
        batch = self._find(request)
        if isinstance(batch, web.Response):
            return self._logged("retrieve", request.match_info["batch_id"], batch)
        return self._logged("retrieve", batch.id, self._json(self._describe(batch)))

    async def _results(self, request: web.Request) -> web.Response:
        batch = self._find(request)
        if isinstance(batch, web.Response):
            return self._logged("results", request.match_info["batch_id"], batch)
        now = self.server.now()
        types = {cid: batch.result_type(cid, now, self.expire_s) for cid in batch.params}
        if any(t is None for t in types.values()):
            return self._logged("results", batch.id, self._bad(
                f"batch {batch.id} is still in_progress; its results are available once it has ended"))
        lines = []
        for cid, kind in types.items():
            result = batch.outcomes[cid] if kind == batch.outcomes[cid]["type"] else {"type": _UNFINISHED[str(kind)]}
            lines.append(orjson.dumps({"custom_id": cid, "result": result}))
        return self._logged("results", batch.id, web.Response(body=b"\n".join(lines) + b"\n",
                                                              content_type="application/x-jsonl"))

    async def _cancel(self, request: web.Request) -> web.Response:
        batch = self._find(request)
        if isinstance(batch, web.Response):
            return self._logged("cancel", request.match_info["batch_id"], batch)
        if batch.cancel_at is None and self._status(batch) == "in_progress":
            batch.cancel_at, batch.cancel_wall = self.server.now(), time.time()
        return self._logged("cancel", batch.id, self._json(self._describe(batch)))

    # -- helpers --

    def _find(self, request: web.Request) -> FakeBatch | web.Response:
        """The batch the path names, or the error answer (bad key, unknown id)."""
        refused: web.Response | None = self.server.refused(request, "req_fake_batch")
        if refused is not None:
            return refused
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None:
            return self._bad(f"batch {request.match_info['batch_id']!r} not found", 404, "not_found_error")
        return batch

    def _status(self, batch: FakeBatch) -> str:
        now = self.server.now()
        if all(batch.result_type(cid, now, self.expire_s) is not None for cid in batch.params):
            if batch.ended_wall is None:
                batch.ended_wall = time.time()
            return "ended"
        return "canceling" if batch.cancel_at is not None else "in_progress"

    def _describe(self, batch: FakeBatch) -> JSON:
        """The batch object the API returns from create, retrieve and cancel."""
        status = self._status(batch)
        now = self.server.now()
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        for cid in batch.params:
            kind = batch.result_type(cid, now, self.expire_s)
            counts["processing" if kind is None else kind] += 1
        return {
            "id": batch.id, "type": "message_batch", "processing_status": status, "request_counts": counts,
            "created_at": _iso(batch.created_wall), "expires_at": _iso(batch.created_wall + self.expire_s),
            "ended_at": _iso(batch.ended_wall) if status == "ended" and batch.ended_wall else None,
            "cancel_initiated_at": _iso(batch.cancel_wall) if batch.cancel_wall else None,
            "archived_at": None,
            "results_url": f"{self.server.url}/v1/messages/batches/{batch.id}/results" if status == "ended" else None,
        }

    @staticmethod
    def _json(data: JSON) -> web.Response:
        return web.Response(body=orjson.dumps(data), content_type="application/json")


def _check_requests(body: Any) -> str | None:
    """The ``invalid_request_error`` the API gives a malformed batch, or None."""
    requests = body.get("requests") if isinstance(body, dict) else None
    if not isinstance(requests, list) or not requests:
        return "requests: at least one request is required"
    if len(requests) > MAX_REQUESTS:
        return f"requests: a batch holds at most {MAX_REQUESTS:,} requests"
    seen: set[str] = set()
    for i, item in enumerate(requests):
        cid = item.get("custom_id") if isinstance(item, dict) else None
        if not isinstance(cid, str) or not _CUSTOM_ID.match(cid):
            return f"requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
        if cid in seen:
            return f"requests.{i}.custom_id: custom_id {cid!r} is used twice; each must be unique"
        seen.add(cid)
        params = item.get("params")
        problem = validate_body(params)
        if problem is not None:
            return f"requests.{i}.params.{problem}"
        if params.get("stream"):
            return f"requests.{i}.params.stream: streaming is not supported in a batch"
    return None


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
