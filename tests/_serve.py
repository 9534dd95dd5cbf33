"""A real ``baton serve`` process for the service tests: start, call over HTTP, stop or kill."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KEYS = {"key-a": "tenant-a", "key-b": "tenant-b"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]


@dataclass
class Serve:
    """One ``baton serve`` subprocess."""

    workflows: Path
    store: str
    model_url: str
    tmp: Path
    extra: list[str] = field(default_factory=list)
    env_extra: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> Serve:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "BATON_"))}
        env.update({"ANTHROPIC_BASE_URL": self.model_url, "ANTHROPIC_API_KEY": "test-key",
                    "BATON_API_KEYS": ",".join(f"{k}={t}" for k, t in KEYS.items()), **self.env_extra})
        self.log = self.tmp / f"serve-{self.port}.log"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "baton", "serve", "--port", str(self.port), "--workflows",
                 str(self.workflows), "--store", self.store, "--recover-every", "1", *self.extra],
                env=env, cwd=self.tmp, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"baton serve exited {self.proc.returncode}:\n{self.output()}")
            with contextlib.suppress(OSError):
                if self.call("GET", "/v1/health", key=None).status == 200:
                    return self
            time.sleep(0.1)
        raise AssertionError(f"baton serve did not answer in {timeout_s}s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text()[-4000:] if self.log and self.log.exists() else ""

    def call(self, method: str, path: str, body: Any = None, *, key: str | None = "key-a",
             headers: dict[str, str] | None = None, raw: bytes | None = None, timeout: float = 30.0) -> Reply:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=dict(headers or {}))
        if key is not None:
            req.add_header("Authorization", f"Bearer {key}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return Reply(resp.status, _decode(resp.read()), dict(resp.headers))
        except urllib.error.HTTPError as exc:
            return Reply(exc.code, _decode(exc.read()), dict(exc.headers))

    def submit(self, workflow: str, input_value: Any, *, key: str = "key-a", **extra: Any) -> str:
        r = self.call("POST", "/v1/runs", {"workflow": workflow, "input": input_value, **extra}, key=key)
        assert r.status == 202, r
        return str(r.body["run_id"])

    def wait(self, run_id: str, statuses: tuple[str, ...] = ("succeeded",), *, key: str = "key-a",
             timeout_s: float = 90.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        body: Any = None
        while time.monotonic() < deadline:
            r = self.call("GET", f"/v1/runs/{run_id}", key=key)
            body = r.body
            if r.status == 200 and body["status"] in statuses:
                return dict(body)
            time.sleep(0.1)
        raise AssertionError(f"run {run_id} never reached {statuses}: {body}\n{self.output()}")

    def events(self, run_id: str, *, last_id: str | None = None, key: str = "key-a",
               timeout: float = 60.0) -> list[tuple[str | None, str, dict[str, Any]]]:
        """Read the SSE stream to its end: (id, event, data) per event."""
        req = urllib.request.Request(f"{self.url}/v1/runs/{run_id}/events",
                                     headers={"Authorization": f"Bearer {key}"})
        if last_id is not None:
            req.add_header("Last-Event-ID", last_id)
        out: list[tuple[str | None, str, dict[str, Any]]] = []
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            ev_id, kind, data = None, "message", ""
            for raw in resp:
                line = raw.decode().rstrip("\n")
                if not line:
                    if data:
                        out.append((ev_id, kind, json.loads(data)))
                    ev_id, kind, data = None, "message", ""
                elif line.startswith("id: "):
                    ev_id = line[4:]
                elif line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    data += line[6:]
        return out

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout_s)


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode(errors="replace")


def signed(secret: str, body: bytes, ts: int | None = None) -> dict[str, str]:
    ts = int(time.time()) if ts is None else ts
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Baton-Timestamp": str(ts), "X-Baton-Signature": f"sha256={mac}", "Content-Type": "application/json"}


@contextlib.contextmanager
def serving(*services: Serve) -> Iterator[tuple[Serve, ...]]:
    try:
        yield tuple(s.start() for s in services)
    finally:
        for s in services:
            if s.proc is not None and s.proc.poll() is None:
                s.proc.kill()
                s.proc.wait(timeout=30)


def poll(check: Callable[[], Any], timeout_s: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
