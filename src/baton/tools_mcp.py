"""MCP servers as tool sources (the official ``mcp`` SDK is the client).

An ``McpServer`` is a stdio command or a streamable-HTTP URL. Its tools become ordinary
``Tool`` objects (named ``SERVER__TOOL`` for the model), so they take the same path as
Python tools: input validation, the per-call timeout, retries only where the tool is
retryable, the journal, events, redaction and size caps all live in the runtime.

One connection per server and event loop, shared by every agent of the run; opened on
first use, reopened after a crash (at most ``max_restarts`` times, then a clear error),
closed by ``close()``. Each call is bounded by the tool's timeout and the connection by
``connect_timeout_s``, so a hung server cannot hang the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from baton.errors import ToolError, UsageError
from baton.json_schema import validation_errors
from baton.tools import Tool

_SAFE = re.compile(r"[^a-zA-Z0-9_-]")


def model_tool_name(server: str, tool: str) -> str:
    """The name the model sees: ``server__tool``, made safe and at most 64 characters."""
    name = _SAFE.sub("_", f"{server}__{tool}")
    if len(name) > 64:
        name = name[:55] + "_" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return name


def _import_sdk() -> Any:
    try:
        import mcp
    except ImportError as exc:
        raise UsageError("MCP tools need the mcp package: pip install 'baton-agents[mcp]'") from exc
    return mcp


class _Connection:
    """One live session, owned by a background task (the SDK's contexts must open and close in one task)."""

    def __init__(self, server: McpServer) -> None:
        self.server = server
        self.session: Any = None
        self.listing: list[Any] = []
        self.error: BaseException | None = None
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return self.session is not None and self._task is not None and not self._task.done()

    async def open(self) -> None:
        self._task = asyncio.create_task(self._own(), name=f"mcp:{self.server.name}")
        try:
            await asyncio.wait_for(self._ready.wait(), self.server.connect_timeout_s)
        except TimeoutError:
            await self.close(graceful=False)
            raise ToolError(f"MCP server {self.server.name!r} did not answer within "
                            f"{self.server.connect_timeout_s}s of starting", tool=self.server.name) from None
        if self.error is not None:
            await self.close()
            raise ToolError(f"MCP server {self.server.name!r} could not be started: "
                            f"{_describe(self.error)}", tool=self.server.name) from None

    async def _own(self) -> None:
        mcp = _import_sdk()
        try:
            async with contextlib.AsyncExitStack() as stack:
                read, write = await stack.enter_async_context(await self.server._transport(mcp, stack))
                session = await stack.enter_async_context(mcp.ClientSession(read, write))
                await session.initialize()
                self.listing = await _list_all(session)
                self.session = session
                self._ready.set()
                await self._stop.wait()
        except Exception as exc:  # the server died or never came up; callers see it via error/alive
            self.error = exc
        finally:
            self.session = None
            self._ready.set()

    async def close(self, *, graceful: bool = True) -> None:
        """End the session: ``graceful`` lets it finish its shutdown first (a hung start is cancelled at once)."""
        self._stop.set()
        task = self._task
        if task is None or task.done():
            return
        try:
            if not graceful:
                raise TimeoutError
            await asyncio.wait_for(asyncio.shield(task), self.server.close_timeout_s)
        except (TimeoutError, asyncio.CancelledError):
            task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, self.server.close_timeout_s)


async def _list_all(session: Any) -> list[Any]:
    tools: list[Any] = []
    cursor = None
    for _ in range(100):  # a paginator that never ends cannot hang the start
        params = None
        if cursor is not None:
            import mcp.types as types

            params = types.PaginatedRequestParams(cursor=cursor)
        page = await session.list_tools(params=params)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            break
    return tools


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return _describe(exc.exceptions[0])
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _hinted_idempotent(annotations: Any) -> bool:
    return bool(annotations is not None and (annotations.read_only_hint or annotations.idempotent_hint))


@dataclass
class McpServer:
    """An MCP server: ``command`` + ``args`` (stdio) or ``url`` (streamable HTTP)."""

    name: str
    command: str | None = None
    args: list[str] = field(default_factory=list)
    env: dict[str, str] | None = None
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] | None = None
    timeout_s: float | None = 60.0
    """Per tool call (each call is a ``Tool`` with this timeout)."""
    connect_timeout_s: float = 30.0
    close_timeout_s: float = 5.0
    max_restarts: int = 3
    """Restarts after crashes, per run (until ``close()``), before calls fail with a clear error."""
    idempotent: bool | None = None
    retryable: bool | None = None
    """None: from the server's hints (``readOnlyHint``/``idempotentHint``)."""
    _conn: _Connection | None = field(default=None, repr=False)
    _loop: Any = field(default=None, repr=False)
    _lock: asyncio.Lock | None = field(default=None, repr=False)
    _crashes: int = field(default=0, repr=False)
    _last_error: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if (self.command is None) == (self.url is None):
            raise UsageError(f"MCP server {self.name!r} needs exactly one of command or url")
        if self.command in ("python", "python3"):
            self.command = sys.executable  # the interpreter (and packages) running baton

    @classmethod
    def from_config(cls, name: str, cfg: dict[str, Any], *, cwd: str | None = None) -> McpServer:
        """From a workflow file's ``{mcp: {...}}`` entry (relative ``cwd`` is the workflow's folder)."""
        opts: dict[str, Any] = {k: cfg[k] for k in ("command", "args", "env", "url", "headers", "connect_timeout_s",
                                                    "max_restarts", "idempotent", "retryable") if k in cfg}
        if "timeout_s" in cfg:
            opts["timeout_s"] = cfg["timeout_s"]
        base = cwd or os.getcwd()
        opts["cwd"] = os.path.join(base, cfg["cwd"]) if "cwd" in cfg else base
        return cls(name=name, **opts)

    async def _transport(self, mcp: Any, stack: contextlib.AsyncExitStack) -> Any:
        if self.url is not None:
            from mcp.client.streamable_http import streamable_http_client

            client = None
            if self.headers:
                from mcp.shared._httpx_utils import create_mcp_http_client

                client = await stack.enter_async_context(create_mcp_http_client(headers=self.headers))
            return streamable_http_client(self.url, http_client=client)
        from mcp.client.stdio import get_default_environment

        env = {**get_default_environment(), **(self.env or {})}
        assert self.command is not None
        params = mcp.StdioServerParameters(command=self.command, args=list(self.args), env=env, cwd=self.cwd)
        return mcp.stdio_client(params)

    # --- connection ------------------------------------------------------------------

    async def _connection(self) -> _Connection:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # A new run (event loop): connections of an old loop died with it.
            self._loop, self._conn, self._lock, self._crashes = loop, None, asyncio.Lock(), 0
        assert self._lock is not None
        async with self._lock:
            conn = self._conn
            if conn is not None and conn.alive:
                return conn
            if conn is not None:
                self._crashes += 1
                self._last_error = _describe(conn.error) if conn.error else "the connection closed"
                await conn.close()
                self._conn = None
            if self._crashes > self.max_restarts:
                raise ToolError(f"MCP server {self.name!r} keeps failing: it stopped {self._crashes} times "
                                f"this run (last: {self._last_error}); not restarted again", tool=self.name)
            conn = _Connection(self)
            await conn.open()
            self._conn = conn
            return conn

    async def close(self) -> None:
        """Stop the server (stdio) or end the session (HTTP); the next call starts a new one.

        The crash count starts again too: ``max_restarts`` is per run, also in a long-lived
        process (a service) that runs many workflows on one event loop.
        """
        conn, self._conn = self._conn, None
        self._crashes = 0
        if conn is not None and self._loop is asyncio.get_running_loop():
            await conn.close()

    # --- tools -----------------------------------------------------------------------

    async def tools(self, *names: str) -> list[Tool]:
        """The server's tools as ``Tool`` objects: all of them, or the ones named."""
        listing = {t.name: t for t in (await self._connection()).listing}
        missing = [n for n in names if n not in listing]
        if missing:
            raise UsageError(f"MCP server {self.name!r} has no tool {missing[0]!r} "
                             f"(it has: {', '.join(sorted(listing)) or 'none'})")
        return [self._tool(listing[n]) for n in (names or tuple(listing))]

    def _tool(self, info: Any) -> Tool:
        remote = info.name
        schema = dict(info.input_schema or {"type": "object", "properties": {}})
        schema.pop("title", None)
        output_schema = info.output_schema
        hinted = _hinted_idempotent(info.annotations)

        async def call(**arguments: Any) -> Any:
            return await self.call(remote, arguments, output_schema)

        return Tool(name=model_tool_name(self.name, remote),
                    description=info.description or info.title or remote,
                    input_schema=schema, fn=call, timeout_s=self.timeout_s,
                    idempotent=self.idempotent if self.idempotent is not None else True,
                    retryable=self.retryable if self.retryable is not None else hinted)

    async def call(self, tool: str, arguments: dict[str, Any], output_schema: dict[str, Any] | None = None) -> Any:
        """Call one tool; the answer is its text, or its structured content when it has no text."""
        conn = await self._connection()
        label = f"MCP tool {self.name}.{tool}"
        try:
            result = await conn.session.call_tool(tool, arguments)
        except RuntimeError as exc:
            if "structured content" in str(exc):
                first = str(exc).strip().splitlines()[0]
                raise ToolError(f"{label} returned output that breaks its own output schema: {first}",
                                tool=tool) from None
            raise
        except Exception as exc:
            if not conn.alive or "closed" in str(exc).lower():
                self._conn_failed(conn)
                raise ToolError(f"{label} failed: the server stopped during the call ({_describe(exc)})",
                                tool=tool) from None
            raise ToolError(f"{label} failed: {_describe(exc)}", tool=tool) from None
        return _result_value(label, tool, result, output_schema)

    def _conn_failed(self, conn: _Connection) -> None:
        # The next call restarts the server (counted as a crash) unless it is already alive again.
        conn.session = None


def _result_value(label: str, tool: str, result: Any, output_schema: dict[str, Any] | None) -> Any:
    texts = [getattr(c, "text", None) for c in result.content or []]
    text = "\n".join(t if t is not None else f"[{getattr(c, 'type', 'non-text')} content omitted]"
                     for t, c in zip(texts, result.content or [], strict=True))
    if result.is_error:
        raise ToolError(f"{label} reported an error: {text or 'no details'}", tool=tool)
    structured = result.structured_content
    if output_schema is not None and structured is not None:
        problems = validation_errors(structured, output_schema)
        if problems:
            raise ToolError(f"{label} returned output that breaks its own output schema: {problems[0]}",
                            tool=tool)
    if text or structured is None:
        return text
    return structured


class McpBinding:
    """The MCP tools a workflow file gave its agents, listed when a run starts and stopped when it ends.

    Agents need the tool schemas before their first model call, so ``open()`` starts each
    server an agent uses (never one that no agent uses) and lists its tools. Runs of the
    same workflow in one process share the servers; the last one to finish stops them.
    """

    def __init__(self, servers: dict[str, McpServer]) -> None:
        self.servers = servers
        self._wants: list[tuple[Any, list[Tool], list[tuple[str, str | None]]]] = []
        self._users = 0

    def add(self, agent: Any, refs: list[tuple[str, str | None]]) -> None:
        self._wants.append((agent, list(agent.tools), refs))

    def used(self) -> list[McpServer]:
        names = dict.fromkeys(server for _, _, refs in self._wants for server, _ in refs)
        return [self.servers[n] for n in names]

    async def open(self) -> None:
        self._users += 1
        try:
            for agent, base, refs in self._wants:
                tools = list(base)
                for server, remote in refs:
                    tools += await self.servers[server].tools(*([remote] if remote else []))
                names = [t.name for t in tools]
                dupes = sorted({n for n in names if names.count(n) > 1})
                if dupes:
                    raise UsageError(f"agent {agent.name!r} has duplicate tools: {dupes}")
                agent.tools = tools
                agent._version = None  # the tool schemas are part of the prompt version
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        self._users -= 1
        if self._users <= 0:
            self._users = 0
            for server in self.used():
                await server.close()


__all__ = ["McpServer"]
