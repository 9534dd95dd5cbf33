"""A tiny MCP server (official ``mcp`` SDK) over the text files in ./notes: list, read and search them.

Run on its own with ``python notes_server.py`` (stdio) or ``python notes_server.py --http 9000``
(streamable HTTP at http://127.0.0.1:9000/mcp); examples/mcp_tools/notes.yaml starts it itself.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

NOTES = Path(__file__).resolve().parent / "notes"
server = MCPServer("notes")
READ_ONLY = ToolAnnotations(read_only_hint=True)


def _note(name: str) -> Path:
    path = (NOTES / name).resolve()
    if path.parent != NOTES or not path.is_file():
        raise ValueError(f"no note named {name!r}")
    return path


@server.tool(annotations=READ_ONLY)
def list_notes() -> list[str]:
    """The names of all notes."""
    return sorted(p.name for p in NOTES.glob("*.txt"))


@server.tool(annotations=READ_ONLY)
def read_note(name: str) -> str:
    """The full text of one note, by name (as list_notes gives it)."""
    return _note(name).read_text()


@server.tool(annotations=READ_ONLY)
def grep_notes(word: str) -> list[str]:
    """Lines of any note containing a word (case-insensitive), as 'note: line'."""
    hits = []
    for p in sorted(NOTES.glob("*.txt")):
        hits += [f"{p.name}: {line}" for line in p.read_text().splitlines() if word.lower() in line.lower()]
    return hits


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--http", type=int, default=0, help="serve streamable HTTP on this port instead of stdio")
    args = ap.parse_args()
    if args.http:
        server.run("streamable-http", host="127.0.0.1", port=args.http)
    else:
        server.run()
