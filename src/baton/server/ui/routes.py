"""The UI's routes under ``/ui/``, mounted on ``baton serve``'s app or on ``baton ui``'s.

With ``sessions`` (the service) every page needs a signed-in tenant and shows only its
runs; actions post forms that carry the session's CSRF token. Without (``baton ui``) the
pages are read-only and show every run of the store."""

from __future__ import annotations

import hmac
import json
import time
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

from baton.errors import BatonError, Conflict
from baton.observe.redact import Capture, redact_text
from baton.server.http import ApiError
from baton.server.registry import InputInvalid, check_input
from baton.server.ui import pages
from baton.server.ui.auth import COOKIE, Session, Sessions
from baton.server.ui.forms import FormError, parse
from baton.server.ui.source import ServiceSource, Source, workflow_name

HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
STATIC = {"ui.js": "text/javascript; charset=utf-8", "ui.css": "text/css; charset=utf-8"}
MAX_LIST = 200


class _Redirect(Exception):
    def __init__(self, to: str) -> None:
        self.to = to


def html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers=HEADERS)


def redirect(to: str) -> RedirectResponse:
    return RedirectResponse(to, status_code=303, headers=HEADERS)


class UI:
    """Request handling shared by the routes: who is asking, what they may see and do."""

    def __init__(self, source: Source, sessions: Sessions | None, capture: Capture) -> None:
        self.source, self.sessions, self.capture = source, sessions, capture
        self.static = {name: resources.files("baton.server.ui").joinpath("static", name).read_bytes()
                       for name in STATIC}

    def session(self, request: Request) -> Session | None:
        """The signed-in session; a page without one goes to the sign-in form."""
        if self.sessions is None:
            return None
        found = self.sessions.check(request.cookies.get(COOKIE))
        if found is None:
            raise _Redirect("/ui/login")
        request.scope.setdefault("state", {})["tenant"] = found.tenant
        return found

    def ctx(self, s: Session | None) -> pages.Ctx:
        return pages.Ctx(s.csrf if s else None, self.source.read_only, s.tenant if s else None, self.capture)

    async def form(self, request: Request, s: Session | None) -> dict[str, str]:
        """The posted form (urlencoded), after the CSRF check."""
        raw = parse_qs((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)
        form = {k: v[-1] for k, v in raw.items()}
        if s is None or not hmac.compare_digest(form.get("csrf", "").encode(), s.csrf.encode()):
            raise ApiError(403, "forbidden", "the form is stale or not from this page: reload and try again")
        return form

    async def detail(self, s: Session | None, run_id: str) -> Any:
        d = await self.source.detail(s.tenant if s else None, run_id)
        if d is None:
            raise ApiError(404, "run_not_found", f"no run {run_id!r}")
        return d

    def actions(self) -> ServiceSource:
        if not isinstance(self.source, ServiceSource):
            raise ApiError(405, "read_only", "this UI is read-only")
        return self.source


def mount_ui(app: FastAPI, source: Source, *, sessions: Sessions | None = None, capture: Capture = "full") -> None:
    """Add the ``/ui/`` pages to ``app``."""
    ui = UI(source, sessions, capture)

    async def to_login(request: Request, exc: Exception) -> Response:
        return redirect(exc.to if isinstance(exc, _Redirect) else "/ui/login")

    app.add_exception_handler(_Redirect, to_login)
    _routes_auth(app, ui)
    _routes_read(app, ui)
    _routes_act(app, ui)


def _problem(ui: UI, s: Session | None, exc: Exception) -> HTMLResponse:
    if isinstance(exc, ApiError):
        return html(pages.problem_page(exc.type.replace("_", " ").capitalize(), exc.message, ui.ctx(s)), exc.status)
    status = 409 if isinstance(exc, Conflict) else 503
    return html(pages.problem_page("Not done", redact_text(str(exc)), ui.ctx(s)), status)


def _routes_auth(app: FastAPI, ui: UI) -> None:
    @app.get("/ui", include_in_schema=False)
    async def ui_root() -> Response:
        return redirect("/ui/")

    @app.get("/ui/login", include_in_schema=False)
    async def login_form() -> Response:
        return html(pages.login()) if ui.sessions else redirect("/ui/")

    @app.post("/ui/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        raw = parse_qs((await request.body()).decode("utf-8", "replace"))
        cookie = ui.sessions.issue(raw.get("key", [""])[-1].strip()) if ui.sessions else None
        if cookie is None:
            return html(pages.login("That is not an API key of this service."), 401)
        resp = redirect("/ui/")
        resp.set_cookie(COOKIE, cookie, max_age=int(ui.sessions.lifetime_s) if ui.sessions else None, path="/ui",
                        httponly=True, samesite="strict", secure=request.url.scheme == "https")
        return resp

    @app.post("/ui/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        resp = redirect("/ui/login")
        resp.delete_cookie(COOKIE, path="/ui")
        return resp

    @app.get("/ui/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in STATIC:
            return Response(b"not found", status_code=404)
        return Response(ui.static[name], media_type=STATIC[name], headers={"Cache-Control": "max-age=300",
                                                                           "X-Content-Type-Options": "nosniff"})


def _filters(request: Request) -> tuple[str | None, str | None]:
    q = request.query_params
    return q.get("status") or None, q.get("workflow") or None


def _routes_read(app: FastAPI, ui: UI) -> None:
    @app.get("/ui/", include_in_schema=False)
    async def runs(request: Request) -> Response:
        s = ui.session(request)
        st, wf = _filters(request)
        rows = await ui.source.runs(s.tenant if s else None, MAX_LIST, st, wf)
        names = sorted({r.name for r in ui.source.workflows()} | {workflow_name(r) for r in rows} | ({wf} if wf else
                                                                                                      set()))
        return html(pages.runs_page(rows, ui.ctx(s), st, wf, names))

    @app.get("/ui/runs-table", include_in_schema=False)
    async def runs_table(request: Request) -> Response:
        s = ui.session(request)
        st, wf = _filters(request)
        return html(pages.runs_table(await ui.source.runs(s.tenant if s else None, MAX_LIST, st, wf)))

    @app.get("/ui/runs/{run_id}", include_in_schema=False)
    async def run_page(run_id: str, request: Request) -> Response:
        s = ui.session(request)
        try:
            d = await ui.detail(s, run_id)
        except ApiError as exc:
            return _problem(ui, s, exc)
        return html(pages.run_page(d, ui.ctx(s), ui.source.live, time.time()))

    @app.get("/ui/runs/{run_id}/main", include_in_schema=False)
    async def run_main(run_id: str, request: Request) -> Response:
        s = ui.session(request)
        d = await ui.detail(s, run_id)
        resp = html(pages.run_main(d, ui.ctx(s), time.time()))
        resp.headers["X-Run-Status"] = d.run.status
        return resp

    @app.get("/ui/runs/{run_id}/events", include_in_schema=False)
    async def run_events(run_id: str, request: Request) -> Response:
        s = ui.session(request)
        if not ui.source.live or await ui.source.run(s.tenant if s else None, run_id) is None:
            raise ApiError(404, "run_not_found", f"no live events for run {run_id!r}")
        raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id") or "0"
        return StreamingResponse(ui.source.events_after(run_id, int(raw) if raw.isdigit() else 0),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    _routes_compare(app, ui)


def _routes_compare(app: FastAPI, ui: UI) -> None:
    @app.get("/ui/compare", include_in_schema=False)
    async def compare(request: Request) -> Response:
        s = ui.session(request)
        ids = request.query_params.getlist("run")
        try:
            if len(ids) == 1:
                one = await ui.detail(s, ids[0])
                rows = await ui.source.runs(s.tenant if s else None, MAX_LIST, workflow=workflow_name(one.run))
                return html(pages.pick_page(ids[0], rows, ui.ctx(s)))
            if len(ids) != 2:
                raise ApiError(400, "pick_two_runs", f"choose exactly two runs to compare ({len(ids)} chosen)")
            a, b = await ui.detail(s, ids[0]), await ui.detail(s, ids[1])
        except ApiError as exc:
            return _problem(ui, s, exc)
        return html(pages.compare_page(a, b, ui.ctx(s)))


def _routes_act(app: FastAPI, ui: UI) -> None:
    async def act(request: Request, run_id: str, verb: str, step: str | None = None) -> Response:
        s = ui.session(request)
        try:
            src = ui.actions()
            form = await ui.form(request, s)
            record = (await ui.detail(s, run_id)).run
            if verb == "cancel":
                await src.cancel(record)
            elif verb == "resume":
                await src.resume(record)
            elif s is not None and step is not None:  # a ServiceSource always has a session
                await src.approve(record, step, form.get("decision") == "approve", _edit(form.get("edit", "")),
                                  form.get("note") or None, s.tenant)
        except (ApiError, BatonError) as exc:
            return _problem(ui, s, exc)
        return redirect(f"/ui/runs/{run_id}")

    @app.post("/ui/runs/{run_id}/cancel", include_in_schema=False)
    async def cancel(run_id: str, request: Request) -> Response:
        return await act(request, run_id, "cancel")

    @app.post("/ui/runs/{run_id}/resume", include_in_schema=False)
    async def resume(run_id: str, request: Request) -> Response:
        return await act(request, run_id, "resume")

    @app.post("/ui/runs/{run_id}/approvals/{step:path}", include_in_schema=False)
    async def approve(run_id: str, step: str, request: Request) -> Response:
        return await act(request, run_id, "approve", step)

    @app.get("/ui/start", include_in_schema=False)
    async def start_forms(request: Request) -> Response:
        s = ui.session(request)
        return html(pages.start_page(ui.source.workflows(), ui.ctx(s)))

    @app.post("/ui/start/{workflow}", include_in_schema=False)
    async def start(workflow: str, request: Request) -> Response:
        s = ui.session(request)
        try:
            src = ui.actions()
            form = await ui.form(request, s)
        except ApiError as exc:
            return _problem(ui, s, exc)
        return await _start(ui, src, s, workflow, form)


async def _start(ui: UI, src: ServiceSource, s: Session | None, workflow: str, form: dict[str, str]) -> Response:
    reg = src.svc.registry.get(workflow)
    if reg is None or s is None:
        return _problem(ui, s, ApiError(404, "unknown_workflow", f"no registered workflow named {workflow!r}"))
    try:
        value = parse(reg.input_schema, form)
        check_input(reg, value)
        run_id = await src.start(s.tenant, reg, value)
    except (FormError, InputInvalid) as exc:
        msg = f"input.{exc.field}: {exc}" if isinstance(exc, FormError) else str(exc)
        return html(pages.start_page(src.workflows(), ui.ctx(s), workflow, msg, form), 422)
    except (ApiError, BatonError) as exc:
        return _problem(ui, s, exc)
    return redirect(f"/ui/runs/{run_id}")


def _edit(raw: str) -> Any:
    """An approval's edit: None when empty, JSON when it parses, else the text."""
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw
