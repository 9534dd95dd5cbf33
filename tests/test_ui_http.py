"""The web UI over HTTP, without a browser: sign-in, tenant scoping, CSRF, the actions
(cancel, resume, approve, start from a form), redaction, and ``baton ui`` read-only."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _serve import free_port
from _ui import Browser, InProcessService, fake_model, poll, ui_service
from baton.testing import FakeAnthropicServer
from baton.testing.script import Fault, Rule

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def model() -> Iterator[FakeAnthropicServer]:
    with fake_model() as srv:
        yield srv


@pytest.fixture(scope="module")
def service(model: FakeAnthropicServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessService]:
    with ui_service(model.url, tmp_path_factory.mktemp("ui-http")) as svc:
        yield svc


def signed_in(service: InProcessService, key: str = "key-a") -> Browser:
    b = Browser(service.url)
    assert b.sign_in(key).status == 200
    return b


def test_pages_need_a_key_of_the_service_and_the_cookie_holds_no_key(service: InProcessService) -> None:
    anon = Browser(service.url)
    first = anon.get("/ui/")
    assert first.url.endswith("/ui/login") and 'type="password"' in first.body
    assert anon.sign_in("not-a-key").status == 401
    assert anon.get("/ui/").url.endswith("/ui/login")
    b = signed_in(service)
    [cookie] = list(b.jar)
    assert cookie.name == "baton_ui" and "key-a" not in cookie.value and cookie.has_nonstandard_attr("HttpOnly")
    page = b.get("/ui/")
    assert page.status == 200 and "tenant-a" in page.body
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    forged = Browser(service.url)
    kid, exp, mac = cookie.value.split(".")
    forged.jar.set_cookie(_cookie(cookie, f"{kid}.{int(exp) + 9999}.{mac}"))
    assert forged.get("/ui/").url.endswith("/ui/login")  # a changed expiry breaks the MAC


def _cookie(like: object, value: str) -> object:
    import copy

    c = copy.copy(like)
    c.value = value  # type: ignore[attr-defined]
    return c


def test_another_tenants_run_is_not_found_anywhere_in_the_ui(service: InProcessService) -> None:
    run_id = service.submit("orch", "secret topic")
    service.wait(run_id)
    a, b = signed_in(service, "key-a"), signed_in(service, "key-b")
    assert run_id in a.get("/ui/").body and run_id in a.get("/ui/runs-table").body
    assert run_id not in b.get("/ui/").body and run_id not in b.get("/ui/runs-table").body
    for path in (f"/ui/runs/{run_id}", f"/ui/runs/{run_id}/main", f"/ui/compare?run={run_id}",
                 f"/ui/runs/{run_id}/events"):
        page = b.get(path)
        assert page.status == 404 and "secret" not in page.body, (path, page.status)
    cancel = b.post(f"/ui/runs/{run_id}/cancel", {"csrf": b.csrf()})
    assert cancel.status == 404
    assert service.status(run_id) == "succeeded"


def test_run_page_shows_plan_timeline_costs_and_redacts_content(service: InProcessService) -> None:
    run_id = service.submit("orch", "topic")
    service.wait(run_id)
    page = signed_in(service).get(f"/ui/runs/{run_id}").body
    nodes = re.findall(r'<g class="node st-(\w+)" data-node="(\w+)"', page)
    assert sorted(nodes) == [("done", "a"), ("done", "b"), ("done", "c")]
    assert page.count('class="edge"') == 2  # a -> b, c -> b
    bars = re.findall(r'<g class="bar k-(\w+) st-(\w+)"', page)
    assert ("agent", "done") in bars and len(bars) == 10  # 5 agent steps + 5 model calls
    assert re.search(r'up to <strong id="peak">2</strong> agents at once', page)  # a and c in parallel
    assert ">planner</th>" in page and ">claude-haiku-4-5</th>" in page
    assert "sk-ant-api03-SECRET" not in page and "[REDACTED]" in page
    from baton.observe.events import trace_id_for

    assert trace_id_for(run_id) in page


def test_forms_without_the_sessions_csrf_token_change_nothing(service: InProcessService,
                                                            model: FakeAnthropicServer) -> None:
    b = signed_in(service)
    run_id = service.submit("announce", "csrf")
    service.wait(run_id, ("awaiting_approval",))
    waiting = b.get(f"/ui/runs/{run_id}").body
    assert "waits for a decision" in waiting and 'value="approve"' in waiting
    assert "draft text" in waiting  # the approval's request, as captured
    step = re.findall(rf'action="/ui/runs/{run_id}/approvals/([^"]+)"', waiting)[0]
    bad = b.post(f"/ui/runs/{run_id}/approvals/{step}", {"decision": "approve", "csrf": "x" * 32})
    assert bad.status == 403
    other = signed_in(service, "key-b").csrf()  # a token of another session
    assert b.post(f"/ui/runs/{run_id}/approvals/{step}", {"decision": "approve", "csrf": other}).status == 403
    assert service.status(run_id) == "awaiting_approval"
    ok = b.post(f"/ui/runs/{run_id}/approvals/{step}", {"decision": "reject", "note": "no", "csrf": b.csrf()})
    assert ok.status == 200 and ok.url.endswith(f"/ui/runs/{run_id}")
    service.wait(run_id)
    final = b.get(f"/ui/runs/{run_id}").body
    assert "published&quot;: false" in final


def test_start_form_from_the_input_schema_checks_fields_and_starts_the_run(service: InProcessService) -> None:
    b = signed_in(service)
    form = b.get("/ui/start").body
    assert re.search(r'<label for="in-pipe-topic">topic \(required\)</label><input id="in-pipe-topic" name="topic" '
                     r'type="text" value="" required', form)
    assert 'id="in-pipe-words" name="words" type="number" step="1"' in form
    token = b.csrf("/ui/start")
    wrong = b.post("/ui/start/pipe", {"topic": "x", "words": "many", "csrf": token})
    assert wrong.status == 422 and "words" in wrong.body and "not a whole number" in wrong.body
    missing = b.post("/ui/start/pipe", {"topic": "", "csrf": token})
    assert missing.status == 422 and "topic" in missing.body
    started = b.post("/ui/start/pipe", {"topic": "kites", "words": "12", "csrf": token})
    run_id = started.url.rsplit("/", 1)[1]
    assert started.status == 200 and f"Run <code>{run_id}</code>" in started.body
    service.wait(run_id)
    stored = service.call(service.svc.runs.db().get_run(run_id))
    assert stored.input == {"topic": "kites", "words": 12} and stored.metadata["tenant"] == "tenant-a"
    assert stored.metadata["source"] == "ui"


def test_a_failed_run_is_resumed_from_the_run_page(service: InProcessService, model: FakeAnthropicServer) -> None:
    rule = Rule("UI FIRST.*resume me", fault=Fault("status", code=400, error_type="invalid_request_error",
                                                    message="refused for the test"))
    with model.script._lock:
        model.rules.insert(0, rule)  # ahead of the ordinary UI FIRST rule
    b = signed_in(service)
    run_id = service.submit("pipe", {"topic": "resume me"})
    service.wait(run_id, ("failed",))
    page = b.get(f"/ui/runs/{run_id}").body
    assert "Resume run" in page and 'role="alert"' in page
    with model.script._lock:
        model.rules.remove(rule)
    resumed = b.post(f"/ui/runs/{run_id}/resume", {"csrf": b.csrf()})
    assert resumed.status == 200
    service.wait(run_id)
    again = b.post(f"/ui/runs/{run_id}/resume", {"csrf": b.csrf()})
    assert again.status == 409 and "succeeded" in again.body
    # The same action over the API: another tenant's run is 404, a finished one 409.
    assert _api(service, f"/v1/runs/{run_id}/resume", "key-b")[0] == 404
    status, body = _api(service, f"/v1/runs/{run_id}/resume", "key-a")
    assert status == 409 and body["error"]["type"] == "conflict"


def _api(service: InProcessService, path: str, key: str) -> tuple[int, Any]:
    req = urllib.request.Request(service.url + path, data=b"", method="POST",
                                 headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_baton_ui_serves_the_store_read_only_on_loopback(service: InProcessService, tmp_path: Path) -> None:
    run_id = service.submit("orch", "local view")
    service.wait(run_id)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "baton", "ui", "--store", service.store, "--port", str(port)],
                            env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert f"http://127.0.0.1:{port}/ui/" in line, line
        b = Browser(f"http://127.0.0.1:{port}")
        page = poll(lambda: _ok(b, "/ui/"), 30, "baton ui to answer")
        assert run_id in page.body and "read-only" in page.body and "Cancel run" not in page.body
        run = b.get(f"/ui/runs/{run_id}")
        assert run.status == 200 and 'class="dag"' in run.body and "Cancel run" not in run.body
        assert b.post(f"/ui/runs/{run_id}/cancel", {}).status == 405
        assert service.status(run_id) == "succeeded"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _ok(b: Browser, path: str) -> object:
    try:
        page = b.get(path)
    except OSError:
        time.sleep(0.1)
        return None
    return page if page.status == 200 else None


def test_baton_ui_names_a_bad_store_in_one_line() -> None:
    r = subprocess.run([sys.executable, "-m", "baton", "ui", "--store", "nosuch://x", "--port", str(free_port())],
                       capture_output=True, text=True, timeout=60, env={**os.environ,
                                                                        "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.returncode == 2 and "nosuch" in r.stderr and "Traceback" not in r.stderr


def test_compare_two_runs_of_a_workflow(service: InProcessService) -> None:
    first, second = service.submit("orch", "one"), service.submit("orch", "two")
    other = service.submit("pipe", {"topic": "other"})
    for run_id in (first, second, other):
        service.wait(run_id)
    b = signed_in(service)
    pick = b.get(f"/ui/compare?run={first}").body
    assert f'<option value="{second}">' in pick and f'value="{other}"' not in pick  # same workflow only
    page = b.get(f"/ui/compare?run={first}&run={second}").body
    rows = dict(re.findall(r'<tr><th scope="row">([^<]+)</th>(.*?)</tr>', page))
    assert set(rows) >= {"Status", "Workflow", "Cost", "Model calls", "Duration (s)", "Prompt version: planner",
                         "Cost: planner", "Cost: alpha"}
    assert rows["Model calls"].startswith("<td>5</td><td>5</td><td>0</td>")
    assert rows["Prompt version: writer"].endswith("<td>same</td>")
    mixed = b.get(f"/ui/compare?run={first}&run={other}").body
    assert "different workflows" in mixed and "Prompt version: first" in mixed
    assert b.get(f"/ui/compare?run={first}&run={second}&run={other}").status == 400
    only_pipe = b.get("/ui/runs-table?workflow=pipe").body
    assert other in only_pipe and first not in only_pipe and second not in only_pipe
    assert first in b.get("/ui/?workflow=orch&status=succeeded").body
    assert first not in b.get("/ui/?workflow=orch&status=failed").body
