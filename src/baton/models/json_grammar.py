"""JSON Schema -> GBNF grammar with bounded sizes, for grammar-constrained local decoding.

A tiny model decoding under a grammar always produces a *prefix* of valid JSON; it only
produces *whole* valid JSON if it reaches the end before ``max_tokens``. So every grammar
built here is finite: arrays and free-form maps have a maximum length, strings a maximum
length and a printable-ASCII alphabet without escapes, numbers a maximum number of digits,
and there is no free whitespace. Because every output character is ASCII and every token
decodes to at least one byte, ``CompiledGrammar.max_chars`` is an upper bound on the
number of tokens the output can take; ``compile_grammar`` shrinks the caps until that bound
fits the caller's token budget.

Supported: ``type`` (single or list), ``enum``, ``const``, ``properties``/``required``,
``additionalProperties`` (schema or bool), ``items``/``prefixItems``/``minItems``/
``maxItems``, ``minLength``/``maxLength``, number/integer bounds, ``anyOf``/``oneOf``,
``allOf`` (merged), ``$ref`` into ``$defs``/``definitions``. Not enforced by the grammar
(validated afterwards): ``pattern``, ``format``, ``multipleOf``, ``uniqueItems``, and
number bounds that are not small integer ranges (``repair`` clamps those).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from baton.errors import UsageError
from baton.json_schema import resolve_ref

JSON = dict[str, Any]

DEFAULT_MAX_ITEMS = 8
DEFAULT_MAX_STRING = 200
MAX_DEPTH = 12
_ENUMERABLE_RANGE = 128  # integer ranges up to this size become exact alternations
_INT_DIGITS = 12
_FRACTION_DIGITS = 4
# Printable ASCII except '"' and '\': no escapes, so decoded length == output length.
_STRING_CHAR = r'[ !#-\[\]-~]'
_MAP_KEY_CHARS = 32

# Caps tried in order until the worst-case output fits the token budget.
_CAP_LADDER: tuple[tuple[int, int], ...] = (
    (200, 8), (128, 8), (64, 8), (48, 6), (32, 4), (24, 3), (16, 2), (12, 2), (8, 1), (4, 1),
)


@dataclass(frozen=True, slots=True)
class CompiledGrammar:
    gbnf: str
    max_chars: int
    """Upper bound on the output's length in characters (and so in tokens)."""
    max_items: int
    max_string: int


def compile_grammar(schema: JSON, *, token_budget: int | None = None, max_items: int = DEFAULT_MAX_ITEMS,
                    max_string: int = DEFAULT_MAX_STRING) -> CompiledGrammar:
    """The grammar for ``schema`` with the largest caps (up to the given ones) that fit.

    When even the smallest caps exceed ``token_budget`` the smallest are returned; the
    caller must then allow ``max_chars`` tokens.
    """
    ladder = list(dict.fromkeys(
        [(max_string, max_items), *((min(s, max_string), min(a, max_items)) for s, a in _CAP_LADDER)]
    ))
    last: CompiledGrammar | None = None
    for string_cap, items_cap in ladder:
        last = _Compiler(schema, max_items=items_cap, max_string=string_cap).compile()
        if token_budget is None or last.max_chars <= token_budget:
            return last
    assert last is not None
    return last


def gbnf_literal(text: str) -> str:
    """A GBNF string literal matching ``text`` exactly."""
    out = []
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _json_literal(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True)


class _Compiler:
    def __init__(self, root: JSON, *, max_items: int, max_string: int) -> None:
        if not isinstance(root, dict):
            raise UsageError(f"a JSON Schema must be an object, got {type(root).__name__}")
        self.root = root
        self.max_items = max(1, max_items)
        self.max_string = max(1, max_string)
        self.rules: dict[str, str] = {}
        self.names_by_body: dict[str, str] = {}

    def compile(self) -> CompiledGrammar:
        ref, size = self.node(self.root, "root-value", 0)
        body = "\n".join(f"{name} ::= {body}" for name, body in self.rules.items())
        gbnf = f"root ::= {ref}\n{body}\n"
        return CompiledGrammar(gbnf, size, self.max_items, self.max_string)

    # -- helpers ---------------------------------------------------------------------

    def rule(self, hint: str, body: str) -> str:
        existing = self.names_by_body.get(body)
        if existing:
            return existing
        base = re.sub(r"[^a-zA-Z0-9-]+", "-", hint).strip("-").lower() or "r"
        name, n = base, 1
        while name in self.rules or name == "root":
            n += 1
            name = f"{base}-{n}"
        self.rules[name] = body
        self.names_by_body[body] = name
        return name

    def resolve(self, schema: JSON, depth: int) -> JSON:
        seen = 0
        while "$ref" in schema:
            ref = schema["$ref"]
            try:
                target = resolve_ref(self.root, ref)
            except (ValueError, LookupError) as exc:
                raise UsageError(f"{exc} in output schema") from None
            siblings = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**target, **siblings} if isinstance(target, dict) else target
            seen += 1
            if seen > MAX_DEPTH:
                raise UsageError(f"$ref chain too long at {ref!r}")
        if "allOf" in schema:
            merged: JSON = {k: v for k, v in schema.items() if k != "allOf"}
            for raw in schema["allOf"]:
                part = self.resolve(raw, depth) if isinstance(raw, dict) else {}
                for key, value in part.items():
                    if key == "properties":
                        merged["properties"] = {**merged.get("properties", {}), **value}
                    elif key == "required":
                        merged["required"] = [*merged.get("required", []), *value]
                    else:
                        merged.setdefault(key, value)
            schema = merged
        return schema

    def items_cap(self, arrays: int) -> int:
        """Arrays nested in arrays get smaller caps: worst-case size multiplies per level."""
        return max(1, self.max_items >> arrays)

    def string_cap(self, arrays: int) -> int:
        """Strings two or more arrays deep (ids, tags) get shorter caps for the same reason."""
        return self.max_string if arrays < 2 else max(8, self.max_string >> (arrays - 1))

    # -- schema nodes -------------------------------------------------------------------

    def node(self, schema: Any, hint: str, depth: int, arrays: int = 0) -> tuple[str, int]:
        if depth > MAX_DEPTH:
            raise UsageError(f"output schema nested deeper than {MAX_DEPTH} levels (recursive?) at {hint!r}")
        if schema is True or schema == {} or schema is None:
            return self.scalar(hint, arrays)
        if schema is False:
            raise UsageError(f"output schema allows no value at {hint!r}")
        schema = self.resolve(schema, depth)
        if "const" in schema:
            lit = _json_literal(schema["const"])
            return gbnf_literal(lit), len(lit)
        if "enum" in schema:
            values = schema["enum"]
            if not values:
                raise UsageError(f"empty enum at {hint!r}")
            lits = [_json_literal(v) for v in values]
            return self.rule(hint, " | ".join(gbnf_literal(lit) for lit in lits)), max(map(len, lits))
        for key in ("anyOf", "oneOf"):
            if key in schema:
                branches = [self.node(b, f"{hint}-{i}", depth + 1, arrays) for i, b in enumerate(schema[key])]
                if not branches:
                    raise UsageError(f"empty {key} at {hint!r}")
                return self.rule(hint, " | ".join(r for r, _ in branches)), max(s for _, s in branches)
        kind = schema.get("type")
        if kind is None:
            if "properties" in schema or "additionalProperties" in schema:
                kind = "object"
            elif "items" in schema or "prefixItems" in schema:
                kind = "array"
            else:
                return self.scalar(hint, arrays)
        if isinstance(kind, list):
            branches = [self.typed(schema, k, f"{hint}-{k}", depth, arrays) for k in kind]
            return self.rule(hint, " | ".join(r for r, _ in branches)), max(s for _, s in branches)
        return self.typed(schema, str(kind), hint, depth, arrays)

    def typed(self, schema: JSON, kind: str, hint: str, depth: int, arrays: int) -> tuple[str, int]:
        if kind == "object":
            return self.object(schema, hint, depth, arrays)
        if kind == "array":
            return self.array(schema, hint, depth, arrays)
        if kind == "string":
            return self.string(schema, hint, arrays)
        if kind == "integer":
            return self.integer(schema, hint)
        if kind == "number":
            return self.number(schema, hint)
        if kind == "boolean":
            return self.rule("boolean", '"true" | "false"'), 5
        if kind == "null":
            return '"null"', 4
        raise UsageError(f"unsupported JSON Schema type {kind!r} at {hint!r}")

    def string(self, schema: JSON, hint: str, arrays: int = 0) -> tuple[str, int]:
        low = int(schema.get("minLength", 0))
        high = schema.get("maxLength")
        cap = self.string_cap(arrays)
        high = cap if high is None else min(int(high), cap)
        high = max(high, low)
        if high == 0:
            return gbnf_literal('""'), 2
        body = f'"\\"" {_STRING_CHAR}{{{low},{high}}} "\\""'
        return self.rule(f"string-{low}-{high}", body), high + 2

    def integer(self, schema: JSON, hint: str) -> tuple[str, int]:
        low, high = _bounds(schema, integer=True)
        if low is not None and high is not None and 0 <= high - low <= _ENUMERABLE_RANGE:
            lits = [str(v) for v in range(int(low), int(high) + 1)]
            return self.rule(f"{hint}-int", " | ".join(gbnf_literal(x) for x in lits)), max(map(len, lits))
        digits = _digits_for(low, high)
        sign = '"-"? ' if low is None or low < 0 else ""
        body = f'{sign}("0" | [1-9] [0-9]{{0,{digits - 1}}})'
        return self.rule(f"integer-{digits}{'-signed' if sign else ''}", body), digits + (1 if sign else 0)

    def number(self, schema: JSON, hint: str) -> tuple[str, int]:
        low, high = _bounds(schema, integer=False)
        frac = f'("." [0-9]{{1,{_FRACTION_DIGITS}}})?'
        if (low is not None and high is not None and low >= 0 and float(low).is_integer()
                and float(high).is_integer() and 0 < high - low <= _ENUMERABLE_RANGE
                and "exclusiveMinimum" not in schema and "exclusiveMaximum" not in schema):
            inner = [gbnf_literal(str(v)) for v in range(int(low), int(high))]
            top = gbnf_literal(str(int(high)))
            zeros = f'("." "0"{{1,{_FRACTION_DIGITS}}})?'
            body = f"({' | '.join(inner)}) {frac} | {top} {zeros}"
            size = max(len(str(int(high))), len(str(int(high) - 1))) + 1 + _FRACTION_DIGITS
            return self.rule(f"number-{hint}", body), size
        digits = _digits_for(low, high)
        sign = '"-"? ' if low is None or low < 0 else ""
        body = f'{sign}("0" | [1-9] [0-9]{{0,{digits - 1}}}) {frac}'
        size = digits + 1 + _FRACTION_DIGITS + (1 if sign else 0)
        return self.rule(f"number-{digits}{'-signed' if sign else ''}", body), size

    def array(self, schema: JSON, hint: str, depth: int, arrays: int) -> tuple[str, int]:
        prefix = schema.get("prefixItems") or []
        items = schema.get("items", True)
        low = int(schema.get("minItems", 0))
        high = schema.get("maxItems")
        cap = self.items_cap(arrays)
        high = cap if high is None else min(int(high), cap)
        high = max(high, low, len(prefix) if items is False else 0)
        parts = [self.node(p, f"{hint}-{i}", depth + 1, arrays + 1) for i, p in enumerate(prefix)]
        if prefix:
            if items is False:  # maxItems may end the tuple early
                high = min(int(schema.get("maxItems", len(prefix))), len(prefix))
            else:
                high = max(high, len(prefix))
            if high == 0:
                return gbnf_literal("[]"), 2
            size = 2 + sum(s for _, s in parts[:high]) + min(high, len(parts)) - 1
            rest = high - len(prefix)
            more, more_size = "", 0
            if items is not False and rest > 0:
                item_ref, item_size = self.node(items, f"{hint}-item", depth + 1, arrays + 1)
                more, more_size = _repeat(f'"," {item_ref}', 0, rest), rest * (item_size + 1)
            # Without minItems every prefix item is written; with it, the items past minItems are
            # optional, each only after the one before it (positions stay meaningful).
            required = min(len(prefix) if "minItems" not in schema else low, high)
            body = f'"[" {_prefix_sequence([r for r, _ in parts[:high]], required, more)} "]"'
            return self.rule(f"{hint}-tuple", body), size + more_size
        if high == 0:
            return gbnf_literal("[]"), 2
        item_ref, item_size = self.node(items, f"{hint}-item", depth + 1, arrays + 1)
        size = 2 + high * item_size + (high - 1)
        more = _repeat(f'"," {item_ref}', max(low - 1, 0), high - 1)
        body = f'"[" ({item_ref} {more})? "]"' if low == 0 else f'"[" {item_ref} {more} "]"'
        return self.rule(f"{hint}-array", body), size

    def object(self, schema: JSON, hint: str, depth: int, arrays: int) -> tuple[str, int]:
        props: JSON = schema.get("properties") or {}
        if not props:
            return self.map(schema, hint, depth, arrays)
        required = [k for k in schema.get("required", []) if k in props]
        optional = [k for k in props if k not in required]
        if not required:  # no anchor for optional commas: emit every property
            required, optional = list(props), []
        pieces: list[str] = []
        size = 2
        for i, key in enumerate(required):
            ref, vsize = self.node(props[key], f"{hint}-{key}", depth + 1, arrays)
            key_lit = _json_literal(key) + ":"
            pieces.append(("" if i == 0 else '"," ') + f"{gbnf_literal(key_lit)} {ref}")
            size += len(key_lit) + vsize + (0 if i == 0 else 1)
        for key in optional:
            ref, vsize = self.node(props[key], f"{hint}-{key}", depth + 1, arrays)
            key_lit = _json_literal(key) + ":"
            pieces.append(f'("," {gbnf_literal(key_lit)} {ref})?')
            size += len(key_lit) + vsize + 1
        body = '"{" ' + " ".join(pieces) + ' "}"'
        return self.rule(f"{hint}-object", body), size

    def map(self, schema: JSON, hint: str, depth: int, arrays: int) -> tuple[str, int]:
        extra = schema.get("additionalProperties", True)
        if extra is False:
            return gbnf_literal("{}"), 2
        high = schema.get("maxProperties")
        cap = self.items_cap(arrays)
        high = cap if high is None else min(int(high), cap)
        low = min(int(schema.get("minProperties", 0)), high)
        if high == 0:
            return gbnf_literal("{}"), 2
        value_ref, value_size = self.node(extra, f"{hint}-value", depth + 1, arrays + 1)
        key_ref = self.rule("map-key", f'"\\"" [a-zA-Z_] [a-zA-Z0-9_]{{0,{_MAP_KEY_CHARS - 1}}} "\\""')
        pair = self.rule(f"{hint}-pair", f'{key_ref} ":" {value_ref}')
        size = 2 + high * (_MAP_KEY_CHARS + 3 + value_size) + high - 1
        more = _repeat(f'"," {pair}', max(low - 1, 0), high - 1)
        body = f'"{{" ({pair} {more})? "}}"' if low == 0 else f'"{{" {pair} {more} "}}"'
        return self.rule(f"{hint}-map", body), size

    def scalar(self, hint: str, arrays: int) -> tuple[str, int]:
        """Any JSON value is allowed here; a bounded scalar keeps the grammar finite."""
        string, s_size = self.string({}, hint, arrays)
        number, n_size = self.number({}, hint)
        body = f'{string} | {number} | "true" | "false" | "null"'
        return self.rule("any-scalar", body), max(s_size, n_size, 5)


def _prefix_sequence(refs: list[str], required: int, more: str) -> str:
    """``refs`` comma-separated: the first ``required`` always, each later one only after its
    predecessor; ``more`` (extra items) only once every ref is written."""
    tail = more
    for i in range(len(refs) - 1, required - 1, -1):
        sep = "" if i == 0 else '"," '
        tail = f"({sep}{refs[i]} {tail})?".replace(" )", ")")
    head = ' "," '.join(refs[:required])
    return f"{head} {tail}".strip()


def _repeat(expr: str, low: int, high: int) -> str:
    """``expr`` repeated low..high times (empty when high is 0)."""
    if high <= 0:
        return ""
    return f"({expr}){{{low},{high}}}"


def _bounds(schema: JSON, *, integer: bool) -> tuple[float | None, float | None]:
    low = schema.get("minimum")
    high = schema.get("maximum")
    if "exclusiveMinimum" in schema and not isinstance(schema["exclusiveMinimum"], bool):
        ex = float(schema["exclusiveMinimum"])
        low = math.floor(ex) + 1 if integer else ex
    if "exclusiveMaximum" in schema and not isinstance(schema["exclusiveMaximum"], bool):
        ex = float(schema["exclusiveMaximum"])
        high = math.ceil(ex) - 1 if integer else ex
    if integer:
        low = None if low is None else math.ceil(low)
        high = None if high is None else math.floor(high)
    return low, high


def _digits_for(low: float | None, high: float | None) -> int:
    if low is None or high is None:
        return _INT_DIGITS
    biggest = max(abs(low), abs(high), 1)
    return max(1, min(_INT_DIGITS, len(str(int(biggest)))))


# -- repair: the constraints the grammar cannot express -----------------------------------


def repair(value: Any, schema: Any, root: JSON | None = None) -> Any:
    """Clamp numbers into their bounds and drop duplicate items where ``uniqueItems`` asks.

    Only touches what the grammar cannot express; structure is already right.
    """
    root = schema if root is None and isinstance(schema, dict) else (root or {})
    if not isinstance(schema, dict):
        return value
    schema = _resolve_for_repair(schema, root)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            for branch in schema[key]:
                branch = _resolve_for_repair(branch, root) if isinstance(branch, dict) else {}
                if _type_matches(value, branch):
                    return repair(value, branch, root)
            return value
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return _clamp(value, schema)
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        out = {}
        for k, v in value.items():
            sub = props.get(k, extra if isinstance(extra, dict) else None)
            out[k] = repair(v, sub, root) if sub is not None else v
        return out
    if isinstance(value, list):
        prefix = schema.get("prefixItems") or []
        items = schema.get("items")
        fixed = [
            repair(v, prefix[i] if i < len(prefix) else items, root) if (i < len(prefix) or isinstance(items, dict)) else v
            for i, v in enumerate(value)
        ]
        if schema.get("uniqueItems"):
            unique: list[Any] = []
            for v in fixed:
                if v not in unique:
                    unique.append(v)
            if len(unique) >= int(schema.get("minItems", 0)):
                fixed = unique
        return fixed
    return value


def _resolve_for_repair(schema: JSON, root: JSON) -> JSON:
    try:
        return _Compiler(root, max_items=1, max_string=1).resolve(schema, 0)
    except UsageError:
        return schema


def _type_matches(value: Any, schema: JSON) -> bool:
    if "const" in schema:
        return bool(value == schema["const"])
    if "enum" in schema:
        return value in schema["enum"]
    if isinstance(value, dict):
        # Tagged unions (e.g. {"action": {"const": ...}}): the tags must agree too.
        props = schema.get("properties") or {}
        for key, sub in props.items():
            if isinstance(sub, dict) and "const" in sub and value.get(key) != sub["const"]:
                return False
        if any(key not in value for key in schema.get("required", [])):
            return False
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind else []
    if not kinds:
        return True
    checks = {
        "null": value is None,
        "boolean": isinstance(value, bool),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "string": isinstance(value, str),
        "array": isinstance(value, list),
        "object": isinstance(value, dict),
    }
    return any(checks.get(k, False) for k in kinds)


def _clamp(value: float, schema: JSON) -> float:
    integer = schema.get("type") == "integer"
    low, high = _bounds(schema, integer=integer)
    if low is not None and value < low:
        value = low
    if high is not None and value > high:
        value = high
    exclusive_low = schema.get("exclusiveMinimum")
    exclusive_high = schema.get("exclusiveMaximum")
    if not integer:
        # Exclusive float bounds: step just inside the interval.
        if isinstance(exclusive_low, int | float) and not isinstance(exclusive_low, bool) and value <= exclusive_low:
            value = math.nextafter(float(exclusive_low), math.inf)
        if isinstance(exclusive_high, int | float) and not isinstance(exclusive_high, bool) and value >= exclusive_high:
            value = math.nextafter(float(exclusive_high), -math.inf)
    if integer:
        return int(value)
    return value


# -- Markdown sections: bounded free text ------------------------------------------------

# A line is one sentence: it starts with a capital letter (no "1. 1" lists, no empty bullets),
# holds no '#' (no stray headings), '.' or newline, and ends with '.'; printable ASCII.
_LINE_START = "[A-Z]"
_LINE_CHAR = r"[ !\"$-\x2d/-~]"


def sections_grammar(sections: list[str], *, max_lines: int = 3, max_line_chars: int = 120,
                     min_line_chars: int = 20) -> CompiledGrammar:
    """A grammar for a Markdown answer with exactly ``sections`` as ``## `` headings, in order.

    Each section holds 1..``max_lines`` bullets of one sentence each, ``min_line_chars``..
    ``max_line_chars`` characters, so the whole answer is bounded: a small model cannot loop
    for pages, write a list of bare numbers or leave a section out.
    """
    if not sections:
        raise UsageError("sections_grammar needs at least one section")
    rest = max(0, max_line_chars - 2)
    line = f'"- " {_LINE_START} {_LINE_CHAR}{{{max(0, min_line_chars - 2)},{rest}}} "."'
    body = f'line ("\\n" line){{0,{max(0, max_lines - 1)}}}'
    parts = [gbnf_literal(("\n\n" if i else "") + f"## {name}\n") + " section" for i, name in enumerate(sections)]
    gbnf = f"root ::= {' '.join(parts)}\nsection ::= {body}\nline ::= {line}\n"
    headings = sum(len(f"## {name}\n") + 2 for name in sections)
    size = headings + len(sections) * max_lines * (2 + max_line_chars + 1)
    return CompiledGrammar(gbnf, size, max_lines, max_line_chars)
