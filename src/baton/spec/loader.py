"""Safe YAML loading that remembers where every value came from.

Workflow errors must name file, line and field, so we compose the YAML node tree
ourselves (safe loader only: no tags, no object construction) and keep a map from
each value's path to its line.
"""

from __future__ import annotations

from typing import Any

import yaml

from baton.errors import WorkflowError

Path = tuple[str | int, ...]


class Located:
    """A parsed document plus the line of every path in it (1-based)."""

    def __init__(self, data: Any, lines: dict[Path, int], file: str) -> None:
        self.data = data
        self.lines = lines
        self.file = file

    def line(self, path: Path) -> int | None:
        """The line of ``path``, or of its nearest ancestor that has one."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), 1)

    def error(self, path: Path, message: str) -> dict[str, Any]:
        return {"file": self.file, "line": self.line(path), "field": dotted(path), "message": message}


def dotted(path: Path) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


MAX_FILE_BYTES = 1024 * 1024
"""A workflow file larger than this is refused before it is parsed."""
MAX_DEPTH = 64
"""Nesting deeper than this (mappings and lists, aliases expanded) is refused."""
MAX_VALUES = 100_000
"""Values after alias expansion: an alias bomb of a few hundred bytes would expand to billions."""


def decode_text(data: bytes, file: str) -> str:
    """``data`` as UTF-8 text (a leading BOM allowed); anything else is a WorkflowError naming the offset."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise WorkflowError(f"the file is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})",
                            file=file, line=line) from None


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader, refusing nesting beyond ``MAX_DEPTH`` while it composes (the composer
    recurses once per level: a deep file would otherwise end in RecursionError)."""

    def __init__(self, stream: str, file: str) -> None:
        super().__init__(stream)
        self.file = file
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise WorkflowError(f"nesting deeper than {MAX_DEPTH} levels", file=self.file, line=mark.line + 1)
            return super().compose_node(parent, index)  # type: ignore[no-untyped-call]
        finally:
            self.depth -= 1


class _Converter:
    """Node tree -> plain values, counting every value produced so aliases cannot expand without bound."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[Path, int] = {}
        self.count = 0
        self.scalars = yaml.SafeLoader("")  # one constructor for every scalar: building one each is slow

    def refuse(self, node: yaml.Node, message: str) -> WorkflowError:
        return WorkflowError(message, file=self.file, line=node.start_mark.line + 1)

    def convert(self, node: yaml.Node, path: Path) -> Any:
        self.count += 1
        if self.count > MAX_VALUES:
            raise self.refuse(node, f"the file expands to more than {MAX_VALUES} values (YAML aliases?)")
        if len(path) > MAX_DEPTH:
            raise self.refuse(node, f"nesting deeper than {MAX_DEPTH} levels (YAML aliases?)")
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            return self.mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.convert(item, (*path, i)) for i, item in enumerate(node.value)]
        try:
            return self.scalars.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as exc:
            raise WorkflowError(f"unsupported YAML value: {exc.problem}", file=self.file,
                                line=node.start_mark.line + 1, field=dotted(path) or None) from exc

    def mapping(self, node: yaml.MappingNode, path: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self.scalars.construct_scalar(key_node) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                raise WorkflowError("mapping keys must be plain strings", file=self.file,
                                    line=key_node.start_mark.line + 1, field=dotted(path) or None)
            if key in out:
                raise WorkflowError(f"duplicate key {key!r}", file=self.file, line=key_node.start_mark.line + 1,
                                    field=dotted((*path, key)))
            out[key] = self.convert(value_node, (*path, key))
            self.lines[(*path, key)] = key_node.start_mark.line + 1
        return out


def load_yaml(text: str, file: str) -> Located:
    """Parse ``text``; syntax errors become a WorkflowError with the file and line.

    Safe loader only (no tags, no objects), with caps on size, nesting and alias expansion.
    """
    if len(text) > MAX_FILE_BYTES:
        raise WorkflowError(f"the text is larger than {MAX_FILE_BYTES // 1024} KiB, the limit for a workflow file",
                            file=file)
    loader = _BoundedLoader(text, file)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise WorkflowError(f"invalid YAML: {exc.problem or exc}", file=file,
                            line=mark.line + 1 if mark else None) from exc
    except yaml.YAMLError as exc:
        raise WorkflowError(f"invalid YAML: {exc}", file=file) from exc
    finally:
        loader.dispose()
    if node is None:
        raise WorkflowError("the file is empty", file=file, line=1)
    converter = _Converter(file)
    try:
        data = converter.convert(node, ())
    finally:
        converter.scalars.dispose()
    return Located(data, converter.lines, file)
