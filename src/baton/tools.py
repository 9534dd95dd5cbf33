"""Tools: plain Python functions (sync or async) with strict JSON Schemas.

A schema comes from the function's type hints and Google-style docstring, or is given
explicitly. Inputs are validated before the call and outputs after it; a tool runs
with a per-call timeout. An agent can only call the tools it was given: the agent loop
checks the name against its own list before anything here runs.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, get_type_hints

from baton.errors import ToolError, UsageError
from baton.messages import ToolSpec
from baton.schema import check_schema, validation_errors

_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What a tool may know about the call. Never sent to the model.

    ``idempotency_key`` is stable across retries and crash-resumes of the same step,
    so a tool with side effects can deduplicate them.
    """

    run_id: str
    agent: str
    step_key: str
    idempotency_key: str
    state: Any = None


@dataclass(slots=True)
class Tool:
    name: str
    description: str
    input_schema: dict[str, Any]
    fn: Callable[..., Any]
    output_schema: dict[str, Any] | None = None
    timeout_s: float | None = 60.0
    idempotent: bool = True
    """False: a call in flight at a crash is not re-run blindly on resume."""
    retryable: bool = False
    """True: a failure is retried by the run's retry policy (otherwise returned to the model)."""
    _takes_context: bool = field(default=False, repr=False)
    _input_model: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise UsageError(f"tool name {self.name!r} must match {_NAME_RE.pattern}")
        problems = check_schema(self.input_schema)
        if problems:
            raise UsageError(f"tool {self.name!r} has an invalid input schema: {problems[0]}")

    def spec(self) -> ToolSpec:
        return ToolSpec(self.name, self.description, self.input_schema)

    async def invoke(self, args: dict[str, Any], ctx: ToolContext) -> Any:
        """Validate ``args``, run the function within the timeout, validate its output."""
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
                result = await asyncio.wait_for(self.fn(*call_args, **kwargs), self.timeout_s)
            else:
                result = await asyncio.wait_for(asyncio.to_thread(self.fn, *call_args, **kwargs), self.timeout_s)
        except TimeoutError as exc:
            raise ToolError(f"tool {self.name!r} timed out after {self.timeout_s}s", tool=self.name) from exc
        except ToolError:
            raise
        except Exception as exc:
            raise ToolError(f"tool {self.name!r} failed: {type(exc).__name__}: {exc}", tool=self.name) from exc
        if hasattr(result, "model_dump"):
            result = result.model_dump(mode="json")
        if self.output_schema is not None:
            out_errors = validation_errors(result, self.output_schema)
            if out_errors:
                raise ToolError(f"tool {self.name!r} returned invalid output: " + "; ".join(out_errors),
                                tool=self.name)
        return result


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
         timeout_s: float | None = 60.0, idempotent: bool = True, retryable: bool = False) -> Any:
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
                    idempotent=idempotent, retryable=retryable, _takes_context=takes_ctx, _input_model=model)

    return build(fn) if fn is not None else build
