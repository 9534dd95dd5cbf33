"""The Message Batches API over an ``AnthropicModel``'s connection: create, retrieve, results, cancel.

A batch holds up to 100,000 requests, each with a ``custom_id``; it is processed
asynchronously (most end within an hour, all within 24 h) at half the price of the
Messages API. Results come back as JSONL, one per ``custom_id``, of type ``succeeded``,
``errored``, ``canceled`` or ``expired``; only ``succeeded`` is billed. These functions
send one HTTP call each and never retry (baton's runtime owns retries); the runtime's
side (collecting requests, journaling batch ids, polling) is ``baton.runtime.batch``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from baton.errors import BatchRequestFailed, ProviderError
from baton.messages import ModelRequest, ModelResponse
from baton.models.anthropic import (
    _STREAM_ERROR_STATUS,
    content_from_wire,
    is_retryable,
    request_to_wire,
    usage_from_wire,
)

if TYPE_CHECKING:
    from baton.models.anthropic import AnthropicModel

JSON = dict[str, Any]
BATCHES_PATH = "/v1/messages/batches"
_BATCH_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


@dataclass(frozen=True, slots=True)
class BatchStatus:
    """Where a batch stands: ``processing_status`` (in_progress, canceling, ended) and its counts."""

    id: str
    processing_status: str
    counts: dict[str, int] = field(default_factory=dict)
    """processing, succeeded, errored, canceled, expired."""

    @property
    def ended(self) -> bool:
        return self.processing_status == "ended"

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """One request's result: a response, or the error it ended with (not billed)."""

    custom_id: str
    kind: str
    response: ModelResponse | None = None
    error: BatchRequestFailed | None = None


def _status_from(raw: bytes) -> BatchStatus:
    try:
        data = orjson.loads(raw)
        counts = {str(k): int(v) for k, v in (data.get("request_counts") or {}).items()}
        return BatchStatus(str(data["id"]), str(data["processing_status"]), counts)
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ProviderError(f"anthropic: malformed message batch object: {raw[:200]!r}",
                            error_type="invalid_response", retryable=True) from exc


def _path(batch_id: str, tail: str = "") -> str:
    if not _BATCH_ID.match(batch_id):  # it may come from a journal: never let it reshape the URL
        raise ProviderError(f"anthropic: {batch_id[:80]!r} is not a message batch id", error_type="invalid_batch_id")
    return f"{BATCHES_PATH}/{batch_id}{tail}"


async def create_batch(model: AnthropicModel, requests: list[tuple[str, ModelRequest]]) -> BatchStatus:
    """Submit ``(custom_id, request)`` pairs as one batch."""
    body = {"requests": [{"custom_id": cid, "params": request_to_wire(req)} for cid, req in requests]}
    return _status_from(await model.send_raw("POST", BATCHES_PATH, body))


async def retrieve_batch(model: AnthropicModel, batch_id: str) -> BatchStatus:
    return _status_from(await model.send_raw("GET", _path(batch_id)))


async def cancel_batch(model: AnthropicModel, batch_id: str) -> BatchStatus:
    """Ask the API to stop a batch: requests not yet processed end ``canceled`` (not billed)."""
    return _status_from(await model.send_raw("POST", _path(batch_id, "/cancel")))


async def batch_results(model: AnthropicModel, batch_id: str) -> dict[str, BatchOutcome]:
    """Every request's outcome, by ``custom_id`` (only once the batch has ended)."""
    raw = await model.send_raw("GET", _path(batch_id, "/results"))
    out: dict[str, BatchOutcome] = {}
    for line in raw.splitlines():
        if not line.strip():
            continue
        try:
            item = orjson.loads(line)
            outcome = outcome_from_wire(str(item["custom_id"]), item["result"], batch_id)
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ProviderError(f"anthropic: malformed line in the results of batch {batch_id}: {line[:200]!r}",
                                error_type="invalid_response", retryable=True) from exc
        out[outcome.custom_id] = outcome
    return out


def outcome_from_wire(custom_id: str, result: JSON, batch_id: str) -> BatchOutcome:
    """One JSONL result -> ``BatchOutcome``; raises KeyError/TypeError when it has not the API's shape."""
    kind = result["type"]
    if kind == "succeeded":
        msg = result["message"]
        response = ModelResponse(id=msg.get("id", ""), model=msg.get("model", ""),
                                 content=content_from_wire(msg["content"]),
                                 stop_reason=msg.get("stop_reason") or "end_turn",
                                 usage=usage_from_wire(msg.get("usage")), request_id=None, headers={})
        return BatchOutcome(custom_id, kind, response=response)
    where = f"request {custom_id} of batch {batch_id}"
    if kind == "errored":
        err = result.get("error")
        err = err if isinstance(err, dict) else {}
        inner: JSON = err["error"] if isinstance(err.get("error"), dict) else err
        etype = str(inner.get("type") or "api_error")
        status = _STREAM_ERROR_STATUS.get(etype, 500)
        failed = BatchRequestFailed(f"anthropic batch: {where} errored: {etype}: {inner.get('message', '')}",
                                    status=status, error_type=etype, retryable=is_retryable(status, None, None))
    elif kind == "expired":  # not processed within 24 h: worth sending again
        failed = BatchRequestFailed(f"anthropic batch: {where} expired before it was processed",
                                    error_type="batch_expired", retryable=True)
    elif kind == "canceled":  # someone cancelled the batch on purpose: not sent again
        failed = BatchRequestFailed(f"anthropic batch: {where} was canceled", error_type="batch_canceled")
    else:
        raise TypeError(f"unknown result type {kind!r}")
    return BatchOutcome(custom_id, str(kind), error=failed)
