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


def _convert(node: yaml.Node, path: Path, lines: dict[Path, int], file: str) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = yaml.SafeLoader.construct_scalar(yaml.SafeLoader(""), key_node) if isinstance(
                key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                raise WorkflowError("mapping keys must be plain strings", file=file,
                                    line=key_node.start_mark.line + 1, field=dotted(path) or None)
            if key in out:
                raise WorkflowError(f"duplicate key {key!r}", file=file, line=key_node.start_mark.line + 1,
                                    field=dotted((*path, key)))
            out[key] = _convert(value_node, (*path, key), lines, file)
            lines[(*path, key)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, (*path, i), lines, file) for i, item in enumerate(node.value)]
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    except yaml.constructor.ConstructorError as exc:
        raise WorkflowError(f"unsupported YAML value: {exc.problem}", file=file, line=node.start_mark.line + 1,
                            field=dotted(path) or None) from exc
    finally:
        loader.dispose()


def load_yaml(text: str, file: str) -> Located:
    """Parse ``text``; syntax errors become a WorkflowError with the file and line."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise WorkflowError(f"invalid YAML: {exc.problem or exc}", file=file,
                            line=mark.line + 1 if mark else None) from exc
    except yaml.YAMLError as exc:
        raise WorkflowError(f"invalid YAML: {exc}", file=file) from exc
    lines: dict[Path, int] = {}
    if node is None:
        raise WorkflowError("the file is empty", file=file, line=1)
    data = _convert(node, (), lines, file)
    return Located(data, lines, file)
