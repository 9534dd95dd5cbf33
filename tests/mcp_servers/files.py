"""A small file server: stdio by default, streamable HTTP with ``--http PORT``.

Tools: read_file, list_files, count_calls (a counter file shows how often each tool really ran),
plus misbehaving ones: crash (the process exits mid-call), crash_once and hang (never answers).
``bad_output.py`` is the server whose answers break its own output schema.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from mcp.server.mcpserver import MCPServer
from pydantic import BaseModel

server = MCPServer("files")
ROOT = Path(os.environ.get("FILES_ROOT", "."))
COUNTER = os.environ.get("FILES_COUNTER")


def _count(name: str) -> None:
    if COUNTER:
        with open(COUNTER, "a") as fh:
            fh.write(name + "\n")


@server.tool()
def read_file(path: str) -> str:
    """Read a text file under the server's root."""
    _count("read_file")
    return (ROOT / path).read_text()


@server.tool()
def list_files() -> str:
    """List the files under the server's root, one per line."""
    _count("list_files")
    return "\n".join(sorted(p.name for p in ROOT.iterdir()))


class Stats(BaseModel):
    lines: int
    words: int


@server.tool()
def stats(path: str) -> Stats:
    """Count lines and words of a file."""
    _count("stats")
    text = (ROOT / path).read_text()
    return Stats(lines=len(text.splitlines()), words=len(text.split()))


@server.tool()
def crash() -> str:
    """Exit the server process in the middle of the call."""
    _count("crash")
    os._exit(3)


@server.tool()
def hang() -> str:
    """Never answer."""
    _count("hang")
    time.sleep(3600)
    return "never"


@server.tool()
def crash_once(marker: str) -> str:
    """Exit the process the first time (when ``marker`` does not exist yet), answer afterwards."""
    _count("crash_once")
    if not os.path.exists(marker):
        Path(marker).write_text("crashed")
        os._exit(3)
    return "survived"


if __name__ == "__main__":
    if os.environ.get("FILES_PIDFILE"):
        with open(os.environ["FILES_PIDFILE"], "a") as fh:
            fh.write(f"{os.getpid()}\n")
    ap = argparse.ArgumentParser()
    ap.add_argument("--http", type=int, default=0)
    args = ap.parse_args()
    if args.http:
        server.run("streamable-http", host="127.0.0.1", port=args.http)
    else:
        server.run()
