"""The ASGI application: routes of DESIGN.md "Round-2 contracts: service"."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.responses import JSONResponse, Response, StreamingResponse

from baton.errors import BatonError, UsageError
from baton.server.config import TenantLimits, webhook_secret, webhook_tenant
from baton.server.http import AccessLog, ApiError, BodyLimit, error_response
from baton.server.models import ERRORS, RETRIED, Accepted, Decision, RunIn
from baton.server.registry import InputInvalid, Registered, check_input
from baton.server.state import Service
from baton.server.views import run_view, summary_view

log = logging.getLogger("baton.server")
M = TypeVar("M", bound=BaseModel)


@dataclass
class ServeConfig:
    store_url: str | None
    workflows_dir: str
    keys: dict[str, str]
    max_runs: int = 8
    tenant_limits: dict[str, TenantLimits] = field(default_factory=dict)
    queue_url: str | None = None
    provider: str | None = None
    max_body_bytes: int = 1_000_000
    sweep_s: float = 15.0
    webhook_window_s: float = 300.0
    access_log: bool = True
    engine: Any = None
    """None: runs execute in this service; a ``baton.temporal.TemporalEngine``: on its workers."""


def _tenant(request: Request, svc: Service) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    tenant = svc.tenant_for(key.strip()) if scheme.lower() == "bearer" else None
    if tenant is None:
        raise ApiError(401, "unauthorized", "missing or wrong API key (Authorization: Bearer KEY)",
                       {"WWW-Authenticate": "Bearer"})
    request.scope.setdefault("state", {})["tenant"] = tenant
    return tenant


def _registered(svc: Service, name: str) -> Registered:
    reg = svc.registry.get(name)
    if reg is None:
        raise ApiError(404, "unknown_workflow", f"no registered workflow named {name!r}")
    return reg


def _checked(reg: Registered, value: Any) -> None:
    try:
        check_input(reg, value)
    except InputInvalid as exc:
        raise ApiError(422, "invalid_input", f"{exc.field}: {exc.detail}") from exc


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON Schema with its ``$defs`` inlined (it is placed inside the document)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(defs[ref.rsplit("/", 1)[1]])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    result: dict[str, Any] = inline(schema)
    return result


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": _schema(model)}}}}


def _runs_body_doc(registry: dict[str, Registered]) -> dict[str, Any]:
    """``RunIn`` once per registered workflow, with its input schema: the document says exactly
    what intake accepts, so clients (and fuzzers) can send it."""
    variants = []
    for name, reg in sorted(registry.items()):
        schema = _schema(RunIn)
        schema["title"] = f"RunIn[{name}]"
        schema["properties"]["workflow"] = {"const": name}
        if reg.input_schema is not None:
            schema["properties"]["input"] = reg.input_schema
            schema["required"] = ["workflow", "input"]
        variants.append(schema)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": variants}}}}}


def _parse(model: type[M], raw: bytes) -> M:
    """The body as ``model`` whatever its content type: 400 if not JSON, 422 naming the field."""
    try:
        data = json.loads(raw)
    except ValueError:
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise ApiError(422, "invalid_request", f"{where}: {first.get('msg', 'invalid')}") from None


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return error_response(exc.status, exc.type, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            return error_response(400, "invalid_json", "the body is not valid JSON")
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return error_response(422, "invalid_request", f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(BatonError)
    async def baton_error(request: Request, exc: BatonError) -> Response:
        from baton.observe.redact import redact_text
        from baton.server.runs import Conflict

        if isinstance(exc, Conflict):
            return error_response(409, "conflict", str(exc))
        if isinstance(exc, UsageError):
            return error_response(422, "invalid_request", redact_text(str(exc)))
        log.warning("request failed: %s", redact_text(str(exc)))
        return error_response(503, type(exc).__name__, "the service could not complete this request")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("unexpected error on %s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return error_response(500, "internal", "the service failed on this request; it is logged")

    @app.exception_handler(404)
    async def not_found(request: Request, exc: Exception) -> Response:
        return error_response(404, "not_found", f"no route {request.url.path}")

    @app.exception_handler(405)
    async def not_allowed(request: Request, exc: Exception) -> Response:
        from starlette.routing import Match

        allowed = sorted({m for r in request.app.routes if r.matches(request.scope)[0] != Match.NONE
                          for m in (getattr(r, "methods", None) or ())})
        return error_response(405, "method_not_allowed", f"{request.method} is not allowed on {request.url.path}",
                              {"Allow": ", ".join(allowed)})


def _routes_runs(app: FastAPI, svc: Service) -> None:
    @app.post("/v1/runs", status_code=202, response_model=Accepted, responses={**RETRIED, **ERRORS}, tags=["runs"],
              openapi_extra=_runs_body_doc(svc.registry))
    async def create_run(request: Request, response: Response) -> Accepted:
        """Store a run (status ``pending``) and queue it; answered only once it is stored."""
        tenant = _tenant(request, svc)
        body = _parse(RunIn, await request.body())
        reg = _registered(svc, body.workflow)
        _checked(reg, body.input)
        key = request.headers.get("idempotency-key")
        run_id = body.run_id or (_derived_id("idem", tenant, key) if key else None)
        await svc.check_tenant_limits(tenant)
        record, created = await svc.runs.submit(tenant, reg, body.input, run_id=run_id or svc.new_run_id(),
                                                limits=body.limits.model_dump(exclude_none=True)
                                                if body.limits else None, source="api",
                                                extra={"idempotency_key": key} if key else None)
        request.scope["state"]["run_id"] = record.run_id
        if created:
            svc.metrics.intake.labels("api").inc()
        else:
            response.status_code = 200
        return Accepted(run_id=record.run_id, status=record.status, created=created,
                        queue_position=svc.runs.position(record.run_id))

    @app.get("/v1/runs", tags=["runs"], responses=ERRORS)
    async def list_runs(request: Request, limit: int = 50, status: str | None = None) -> dict[str, Any]:
        tenant = _tenant(request, svc)
        rows = await svc.runs.list(tenant, max(1, min(limit, 500)), status)
        return {"runs": [summary_view(r, svc.runs.position(r.run_id)) for r in rows]}

    @app.get("/v1/runs/{run_id}", tags=["runs"], responses=ERRORS)
    async def get_run(run_id: str, request: Request) -> dict[str, Any]:
        record = await svc.owned_run(_tenant(request, svc), run_id, request)
        db = svc.runs.db()
        steps = await db.load_steps(run_id)
        transitions = await db.transitions(run_id)
        view = run_view(record, steps, transitions, svc.runs.position(run_id))
        if record.status == "awaiting_approval":
            view["awaiting"] = sorted(await svc.runs.waiting_steps(record))
        return view


def _routes_run_control(app: FastAPI, svc: Service) -> None:
    @app.post("/v1/runs/{run_id}/cancel", status_code=202, tags=["runs"], responses=ERRORS)
    async def cancel_run(run_id: str, request: Request) -> dict[str, Any]:
        record = await svc.owned_run(_tenant(request, svc), run_id, request)
        record = await svc.runs.cancel(record)
        return {"run_id": run_id, "status": record.status}

    @app.post("/v1/runs/{run_id}/approvals/{step:path}", status_code=202, tags=["runs"], responses=ERRORS,
              openapi_extra=_body_doc(Decision))
    async def approve(run_id: str, step: str, request: Request) -> dict[str, Any]:
        tenant = _tenant(request, svc)
        body = _parse(Decision, await request.body())
        record = await svc.owned_run(tenant, run_id, request)
        await svc.runs.approve(record, step, approved=body.approved, edit=body.edit, note=body.note,
                               by=f"api:{tenant}")
        return {"run_id": run_id, "step": step, "approved": body.approved, "status": "pending"}

    @app.get("/v1/runs/{run_id}/events", tags=["runs"], responses=ERRORS,
             response_class=StreamingResponse)
    async def events(run_id: str, request: Request) -> StreamingResponse:
        """Server-Sent Events: one per event of the run; ``Last-Event-ID`` resumes; ends with the run."""
        await svc.owned_run(_tenant(request, svc), run_id, request)
        raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id") or "0"
        last = int(raw) if raw.isdigit() else 0
        return StreamingResponse(svc.sse(run_id, last), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _derived_id(kind: str, *parts: str) -> str:
    return f"{kind}-" + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]


def _routes_hooks(app: FastAPI, svc: Service, window_s: float) -> None:
    @app.post("/v1/hooks/{workflow}", status_code=202, response_model=Accepted, tags=["intake"],
              responses={**RETRIED, **ERRORS})
    async def hook(workflow: str, request: Request, response: Response) -> Accepted:
        """Webhook intake. ``X-Baton-Timestamp: UNIX_SECONDS`` and ``X-Baton-Signature: sha256=HEX``,
        the HMAC-SHA256 of ``TIMESTAMP.BODY`` with the workflow's secret."""
        secret = webhook_secret(workflow)
        reg = svc.registry.get(workflow)
        body = await request.body()
        sig = request.headers.get("x-baton-signature", "")
        if reg is None or secret is None or not _signed(secret, body, request.headers.get("x-baton-timestamp", ""),
                                                        sig, window_s):
            raise ApiError(401, "bad_signature", "missing, expired or wrong webhook signature")
        try:
            value = json.loads(body) if body.strip() else None
        except ValueError:
            raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
        _checked(reg, value)
        tenant = webhook_tenant(workflow)
        request.scope.setdefault("state", {})["tenant"] = tenant
        await svc.check_tenant_limits(tenant)
        record, created = await svc.runs.submit(tenant, reg, value, run_id=_derived_id("hook", workflow, sig),
                                                limits=None, source="webhook")
        request.scope["state"]["run_id"] = record.run_id
        if created:
            svc.metrics.intake.labels("webhook").inc()
        else:
            response.status_code = 200  # a replay of a delivery already taken: the same run
        return Accepted(run_id=record.run_id, status=record.status, created=created,
                        queue_position=svc.runs.position(record.run_id))


def _signed(secret: bytes, body: bytes, timestamp: str, signature: str, window_s: float) -> bool:
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > window_s:
        return False
    expected = "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), signature.strip().encode())


def _routes_misc(app: FastAPI, svc: Service) -> None:
    @app.get("/v1/health", tags=["service"])
    async def health() -> dict[str, Any]:
        return {"status": "stopping" if svc.runs.stopping else "ok"}

    @app.get("/v1/workflows", tags=["service"], responses=ERRORS)
    async def workflows(request: Request) -> dict[str, Any]:
        _tenant(request, svc)
        return {"workflows": [r.public() for r in sorted(svc.registry.values(), key=lambda r: r.name)]}

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        body, ctype = svc.metrics.render(len(svc.runs.waiting), len(svc.runs.active))
        return Response(body, media_type=ctype)

    @app.get("/ui/", include_in_schema=False)
    async def ui() -> Response:
        return JSONResponse({"ui": "not built yet; use the /v1 API"}, status_code=501)


def create_app(config: ServeConfig) -> Any:
    """The ASGI app: FastAPI routes inside the body cap and the access log."""
    svc = Service(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:  # the service was started before uvicorn bound its port (baton.server.main)
            yield
        finally:
            await svc.stop()

    app = FastAPI(title="baton", version="1", lifespan=lifespan,
                  description="Run registered baton workflows over HTTP, webhooks and a Redis Streams queue.")
    app.state.service = svc
    _install_errors(app)
    _routes_misc(app, svc)
    _routes_runs(app, svc)
    _routes_run_control(app, svc)
    _routes_hooks(app, svc, config.webhook_window_s)
    return AccessLog(BodyLimit(app, config.max_body_bytes), svc.metrics, svc.live.trace_id,
                     enabled=config.access_log)


__all__ = ["ServeConfig", "create_app"]
