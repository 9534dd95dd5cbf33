"""Memory across runs: a namespaced long-term store on the run's backend.

A namespace is whatever the caller chooses to keep apart: a tenant, a user, a workflow
(``"acme/users/42"``). Values are JSON; each may expire after ``ttl_s`` seconds. Memory
lives in the store's shared-state table under ``memory/NAMESPACE`` (a run id cannot hold
``/``, so no run's blackboard shares it) on SQLite, PostgreSQL, Redis and memory://.

Inside a run, ``ctx.memory(ns)`` (or ``RunMemory(ctx, ns)``) journals every read and
write as a step, so a resumed run sees what the first execution saw and writes nothing
twice. An agent given ``memory: NAMESPACE`` in YAML gets the tools ``remember``,
``recall`` and ``forget``; their answers are journaled as tool steps.

A run that belongs to a service tenant (run metadata ``tenant``, set by ``baton serve``)
reads and writes that tenant's namespaces only: the same namespace name in two tenants'
runs is two separate memories.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from baton.errors import UsageError
from baton.runtime.services import current_services
from baton.stores.base import Store
from baton.tools import Tool


class MemoryScope(Protocol):
    """What run memory needs from the run context (``baton.RunContext``)."""

    @property
    def store(self) -> Store | None: ...

    @property
    def tenant(self) -> str | None: ...

    def step(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Awaitable[Any]: ...

__all__ = ["Memory", "RunMemory", "check_namespace", "memory_tools"]

_NAMESPACE = re.compile(r"[A-Za-z0-9_.:@/-]{1,200}")
_PREFIX = "memory/"
_TENANT_PREFIX = "memory#"
MAX_KEY = 256


def check_namespace(namespace: object) -> str:
    if isinstance(namespace, str) and _NAMESPACE.fullmatch(namespace):
        return namespace
    raise UsageError(f"invalid memory namespace {str(namespace)[:60]!r}: use 1-200 letters, digits and . _ : @ / -")


def _check_key(key: object) -> str:
    if isinstance(key, str) and 0 < len(key) <= MAX_KEY:
        return key
    raise UsageError(f"a memory key must be text of 1-{MAX_KEY} characters")


def _check_ttl(ttl_s: float | None) -> float | None:
    if ttl_s is None:
        return None
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) or not ttl_s > 0 or ttl_s == float("inf"):
        raise UsageError(f"memory ttl_s must be a positive number of seconds, not {ttl_s!r}")
    return float(ttl_s)


class Memory:
    """Direct access to one namespace of a store (no journal): for setup, tests, admin tools."""

    def __init__(self, store: Store, namespace: str, *, tenant: str | None = None) -> None:
        if not callable(getattr(store, "list_state", None)) or not callable(getattr(store, "delete_state", None)):
            raise UsageError(f"store {type(store).__name__} keeps no long-term memory (it has no "
                             f"list_state/delete_state; the built-in stores all do)")
        self.store = store
        self.namespace = check_namespace(namespace)
        self.tenant = tenant
        # A tenant's namespaces live apart from everyone else's (length-prefixed: no tenant name can
        # make one tenant's namespace another's).
        self._ns = (_PREFIX + self.namespace if not tenant
                    else f"{_TENANT_PREFIX}{len(tenant)}:{tenant}/{self.namespace}")
        self._store: Any = store  # list_state/delete_state: on the built-in stores, not in the Store protocol

    async def put(self, key: str, value: Any, *, ttl_s: float | None = None) -> None:
        await self.store.put_state(self._ns, _check_key(key), value, _check_ttl(ttl_s))

    async def get(self, key: str, default: Any = None) -> Any:
        value = await self.store.get_state(self._ns, _check_key(key))
        return default if value is None else value

    async def list(self, prefix: str = "") -> list[str]:
        keys: list[str] = await self._store.list_state(self._ns, prefix)
        return keys

    async def delete(self, key: str) -> bool:
        return bool(await self._store.delete_state(self._ns, _check_key(key)))


class RunMemory:
    """One namespace, used from a run: every operation is a journaled step."""

    def __init__(self, ctx: MemoryScope, namespace: str) -> None:
        store = ctx.store
        if store is None:
            raise UsageError("memory needs a store (this run keeps no journal)")
        self.ctx = ctx
        self.memory = Memory(store, namespace, tenant=ctx.tenant)

    async def put(self, key: str, value: Any, *, ttl_s: float | None = None) -> None:
        await self.ctx.step(f"memory.put:{key}", self.memory.put, key, value, ttl_s=ttl_s)

    async def get(self, key: str, default: Any = None) -> Any:
        value = await self.ctx.step(f"memory.get:{key}", self.memory.get, key)
        return default if value is None else value

    async def list(self, prefix: str = "") -> list[str]:
        keys: list[str] = await self.ctx.step(f"memory.list:{prefix}", self.memory.list, prefix)
        return keys

    async def delete(self, key: str) -> bool:
        return bool(await self.ctx.step(f"memory.delete:{key}", self.memory.delete, key))


def _run_memory(namespace: str) -> Memory:
    """The namespace on the store of the run this tool call belongs to."""
    runtime = current_services()
    if runtime is None or runtime.journal is None:
        raise UsageError("memory tools need a run with a store")
    return Memory(runtime.journal.store, namespace, tenant=runtime.tenant)


def memory_tools(namespace: str) -> list[Tool]:
    """``remember``/``recall``/``forget`` over ``namespace`` (a tool call's answer is journaled)."""
    ns = check_namespace(namespace)

    async def remember(key: str, value: str, ttl_s: float | None = None) -> dict[str, Any]:
        await _run_memory(ns).put(key, value, ttl_s=ttl_s)
        return {"remembered": key}

    async def recall(key: str | None = None, prefix: str = "") -> dict[str, Any]:
        mem = _run_memory(ns)
        if key:
            value = await mem.get(key)
            return {"key": key, "value": value} if value is not None else {"key": key, "found": False}
        return {"keys": (await mem.list(prefix))[:200]}

    async def forget(key: str) -> dict[str, Any]:
        return {"key": key, "forgotten": await _run_memory(ns).delete(key)}

    key_prop = {"type": "string", "minLength": 1, "maxLength": MAX_KEY}
    return [
        Tool("remember", f"Store a note in long-term memory ({ns}) under a key, for later runs. Optional ttl_s: "
             "forget it after that many seconds.",
             {"type": "object", "additionalProperties": False, "required": ["key", "value"], "properties": {
                 "key": key_prop, "value": {"type": "string"}, "ttl_s": {"type": "number", "exclusiveMinimum": 0}}},
             remember),
        Tool("recall", f"Read a note from long-term memory ({ns}) by key; without a key, list the keys (optionally "
             "those starting with prefix).",
             {"type": "object", "additionalProperties": False, "properties": {
                 "key": key_prop, "prefix": {"type": "string"}}}, recall),
        Tool("forget", f"Delete a note from long-term memory ({ns}).",
             {"type": "object", "additionalProperties": False, "required": ["key"], "properties": {"key": key_prop}},
             forget),
    ]
