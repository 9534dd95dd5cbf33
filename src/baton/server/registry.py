"""The workflows a service runs: the YAML files of ``--workflows DIR``, by their ``name:``.

A request names a registered workflow; nothing from a request or a stored row ever
selects a file or a module. An optional ``input:`` JSON Schema in a file is checked
at intake."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from baton.errors import UsageError, WorkflowError


@dataclass(frozen=True)
class Registered:
    name: str
    file: str
    sha256: str
    workflow: Any
    description: str | None
    input_schema: dict[str, Any] | None

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "input_schema": self.input_schema,
                "pattern": self.workflow.spec["workflow"]["pattern"]}


class InputInvalid(Exception):
    """The input does not match the workflow's ``input:`` schema; ``field`` names where."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"input{field}: {message}" if field else f"input: {message}")
        self.field = f"input{field}"
        self.detail = message


def _check_schema(schema: Any, file: str) -> None:
    import jsonschema

    if not isinstance(schema, dict):
        raise WorkflowError("input: must be a JSON Schema object", file=file, field="input")
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise WorkflowError(f"input: not a valid JSON Schema: {exc.message}", file=file, field="input") from exc


def load_registry(folder: str) -> dict[str, Registered]:
    """Every ``*.yaml``/``*.yml`` in ``folder`` (not recursive); a bad file stops the start."""
    from baton.spec import load_workflow_file

    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"--workflows {folder}: not a directory")
    found: dict[str, Registered] = {}
    for path in sorted([*root.glob("*.yaml"), *root.glob("*.yml")]):
        wf = load_workflow_file(path)
        schema = wf.spec.get("input")
        if schema is not None:
            _check_schema(schema, wf.file)
        if wf.name in found:
            raise UsageError(f"--workflows {folder}: two files are named {wf.name!r} "
                             f"({Path(found[wf.name].file).name}, {path.name})")
        found[wf.name] = Registered(wf.name, wf.file, hashlib.sha256(path.read_bytes()).hexdigest(), wf,
                                    wf.spec.get("description"), schema)
    if not found:
        raise UsageError(f"--workflows {folder}: no workflow files (*.yaml) there")
    return found


def check_input(reg: Registered, value: Any) -> None:
    """Raise ``InputInvalid`` naming the first field that breaks the schema, or when the store
    could not keep the value (integers beyond 64 bits, lone surrogates)."""
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        raise InputInvalid("", f"cannot be stored as JSON: {exc}") from None
    if reg.input_schema is None:
        return
    import jsonschema

    validator = jsonschema.Draft202012Validator(reg.input_schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is not None:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        raise InputInvalid(where, error.message)
