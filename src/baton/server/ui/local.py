"""``baton ui``: the web UI over a store, read-only, without keys, on 127.0.0.1 only.

It needs no workflows and no service: it reads the store's runs (every run, every
tenant: whoever can read the store file or database sees them anyway) and offers no
action, so nothing reachable over the port can change a run."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import AsyncIterator
from typing import Any

from baton.errors import UsageError
from baton.observe.progress import UI_PORT as DEFAULT_PORT
from baton.stores import open_store

HOST = "127.0.0.1"


def add_ui_parser(sub: Any) -> None:
    """Register ``baton ui`` on the CLI's subparsers."""
    u = sub.add_parser("ui", help="browse the store's runs in a web browser (read-only, on 127.0.0.1)")
    u.add_argument("--store", help="store URL (default: $BATON_STORE or sqlite:///.baton/baton.db)")
    u.add_argument("--port", type=int, default=DEFAULT_PORT, metavar="N", help=f"port (default {DEFAULT_PORT})")
    u.add_argument("--capture", choices=["none", "metadata", "full"], default="full",
                   help="how much step content the pages show (redacted as in logs; default full)")
    u.set_defaults(fn=cmd_ui, own_signals=True)


def create_local_app(store_url: str | None, capture: str = "full") -> Any:
    """The read-only UI app over one store (opened on startup, closed on shutdown)."""
    from fastapi import FastAPI
    from starlette.requests import Request
    from starlette.responses import Response

    from baton.observe.redact import check_capture
    from baton.server.http import ApiError, error_response
    from baton.server.ui.routes import mount_ui
    from baton.server.ui.source import StoreSource
    store = open_store(store_url)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not app.state.opened:
            await store.open()
        try:
            yield
        finally:
            await store.close()

    app = FastAPI(title="baton ui", lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)
    app.state.store, app.state.opened = store, False

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return error_response(exc.status, exc.type, exc.message, exc.headers)

    mount_ui(app, StoreSource(store), sessions=None, capture=check_capture(capture))
    return app


async def cmd_ui(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError as exc:
        raise UsageError(f"baton ui needs the server extra ({exc.name} is missing): "
                         f"pip install 'baton-agents[server]'") from None
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be between 1 and 65535, got {args.port}")
    app = create_local_app(args.store, args.capture)
    await app.state.store.open()  # a wrong URL or an unreachable database: one clear line, before binding
    app.state.opened = True
    server = uvicorn.Server(uvicorn.Config(app, host=HOST, port=args.port, log_level="warning", access_log=False,
                                           lifespan="on"))
    sys.stderr.write(f"baton ui: http://{HOST}:{args.port}/ui/ (read-only; Ctrl-C stops)\n")
    sys.stderr.flush()
    try:
        await server.serve()
    except SystemExit:
        raise UsageError(f"cannot listen on {HOST}:{args.port} (address in use or not permitted)") from None
    return 0
