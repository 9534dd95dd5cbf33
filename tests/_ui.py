"""The web UI's test harness: a real ``baton serve`` app (uvicorn, SQLite store, the fake
Messages API) in a thread of the test process, so a test can also register a Python
workflow with an approval step; HTTP helpers that keep a session cookie; Chromium."""

from __future__ import annotations

import asyncio
import contextlib
import http.cookiejar
import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import baton
from _serve import KEYS, free_port
from _services import unavailable
from baton.runtime.budget import Limits
from baton.server.registry import Registered

CHROMIUM = os.environ.get("BATON_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("BATON_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
ARTEFACTS = Path(os.environ.get("BATON_UI_ARTEFACTS", "")) if os.environ.get("BATON_UI_ARTEFACTS") else None

ORCH = """\
version: 1
name: orch
description: A planner, two workers, a writer.
defaults: {model: claude-haiku-4-5, max_tokens: 200, temperature: 0}
agents:
  planner: {system: "UI PLANNER."}
  alpha: {description: "Alpha worker.", system: "UI ALPHA."}
  beta: {description: "Beta worker.", system: "UI BETA."}
  writer: {system: "UI WRITER."}
workflow: {pattern: orchestrator, planner: planner, workers: [alpha, beta], synthesizer: writer}
"""

PIPE = """\
version: 1
name: pipe
description: Two stages; the second waits for the test to let it answer.
input:
  type: object
  required: [topic]
  properties: {topic: {type: string, description: "What to write about"}, words: {type: integer}}
defaults: {model: claude-haiku-4-5, max_tokens: 64, temperature: 0}
agents:
  first: {system: "UI FIRST."}
  second: {system: "UI SECOND."}
workflow: {pattern: pipeline, stages: [first, second]}
"""

PLAN = {"subtasks": [{"id": "a", "worker": "alpha", "instruction": "do A", "depends_on": []},
                     {"id": "c", "worker": "alpha", "instruction": "do C", "depends_on": []},
                     {"id": "b", "worker": "beta", "instruction": "do B", "depends_on": ["a", "c"]}],
        "synthesis_instructions": "merge"}

drafter = baton.Agent("drafter", system="UI DRAFTER.", model="claude-haiku-4-5")


class Announce:
    """A Python workflow with a human approval step (YAML has none), registered as ``announce``."""

    baton_ref = "registered:announce"
    limits = Limits()
    spec = {"workflow": {"pattern": "python"}}

    async def __call__(self, ctx: baton.RunContext, topic: Any) -> Any:
        draft = await ctx.call(drafter, str(topic))
        decision = await ctx.approve("publish", {"draft": draft.output})
        return {"published": decision.approved, "text": decision.edit or draft.output}


def announce_registered() -> Registered:
    return Registered("announce", "announce.py", "0" * 64, Announce(), "Draft, then wait for approval.",
                      {"type": "object", "required": ["topic"], "properties": {"topic": {"type": "string"}}})


@dataclass
class InProcessService:
    """``create_app`` under uvicorn on a free port, in a thread with its own event loop."""

    workflows: Path
    store: str
    port: int = field(default_factory=free_port)
    extra: list[Registered] = field(default_factory=list)
    app: Any = None
    _server: Any = None
    _thread: threading.Thread | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def svc(self) -> Any:
        return self.app.app.app.state.service

    def start(self, timeout_s: float = 60.0) -> InProcessService:
        import uvicorn

        from baton.server.app import ServeConfig, create_app

        self.app = create_app(ServeConfig(store_url=self.store, workflows_dir=str(self.workflows), keys=dict(KEYS),
                                          provider="anthropic", access_log=False, sweep_s=3600))
        for reg in self.extra:
            self.svc.registry[reg.name] = reg
        self._server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                                     lifespan="on"))
        ready = threading.Event()

        async def main() -> None:
            await self.svc.start()
            ready.set()
            await self._server.serve()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(main())

        self._thread = threading.Thread(target=run, name="ui-service", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not (ready.is_set() and self._server.started):
            time.sleep(0.05)
        assert self._server.started, "the in-process service did not start"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=60)

    def call(self, coro: Any, timeout_s: float = 60.0) -> Any:
        """Run a coroutine on the service's loop (e.g. submit a run) and wait for its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def submit(self, workflow: str, value: Any, tenant: str = "tenant-a") -> str:
        reg = self.svc.registry[workflow]
        run_id = self.svc.new_run_id()
        self.call(self.svc.runs.submit(tenant, reg, value, run_id=run_id, limits=None, source="test"))
        return str(run_id)

    def status(self, run_id: str) -> str:
        return str(self.call(self.svc.runs.db().get_run(run_id)).status)

    def wait(self, run_id: str, statuses: tuple[str, ...] = ("succeeded",), timeout_s: float = 90.0) -> str:
        return poll(lambda: (s := self.status(run_id)) in statuses and s, timeout_s, f"run {run_id} in {statuses}")


def poll(check: Callable[[], Any], timeout_s: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Page:
    status: int
    body: str
    headers: dict[str, str]
    url: str


class Browser:
    """urllib with a cookie jar: the UI as a form-posting client sees it (no JavaScript)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def get(self, path: str) -> Page:
        return self._open(urllib.request.Request(self.base + path))

    def post(self, path: str, form: dict[str, str]) -> Page:
        data = urllib.parse.urlencode(form).encode()
        return self._open(urllib.request.Request(self.base + path, data=data, method="POST", headers={
            "Content-Type": "application/x-www-form-urlencoded"}))

    def _open(self, req: urllib.request.Request) -> Page:
        try:
            with self.opener.open(req, timeout=60) as resp:
                return Page(resp.status, resp.read().decode(), dict(resp.headers), resp.url)
        except urllib.error.HTTPError as exc:
            return Page(exc.code, exc.read().decode(), dict(exc.headers), exc.url)

    def sign_in(self, key: str) -> Page:
        return self.post("/ui/login", {"key": key})

    def csrf(self, path: str = "/ui/") -> str:
        import re

        found = re.search(r'name="csrf" value="([^"]+)"', self.get(path).body)
        assert found, "no CSRF token on the page"
        return found.group(1)


def chromium_problem() -> str | None:
    if not (shutil.which(CHROMIUM) or os.path.exists(CHROMIUM)):
        return f"Chromium is not installed at {CHROMIUM} (apt-get install chromium chromium-driver)"
    if not (shutil.which(CHROMEDRIVER) or os.path.exists(CHROMEDRIVER)):
        return f"chromedriver is not installed at {CHROMEDRIVER} (apt-get install chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


def chrome() -> Iterator[Any]:
    """A headless Chromium driven by Selenium; skips (fails under CI=true) without one."""
    problem = chromium_problem()
    if problem:
        unavailable(problem)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000", "--disable-extensions", "--no-first-run"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def write_workflows(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "orch.yaml").write_text(ORCH)
    (folder / "pipe.yaml").write_text(PIPE)
    return folder


def body_json(page: Page) -> Any:
    return json.loads(page.body)


def rules_for(srv: Any) -> None:
    """The replies the UI tests' workflows get (alpha's answer quotes a key-shaped secret)."""
    from baton.testing import json_reply, text

    srv.add_rule("UI PLANNER", reply=json_reply(PLAN))
    srv.add_rule("UI ALPHA", reply=text("alpha says sk-ant-api03-SECRETSECRETSECRET1234"))
    srv.add_rule("UI BETA", reply=text("beta result"))
    srv.add_rule("UI WRITER", reply=text("final report"))
    srv.add_rule("UI FIRST", reply=text("first done"))
    srv.add_rule("UI SECOND", reply=text("second done"))
    srv.add_rule("UI DRAFTER", reply=text("draft text"))


@contextlib.contextmanager
def fake_model() -> Iterator[Any]:
    from baton.testing import FakeAnthropicServer

    srv = FakeAnthropicServer(api_key="test-key")
    rules_for(srv)
    srv.start_in_thread()
    try:
        yield srv
    finally:
        srv.stop_thread()


@contextlib.contextmanager
def ui_service(model_url: str, tmp: Path) -> Iterator[InProcessService]:
    """The in-process service over a fresh SQLite store, with ``announce`` registered too."""
    saved = {k: os.environ.get(k) for k in ("ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY")}
    os.environ.update({"ANTHROPIC_BASE_URL": model_url, "ANTHROPIC_API_KEY": "test-key"})
    svc = InProcessService(write_workflows(tmp / "wf"), f"sqlite:///{tmp}/ui.db", extra=[announce_registered()])
    try:
        yield svc.start()
    finally:
        svc.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
