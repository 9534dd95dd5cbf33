"""Settings declared once: a dataclass field says its type and bounds, and both the
check that runs when the dataclass is built and the JSON Schema fragment of the YAML
key derive from that declaration.

    @dataclass(frozen=True, slots=True)
    class RetryPolicy(Settings):
        section: ClassVar[str] = "retry"
        max_attempts: int = setting(4, "integer", minimum=1)

From the one declaration derive: the check when the dataclass is built (``__post_init__``),
``from_dict`` (a mapping, e.g. the YAML ``retry:`` section: unknown keys and bad values
raise ``WorkflowError`` naming ``section.key``), and the JSON Schema of the YAML section
(``settings_schema``, which ``baton.spec.schema`` uses).

Numbers are finite (NaN and infinities never pass), booleans are not numbers, and a
field whose default is ``None`` may be ``None`` (the YAML key is then simply left out).
Only the standard library is imported here: this module is on the ``import baton`` path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import Field, dataclass, field, fields
from typing import Any, ClassVar, Literal, TypeVar

Kind = Literal["integer", "number", "boolean"]
S = TypeVar("S", bound="Settings")


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


def declared(cls: type[Any], name: str) -> Any:
    """A dataclass field that is ``cls``'s setting ``name`` again (same default and bounds): for a
    class whose settings are declared in a lighter one (the patterns' in ``patterns/_settings``)."""
    f = next(f for f in fields(cls) if f.name == name)
    return field(default=f.default, metadata=f.metadata)


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


def settings_from_mapping(cls: type[S], d: Any, *, where: str) -> S:
    """Build settings from a mapping; unknown keys and bad values raise ``WorkflowError``
    naming the field (``where.key``)."""
    from baton.errors import WorkflowError

    if not isinstance(d, Mapping):
        raise WorkflowError(f"must be a mapping of {cls.what}, got {type(d).__name__}", field=where)
    known = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    for key in d:
        if key not in known:
            raise WorkflowError(f"unknown key {key!r}; expected one of {known}", field=f"{where}.{key}")
    try:
        return cls(**dict(d))
    except WorkflowError as exc:
        name = (exc.field or "").rpartition(".")[2]
        raise WorkflowError(exc.problems[0]["message"], field=f"{where}.{name}") from None


class Settings:
    """Base of a settings dataclass: its checks and its mapping constructor derive from the
    fields' ``setting(...)`` declarations. Subclasses name their YAML ``section``."""

    __slots__ = ()
    section: ClassVar[str]
    """The YAML key the settings live under (and the prefix of error fields)."""
    what: ClassVar[str] = "settings"
    """What a mapping of these settings is called in an error message."""

    def __post_init__(self) -> None:
        check_settings(self, self.section)

    @classmethod
    def from_dict(cls: type[S], d: Mapping[str, Any] | S | None, *, where: str | None = None) -> S:
        """Build from a mapping (``None``: all defaults; an instance comes back as it is)."""
        if isinstance(d, cls):
            return d
        return settings_from_mapping(cls, {} if d is None else d, where=where or cls.section)


def settings_props(cls: type[Any]) -> dict[str, Any]:
    """The JSON Schema of each declared setting of ``cls`` (a YAML mapping's ``properties``)."""
    return {f.name: bound.json_schema() for f in fields(cls) if (bound := bound_of(f)) is not None}


def settings_schema(cls: type[Any], *, min_properties: int | None = None) -> dict[str, Any]:
    """The JSON Schema of a YAML mapping of ``cls``'s settings (every declared field, no others)."""
    props = settings_props(cls)
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
