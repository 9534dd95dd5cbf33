"""The store protocol: runs, their journal of steps, an audit trail, and shared state.

Every backend (memory, SQLite, PostgreSQL, Redis) implements ``Store`` and passes
``baton.testing.store_conformance``. Records are plain JSON-able data: a backend
serializes with JSON only and raises ``StoreError`` naming the record when a stored
value does not decode (nothing is unpickled or evaluated).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from baton.errors import RunOwnedElsewhere, UsageError

RunStatus = Literal[
    "pending",
    "running",
    "succeeded",
    "failed",
    "budget_exceeded",
    "awaiting_approval",
    "awaiting_batch",
    "interrupted",
    "cancelled",
]
TERMINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
RESUMABLE_STATUSES: frozenset[str] = frozenset(
    {"pending", "running", "budget_exceeded", "awaiting_approval", "awaiting_batch", "interrupted", "failed"}
)

StepKind = Literal["model", "tool", "agent", "step", "approval", "message", "state"]
StepStatus = Literal["started", "completed", "failed"]


@dataclass(slots=True)
class Owner:
    """Who is executing a run: a process on a host, holding a lease until ``lease_until``."""

    host: str
    pid: int
    token: str
    lease_until: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Owner | None:
        if not d:
            return None
        return cls(str(d["host"]), int(d["pid"]), str(d["token"]), float(d["lease_until"]))


@dataclass(slots=True)
class RunRecord:
    """A run as the store keeps it: its workflow, input, status, limits, owner and outcome."""

    run_id: str
    workflow: str
    """How to find the workflow again on resume: ``yaml:PATH`` or ``py:module:function``."""
    input: Any
    status: RunStatus = "pending"
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    owner: Owner | None = None
    output: Any = None
    error: dict[str, Any] | None = None
    usage: dict[str, int] = field(default_factory=dict)
    cost_usd: float = 0.0
    model_calls: int = 0
    limits: dict[str, Any] = field(default_factory=dict)
    """The budget and guard settings in force (a resume may raise them)."""
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["owner"] = self.owner.to_dict() if self.owner else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunRecord:
        return cls(
            run_id=str(d["run_id"]),
            workflow=str(d["workflow"]),
            input=d.get("input"),
            status=d.get("status", "pending"),
            created_at=float(d.get("created_at") or 0.0),
            updated_at=float(d.get("updated_at") or 0.0),
            owner=Owner.from_dict(d.get("owner")),
            output=d.get("output"),
            error=d.get("error"),
            usage=dict(d.get("usage") or {}),
            cost_usd=float(d.get("cost_usd") or 0.0),
            model_calls=int(d.get("model_calls") or 0),
            limits=dict(d.get("limits") or {}),
            metadata=dict(d.get("metadata") or {}),
        )


@dataclass(slots=True)
class StepRecord:
    """One journaled step. ``key`` is deterministic: its position in the workflow."""

    run_id: str
    key: str
    kind: StepKind
    name: str
    """Agent, tool or step name."""
    status: StepStatus
    result: Any = None
    error: dict[str, Any] | None = None
    started_at: float = 0.0
    ended_at: float = 0.0
    usage: dict[str, int] | None = None
    cost_usd: float = 0.0
    attempts: int = 1
    meta: dict[str, Any] = field(default_factory=dict)
    """Prompt version, model, idempotency, parent key, retries: what ``baton show`` displays."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StepRecord:
        return cls(
            run_id=str(d["run_id"]),
            key=str(d["key"]),
            kind=d["kind"],
            name=str(d.get("name", "")),
            status=d["status"],
            result=d.get("result"),
            error=d.get("error"),
            started_at=float(d.get("started_at") or 0.0),
            ended_at=float(d.get("ended_at") or 0.0),
            usage=d.get("usage"),
            cost_usd=float(d.get("cost_usd") or 0.0),
            attempts=int(d.get("attempts") or 1),
            meta=dict(d.get("meta") or {}),
        )


@dataclass(slots=True)
class Transition:
    """An audit-trail row: a run's status change, with who and why."""

    run_id: str
    status: str
    at: float
    detail: dict[str, Any] = field(default_factory=dict)


def fence_of(steps: list[StepRecord], owner_token: str | None) -> tuple[str, str] | None:
    """``(run_id, owner_token)`` of a fenced ``put_steps`` batch (a fence guards a single
    run), or None when the batch is not fenced."""
    if owner_token is None:
        return None
    run_ids = {s.run_id for s in steps}
    if len(run_ids) != 1:
        raise UsageError(f"a put_steps batch with owner_token must hold one run's steps, got {sorted(run_ids)}")
    return run_ids.pop(), owner_token


def last_per_key(steps: list[StepRecord]) -> list[StepRecord]:
    """A batch with each (run, key) once: its last record, at its first record's position
    (as if the batch were written record by record, before write-once applies)."""
    latest: dict[tuple[str, str], StepRecord] = {}
    for step in steps:
        latest[(step.run_id, step.key)] = step
    return list(latest.values())


def displaced(run_id: str) -> RunOwnedElsewhere:
    """The error of a fenced write by an owner that lost the run to another process."""
    return RunOwnedElsewhere(f"run {run_id} was taken over (resume --force, an expired lease) or cancelled by "
                             f"another process; this process no longer owns it and stopped writing")


@runtime_checkable
class Store(Protocol):
    """Durable home of runs. All methods are coroutines; backends may batch internally."""

    url: str

    async def open(self) -> None:
        """Connect and create tables if missing. Raise ``StoreError`` if unreachable."""
        ...

    async def close(self) -> None: ...

    async def create_run(self, run: RunRecord) -> None:
        """Insert a new run (and its first transition). ``UsageError`` if the id exists."""
        ...

    async def get_run(self, run_id: str) -> RunRecord:
        """``RunNotFound`` if absent; ``StoreError`` naming the run if the row is corrupt."""
        ...

    async def list_runs(self, limit: int = 50) -> list[RunRecord]:
        """Newest first."""
        ...

    async def update_run(self, run: RunRecord, *, transition: str | None = None,
                         detail: dict[str, Any] | None = None, owner_token: str | None = None) -> None:
        """Write the whole record; when ``transition`` is given, append an audit row too.

        ``owner_token`` fences the write: it happens only while the stored run is still owned
        by that token (checked in the same transaction), else ``RunOwnedElsewhere``."""
        ...

    async def claim_run(self, run_id: str, owner: Owner, *, expected_token: str | None) -> bool:
        """Atomically set ``owner`` if the current owner's token equals ``expected_token``
        (None: no owner). Returns False when someone else got there first."""
        ...

    async def put_steps(self, steps: list[StepRecord], *, owner_token: str | None = None) -> None:
        """Commit a batch of step records atomically (insert or replace by run_id+key).

        A ``completed`` record is write-once: a later record for its key is ignored. With
        ``owner_token`` (every step of one run), the batch is written only while that token
        owns the run, else ``RunOwnedElsewhere`` and nothing of the batch is written."""
        ...

    async def load_steps(self, run_id: str) -> list[StepRecord]:
        """Every step record of a run, in insertion order."""
        ...

    async def transitions(self, run_id: str) -> list[Transition]:
        """The audit trail of a run, oldest first."""
        ...

    async def put_state(self, namespace: str, key: str, value: Any, ttl_s: float | None = None) -> None:
        """Shared blackboard state (namespaced by run id); expires after ``ttl_s``."""
        ...

    async def get_state(self, namespace: str, key: str) -> Any:
        """The value, or None if absent or expired."""
        ...
