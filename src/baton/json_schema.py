"""JSON Schema helpers: derive schemas from Python types, validate values against them.

pydantic and jsonschema are imported on first use, not at ``import baton``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import orjson


def is_pydantic_model(obj: Any) -> bool:
    return isinstance(obj, type) and hasattr(obj, "model_json_schema") and hasattr(obj, "model_validate")


def schema_of(output: Any) -> dict[str, Any]:
    """A JSON Schema for a pydantic model class or a JSON Schema dict."""
    if is_pydantic_model(output):
        schema: dict[str, Any] = output.model_json_schema()
        return schema
    if isinstance(output, dict):
        return output
    raise TypeError(f"output must be a pydantic model class or a JSON Schema dict, not {type(output).__name__}")


@lru_cache(maxsize=512)
def _validator(schema_json: bytes) -> Any:
    import jsonschema

    schema = orjson.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    cls.check_schema(schema)
    return cls(schema)


def check_schema(schema: dict[str, Any]) -> list[str]:
    """Problems with a schema itself (empty when it is a valid JSON Schema)."""
    import jsonschema

    try:
        _validator(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS))
    except jsonschema.SchemaError as exc:
        return [exc.message]
    return []


def validation_errors(value: Any, schema: dict[str, Any]) -> list[str]:
    """Every way ``value`` breaks ``schema``, as 'path: message' strings (empty if valid)."""
    validator = _validator(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS))
    errors = []
    for err in sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path)):
        path = "/".join(str(p) for p in err.absolute_path) or "(root)"
        errors.append(f"{path}: {err.message}")
    return errors


def resolve_ref(root: Any, ref: Any) -> Any:
    """The node a local ``$ref`` ("#/$defs/Name", a JSON Pointer into ``root``) points at.

    ``ValueError`` when ``ref`` is not a local reference, ``LookupError`` when it points nowhere.
    """
    if not isinstance(ref, str) or not ref.startswith("#/"):
        raise ValueError(f"unsupported $ref {ref!r} (only '#/...' references)")
    node = root
    for segment in ref[2:].split("/"):
        key = segment.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or key not in node:
            raise LookupError(f"unresolvable $ref {ref!r}")
        node = node[key]
    return node


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data (pydantic outputs dumped), for anything that is journaled."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value
