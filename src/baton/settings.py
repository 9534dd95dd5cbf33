"""Settings declared once: a dataclass field says its type and bounds, and both the
check that runs when the dataclass is built and the JSON Schema fragment of the YAML
key derive from that declaration.

    @dataclass(frozen=True, slots=True)
    class RetryPolicy:
        max_attempts: int = setting(4, "integer", minimum=1)
        def __post_init__(self) -> None:
            check_settings(self, "retry")

Numbers are finite (NaN and infinities never pass), booleans are not numbers, and a
field whose default is ``None`` may be ``None`` (the YAML key is then simply left out).
Only the standard library is imported here: this module is on the ``import baton`` path.
"""

from __future__ import annotations

import math
from dataclasses import Field, dataclass, field, fields
from typing import Any, Literal

Kind = Literal["integer", "number", "boolean"]


@dataclass(frozen=True, slots=True)
class Bound:
    """What one setting accepts."""

    kind: Kind
    minimum: float | None = None
    exclusive_minimum: float | None = None
    maximum: float | None = None

    def accepts(self, value: Any) -> bool:
        if self.kind == "boolean":
            return isinstance(value, bool)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.kind == "integer" and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        if self.minimum is not None and value < self.minimum:
            return False
        if self.exclusive_minimum is not None and value <= self.exclusive_minimum:
            return False
        return self.maximum is None or value <= self.maximum

    def describe(self) -> str:
        if self.kind == "boolean":
            return "true or false"
        what = "an integer" if self.kind == "integer" else "a finite number"
        if self.minimum is not None and self.maximum is not None:
            return f"{what} in [{self.minimum:g}, {self.maximum:g}]"
        if self.exclusive_minimum is not None and self.maximum is not None:
            return f"{what} in ({self.exclusive_minimum:g}, {self.maximum:g}]"
        if self.minimum is not None:
            return f"{what} >= {self.minimum:g}"
        if self.exclusive_minimum is not None:
            return f"{what} > {self.exclusive_minimum:g}"
        return what

    def json_schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.kind}
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.exclusive_minimum is not None:
            out["exclusiveMinimum"] = self.exclusive_minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        return out


def setting(default: Any, kind: Kind, *, minimum: float | None = None, exclusive_minimum: float | None = None,
            maximum: float | None = None) -> Any:
    """A dataclass field with its bounds (``default`` ``None`` means "not set" is allowed)."""
    bound = Bound(kind, minimum, exclusive_minimum, maximum)
    return field(default=default, metadata={"setting": bound})


def bound_of(f: Field[Any]) -> Bound | None:
    bound = f.metadata.get("setting")
    return bound if isinstance(bound, Bound) else None


def check_settings(obj: Any, where: str) -> None:
    """Raise ``WorkflowError`` (field ``where.NAME``) for the first field out of its bounds."""
    for f in fields(obj):
        bound = bound_of(f)
        if bound is None:
            continue
        value = getattr(obj, f.name)
        if value is None and f.default is None:
            continue
        if not bound.accepts(value):
            from baton.errors import WorkflowError

            raise WorkflowError(f"must be {bound.describe()}, got {value!r}", field=f"{where}.{f.name}")


def settings_schema(cls: type[Any], *, min_properties: int | None = None) -> dict[str, Any]:
    """The JSON Schema of a YAML mapping of ``cls``'s settings (every declared field, no others)."""
    props = {f.name: bound.json_schema() for f in fields(cls) if (bound := bound_of(f)) is not None}
    out: dict[str, Any] = {"type": "object", "additionalProperties": False}
    if min_properties is not None:
        out["minProperties"] = min_properties
    out["properties"] = props
    return out


def limit_arg(kind: Kind, *, minimum: float | None = None, exclusive_minimum: float | None = None) -> Any:
    """An argparse ``type=`` for a limit flag: a bad value is one clear line naming the flag."""
    bound = Bound(kind, minimum, exclusive_minimum)

    def parse(text: str) -> int | float:
        import argparse

        try:
            value: int | float = int(text) if kind == "integer" else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {bound.describe()}, got {text!r}") from None
        if not bound.accepts(value):
            raise argparse.ArgumentTypeError(f"must be {bound.describe()}, got {text!r}")
        return value

    parse.__name__ = kind  # argparse names the type in some messages
    return parse
