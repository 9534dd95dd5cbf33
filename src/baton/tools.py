"""Tools: plain Python functions (sync or async) with strict JSON Schemas.

A schema comes from the function's type hints and Google-style docstring, or is given
explicitly. Inputs are validated before the call and outputs after it; a tool runs
with a per-call timeout. An agent can only call the tools it was given: the agent loop
checks the name against its own list before anything here runs.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import re
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, get_type_hints

import orjson

from baton.errors import ToolError, ToolInterrupted, UsageError
from baton.json_schema import check_schema, validation_errors
from baton.messages import ToolSpec
from baton.runtime.protocols import ToolContext

__all__ = ["DEFAULT_MAX_RESULT_CHARS", "Tool", "ToolContext", "ToolInterrupted", "tool"]

_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")

DEFAULT_MAX_RESULT_CHARS = 100_000
"""A tool result longer than this (in characters of its JSON or text) is cut, saying so."""


class _Escaped(Exception):
    """Carries a ``SystemExit``/``KeyboardInterrupt`` out of a tool as an ordinary exception."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(repr(exc))
        self.exc = exc


async def _contained(coro: Coroutine[Any, Any, Any]) -> Any:
    """Await an async tool so that its ``SystemExit``/``KeyboardInterrupt`` cannot stop the loop."""
    try:
        return await coro
    except (SystemExit, KeyboardInterrupt) as exc:
        raise _Escaped(exc) from exc


def _in_daemon_thread(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> asyncio.Future[Any]:
    """Run a sync tool in a daemon thread of its own.

    Not ``asyncio.to_thread``: the default executor is joined when the loop and the
    interpreter shut down, so one tool call that never returns would keep the process
    alive long after its timeout ended the call. A daemon thread is left behind instead.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Any] = loop.create_future()
    context = contextvars.copy_context()

    def deliver(ok: bool, value: Any) -> None:
        if not fut.done():  # cancelled at a timeout: nobody waits for the answer any more
            (fut.set_result if ok else fut.set_exception)(value)

    def work() -> None:
        try:
            outcome: tuple[bool, Any] = (True, context.run(fn, *args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task, never swallowed
            outcome = (False, _Escaped(exc) if isinstance(exc, SystemExit | KeyboardInterrupt) else exc)
        try:
            loop.call_soon_threadsafe(deliver, *outcome)
        except RuntimeError:  # the loop is closed: the run ended without this result
            pass

    threading.Thread(target=work, name=f"baton-tool-{getattr(fn, '__name__', 'fn')}", daemon=True).start()
    return fut


def _is_transient(exc: BaseException) -> bool:
    """Failures another attempt could get past: timeouts and lost connections."""
    return isinstance(exc, TimeoutError | ConnectionError)


@dataclass(slots=True)
class Tool:
    """A function an agent may call: its name, description and input schema for the model,
    and how calls run (timeout, idempotency, retries, result size). Build one with ``baton.tool``."""

    name: str
    description: str
    input_schema: dict[str, Any]
    fn: Callable[..., Any]
    output_schema: dict[str, Any] | None = None
    timeout_s: float | None = 60.0
    idempotent: bool = True
    """False: a call in flight at a crash is not re-run blindly on resume."""
    retryable: bool = False
    """True: any failure is retried by the run's retry policy (otherwise returned to the model).
    An idempotent tool's transient failures (timeouts, lost connections) are retried either way."""
    max_result_chars: int | None = DEFAULT_MAX_RESULT_CHARS
    """A longer result is cut to this many characters, with a note naming the tool and the cap."""
    _takes_context: bool = field(default=False, repr=False)
    _input_model: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise UsageError(f"tool name {self.name!r} must match {_NAME_RE.pattern}")
        problems = check_schema(self.input_schema)
        if problems:
            raise UsageError(f"tool {self.name!r} has an invalid input schema: {problems[0]}")
        cap = self.max_result_chars
        if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
            raise UsageError(f"tool {self.name!r}: max_result_chars must be an integer >= 1, got {cap!r}")

    def spec(self) -> ToolSpec:
        return ToolSpec(self.name, self.description, self.input_schema)

    async def invoke(self, args: dict[str, Any], ctx: ToolContext) -> Any:
        """Validate ``args``, run the function within the timeout, validate its output.

        Every failure of the tool (an exception, ``SystemExit``, a timeout, a bad output) is a
        ``ToolError`` naming it; a ``KeyboardInterrupt`` becomes ``ToolInterrupted``.
        """
        errors = validation_errors(args, self.input_schema)
        if errors:
            raise ToolError(f"invalid input for tool {self.name!r}: " + "; ".join(errors), tool=self.name)
        kwargs = dict(args)
        if self._input_model is not None:
            # Coerce to the annotated Python types (e.g. nested models, enums).
            parsed = self._input_model.model_validate(kwargs)
            kwargs = {k: getattr(parsed, k) for k in kwargs}
        call_args: tuple[Any, ...] = (ctx,) if self._takes_context else ()
        try:
            if inspect.iscoroutinefunction(self.fn):
                result = await asyncio.wait_for(_contained(self.fn(*call_args, **kwargs)), self.timeout_s)
            else:
                result = await asyncio.wait_for(_in_daemon_thread(self.fn, call_args, kwargs), self.timeout_s)
        except TimeoutError as exc:
            raise ToolError(f"tool {self.name!r} timed out after {self.timeout_s}s", tool=self.name,
                            transient=True) from exc
        except ToolError:
            raise
        except _Escaped as escaped:
            if isinstance(escaped.exc, KeyboardInterrupt):
                raise ToolInterrupted(self.name) from escaped.exc
            code = getattr(escaped.exc, "code", None)
            raise ToolError(f"tool {self.name!r} tried to exit the process (SystemExit: {code!r})",
                            tool=self.name) from escaped.exc
        except Exception as exc:
            raise ToolError(f"tool {self.name!r} failed: {type(exc).__name__}: {exc}", tool=self.name,
                            transient=_is_transient(exc)) from exc
        if hasattr(result, "model_dump"):
            result = result.model_dump(mode="json")
        if self.output_schema is not None:
            out_errors = validation_errors(result, self.output_schema)
            if out_errors:
                raise ToolError(f"tool {self.name!r} returned invalid output: " + "; ".join(out_errors),
                                tool=self.name)
        return result

    def result_text(self, result: Any) -> str:
        """The text the model gets for ``result``: a string as is, anything else as JSON, cut at the cap."""
        if isinstance(result, str):
            text = result
        else:
            try:
                text = orjson.dumps(result).decode()
            except TypeError as exc:  # orjson.JSONEncodeError: sets, objects, non-string keys, huge ints
                raise ToolError(f"tool {self.name!r} returned a value that is not JSON "
                                f"({type(result).__name__}): {exc}", tool=self.name) from exc
        cap = self.max_result_chars
        if cap is not None and len(text) > cap:
            text = (f"{text[:cap]}\n[truncated: tool {self.name!r} returned {len(text)} characters; "
                    f"the first {cap} are shown (max_result_chars)]")
        return text


def _docstring_parts(doc: str | None) -> tuple[str, dict[str, str]]:
    """Summary and per-argument descriptions from a Google-style docstring."""
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    summary: list[str] = []
    params: dict[str, str] = {}
    section = "summary"
    current: str | None = None
    for line in lines:
        stripped = line.strip()
        if stripped in ("Args:", "Arguments:", "Parameters:"):
            section = "args"
            continue
        if stripped.endswith(":") and stripped[:-1] in ("Returns", "Raises", "Yields", "Examples", "Example"):
            section = "other"
            continue
        if section == "summary":
            summary.append(stripped)
        elif section == "args" and stripped:
            m = re.match(r"^(\w+)(?:\s*\([^)]*\))?\s*:\s*(.*)$", stripped)
            if m and line.startswith((" ", "\t")) and not line.startswith(("        ", "\t\t")):
                current = m.group(1)
                params[current] = m.group(2)
            elif current:
                params[current] += " " + stripped
    return " ".join(s for s in summary if s).strip(), params


def _schema_from_signature(fn: Callable[..., Any]) -> tuple[dict[str, Any], Any, bool]:
    from pydantic import create_model

    sig = inspect.signature(fn)
    hints = get_type_hints(fn)
    _summary, param_docs = _docstring_parts(fn.__doc__)
    fields: dict[str, Any] = {}
    takes_context = False
    for i, (pname, param) in enumerate(sig.parameters.items()):
        annotation = hints.get(pname, Any)
        if i == 0 and (annotation is ToolContext or pname == "ctx"):
            takes_context = True
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise UsageError(f"tool function {fn.__name__!r} cannot take *args or **kwargs")
        from pydantic import Field

        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[pname] = (annotation, Field(default, description=param_docs.get(pname)))
    model = create_model(f"{fn.__name__}_input", **fields)
    schema = model.model_json_schema()
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
    schema["additionalProperties"] = False
    schema.setdefault("properties", {})
    return schema, model, takes_context


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None, description: str | None = None,
         input_schema: dict[str, Any] | None = None, output_schema: dict[str, Any] | None = None,
         timeout_s: float | None = 60.0, idempotent: bool = True, retryable: bool = False,
         max_result_chars: int | None = DEFAULT_MAX_RESULT_CHARS) -> Any:
    """Make a ``Tool`` from a function; usable bare (``@tool``) or with options (``@tool(timeout_s=5)``).

    The first parameter receives a ``ToolContext`` when it is annotated so or named ``ctx``.
    """

    def build(f: Callable[..., Any]) -> Tool:
        summary, _ = _docstring_parts(f.__doc__)
        if input_schema is not None:
            schema, model = input_schema, None
            params = list(inspect.signature(f).parameters)
            takes_ctx = bool(params) and params[0] == "ctx"
        else:
            schema, model, takes_ctx = _schema_from_signature(f)
        return Tool(name=name or f.__name__, description=description or summary or f.__name__,
                    input_schema=schema, fn=f, output_schema=output_schema, timeout_s=timeout_s,
                    idempotent=idempotent, retryable=retryable, max_result_chars=max_result_chars,
                    _takes_context=takes_ctx, _input_model=model)

    return build(fn) if fn is not None else build
