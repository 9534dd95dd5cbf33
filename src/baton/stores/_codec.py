"""JSON encoding shared by the durable backends.

Everything a store writes goes through ``encode`` and everything it reads through the
``decode_*`` helpers, so every backend fails the same way: a value that is not JSON
raises ``StoreError`` naming the record before anything is written, and a stored value
that does not decode raises ``StoreError`` naming the run (and step or state key).
Nothing is ever unpickled or evaluated.

Content (a step's result and error, a run's input, output and error, state values) is
sealed here when ``BATON_STORE_KEY`` is set (``_seal``), so every backend encrypts alike.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson

from baton.errors import StoreError
from baton.stores import _seal
from baton.stores.base import Owner, RunRecord, StepRecord, Transition

R = TypeVar("R", RunRecord, StepRecord)

_RUN_CONTENT = ("input", "output", "error")
_STEP_CONTENT = ("result", "error")


def encode(value: Any, *, what: str) -> str:
    """``value`` as JSON text; ``what`` names the record in the error ("step 'a/1' of run 'r'")."""
    try:
        return orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise StoreError(f"cannot store {what}: value is not JSON-serializable ({exc})") from exc


def decode(data: str | bytes | None, *, what: str) -> Any:
    """Parse stored JSON text; ``StoreError`` naming ``what`` if it is not valid JSON."""
    if data is None:
        raise StoreError(f"corrupt {what}: the stored value is missing")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise StoreError(f"corrupt {what}: stored value is not valid JSON ({exc})") from exc


def run_what(run_id: str, where: str) -> str:
    return f"record of run {run_id!r} in {where}"


def step_what(run_id: str, key: str, where: str) -> str:
    return f"step {key!r} of run {run_id!r} in {where}"


def encode_run(run: RunRecord, where: str) -> tuple[str, str | None]:
    """The run without its owner, and the owner (or None): backends keep the owner in its
    own column so ``claim_run`` can compare-and-set it without rewriting the record."""
    # A shallow dict is enough: orjson walks nested values itself (and is far faster
    # than dataclasses.asdict's deep copy), giving the same JSON as ``run.to_dict()``.
    body = {f.name: getattr(run, f.name) for f in fields(run) if f.name != "owner"}
    box = _seal.cipher()
    if box is not None:
        for name in _RUN_CONTENT:
            body[name] = _seal.seal(body[name], box)
    what = run_what(run.run_id, where)
    owner = encode(run.owner.to_dict(), what=what) if run.owner else None
    return encode(body, what=what), owner


@dataclass(frozen=True, slots=True)
class RunRow:
    """A run encoded for a SQL row, plus its audit row's JSON detail and owner columns."""

    data: str
    owner: str | None
    token: str | None
    host: str | None
    pid: int | None
    detail: str


def run_row(run: RunRecord, where: str, detail: dict[str, Any]) -> RunRow:
    data, owner = encode_run(run, where)
    detail_json = encode(detail, what=run_what(run.run_id, where))
    if run.owner is None:
        return RunRow(data, owner, None, None, None, detail_json)
    return RunRow(data, owner, run.owner.token, run.owner.host, run.owner.pid, detail_json)


def step_row(step: StepRecord, where: str) -> tuple[Any, ...]:
    """A step's SQL columns: run_id, key, kind, name, status, started_at, ended_at, cost_usd, data."""
    return (step.run_id, step.key, step.kind, step.name, step.status, step.started_at, step.ended_at,
            step.cost_usd, encode_step(step, where))


def encode_owner(owner: Owner, run_id: str, where: str) -> str:
    return encode(owner.to_dict(), what=run_what(run_id, where))


def decode_run(data: str | bytes | None, owner: str | bytes | None, *, run_id: str, where: str,
               listing: bool = False) -> RunRecord:
    """``listing``: a run whose content is sealed and no key is set is listed without it."""
    what = run_what(run_id, where)
    body = _decode_object(data, what)
    for name in _RUN_CONTENT:
        value = body.get(name)
        if type(value) is dict and _seal.MARK in value:
            body[name] = None if listing and _seal.cipher() is None else \
                _seal.unseal(value, what=f"the {name} of run {run_id!r} in {where}")
    if owner is not None:
        body["owner"] = decode(owner, what=what)
    return _record(RunRecord, body, what)


def encode_step(step: StepRecord, where: str) -> str:
    """The same JSON as ``step.to_dict()``: orjson serializes the dataclass directly (its
    result and error sealed first when a store key is set)."""
    what = step_what(step.run_id, step.key, where)
    box = _seal.cipher()
    if box is None:
        return encode(step, what=what)
    body = {f.name: getattr(step, f.name) for f in fields(step)}
    try:
        for name in _STEP_CONTENT:
            body[name] = _seal.seal(body[name], box)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise StoreError(f"cannot store {what}: value is not JSON-serializable ({exc})") from exc
    return encode(body, what=what)


def decode_step(data: str | bytes | None, *, run_id: str, key: str, where: str) -> StepRecord:
    what = step_what(run_id, key, where)
    body = _decode_object(data, what)
    for name in _STEP_CONTENT:
        value = body.get(name)
        if type(value) is dict and _seal.MARK in value:
            body[name] = _seal.unseal(value, what=what)
    return _record(StepRecord, body, what)


def _decode_object(data: str | bytes | None, what: str) -> dict[str, Any]:
    body = decode(data, what=what)
    if not isinstance(body, dict):
        raise StoreError(f"corrupt {what}: expected a JSON object, found {type(body).__name__}")
    return body


def _record(cls: type[R], body: dict[str, Any], what: str) -> R:
    """``cls.from_dict(body)``; a body that is not such a record is a ``StoreError`` naming it."""
    try:
        return cls.from_dict(body)
    except (KeyError, TypeError, ValueError) as exc:
        kind = "run" if cls is RunRecord else "step"
        raise StoreError(f"corrupt {what}: not a {kind} record ({type(exc).__name__}: {exc})") from exc


def decode_detail(data: str | bytes | None, *, run_id: str, where: str) -> dict[str, Any]:
    what = f"audit trail of run {run_id!r} in {where}"
    detail = decode(data, what=what) if data is not None else {}
    if not isinstance(detail, dict):
        raise StoreError(f"corrupt {what}: transition detail is a {type(detail).__name__}, not an object")
    return detail


def decode_transition(data: str | bytes, *, run_id: str, where: str) -> Transition:
    """A transition stored as one JSON object (the Redis layout)."""
    what = f"audit trail of run {run_id!r} in {where}"
    body = decode(data, what=what)
    try:
        detail = body.get("detail") or {}
        if not isinstance(detail, dict):
            raise TypeError("detail is not an object")
        return Transition(run_id, str(body["status"]), float(body["at"]), detail)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise StoreError(f"corrupt {what}: not a transition ({type(exc).__name__}: {exc})") from exc


def state_what(namespace: str, key: str, where: str) -> str:
    return f"state {key!r} in namespace {namespace!r} in {where}"


def encode_state(value: Any, *, what: str) -> str:
    """A state value as JSON text, sealed when a store key is set."""
    box = _seal.cipher()
    if box is None:
        return encode(value, what=what)
    try:
        return encode(_seal.seal(value, box), what=what)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise StoreError(f"cannot store {what}: value is not JSON-serializable ({exc})") from exc


def decode_state(data: str | bytes | None, *, what: str) -> Any:
    return _seal.unseal(decode(data, what=what), what=what)


def redact_url(url: str) -> str:
    """``url`` with any password (in the user info or a ``password=`` query parameter)
    replaced by ``***``: this is the form errors and logs show."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url.split("@", 1)[-1] if "@" in url else url
    if not password and "password" not in parts.query.lower():
        return url  # untouched: urlunsplit would turn sqlite:///x into sqlite:/x
    if password:
        userinfo, _, hostinfo = parts.netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        parts = parts._replace(netloc=f"{user}:***@{hostinfo}")
    if "password" in parts.query.lower():
        query = [(k, "***" if k.lower() == "password" else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
        parts = parts._replace(query=urlencode(query, safe="*:/"))
    return urlunsplit(parts)
