"""The start form of a registered workflow, generated from its ``input:`` JSON Schema.

An object schema gives one labelled control per property (text, number, checkbox,
select for an ``enum``, a JSON text area for anything nested); no schema, or a schema
that is not an object, gives one text area whose content is sent as text, or as JSON
when it parses as JSON. What comes back is converted to the property's type here; the
workflow's schema itself is checked by the same code as the API's (``check_input``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

WHOLE = "__input__"
"""The field name of the single text area (no object schema)."""


@dataclass(frozen=True)
class Field:
    name: str
    control: str
    """text | integer | number | checkbox | select | json | textarea"""
    label: str
    required: bool
    help: str | None = None
    options: tuple[str, ...] = ()
    default: Any = None


class FormError(Exception):
    """A value that cannot be read as its field's type; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def _control(prop: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    if isinstance(prop.get("enum"), list) and all(isinstance(v, str) for v in prop["enum"]):
        return "select", tuple(prop["enum"])
    kind = prop.get("type")
    if kind in ("integer", "number"):
        return str(kind), ()
    if kind == "boolean":
        return "checkbox", ()
    if kind == "string":
        return ("textarea" if (prop.get("maxLength") or 0) > 200 else "text"), ()
    return "json", ()


def fields(schema: dict[str, Any] | None) -> list[Field]:
    """The form's controls, in the schema's property order."""
    props = schema.get("properties") if isinstance(schema, dict) and schema.get("type") == "object" else None
    if not isinstance(props, dict) or not props:
        return [Field(WHOLE, "textarea", "Input", False, "Text, or JSON (sent as JSON when it parses)")]
    required = set(schema.get("required") or []) if isinstance(schema, dict) else set()
    out = []
    for name, prop in props.items():
        prop = prop if isinstance(prop, dict) else {}
        control, options = _control(prop)
        out.append(Field(str(name), control, str(prop.get("title") or name), name in required,
                         prop.get("description"), options, prop.get("default")))
    return out


def _convert(f: Field, raw: str) -> Any:
    if f.control == "integer":
        try:
            return int(raw)
        except ValueError:
            raise FormError(f.name, f"{raw!r} is not a whole number") from None
    if f.control == "number":
        try:
            value = float(raw)
        except ValueError:
            raise FormError(f.name, f"{raw!r} is not a number") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise FormError(f.name, "must be a finite number")
        return value
    if f.control == "json":
        try:
            return json.loads(raw)
        except ValueError:
            raise FormError(f.name, "is not valid JSON") from None
    return raw


def parse(schema: dict[str, Any] | None, form: dict[str, str]) -> Any:
    """The run's input from the submitted form (empty optional fields are left out)."""
    controls = fields(schema)
    if controls[0].name == WHOLE:
        raw = form.get(WHOLE, "")
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    value: dict[str, Any] = {}
    for f in controls:
        if f.control == "checkbox":
            value[f.name] = f.name in form
            continue
        raw = form.get(f.name, "")
        if raw.strip() == "":
            continue
        value[f.name] = _convert(f, raw)
    return value
