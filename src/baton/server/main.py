"""Start the service under uvicorn; SIGTERM stops intake, checkpoints running runs, exits."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

from baton.errors import UsageError


def _config(args: argparse.Namespace) -> Any:
    from baton.server.config import ServeConfig, load_keys, load_tenant_limits

    if args.max_runs < 1:
        raise UsageError("--max-runs must be at least 1")
    if args.max_body < 1024:
        raise UsageError("--max-body must be at least 1024 bytes")
    keys = load_keys(args.keys_file)
    if not keys:
        raise UsageError("no API keys: set BATON_API_KEYS=\"KEY=TENANT,...\" or pass --keys-file")
    if args.queue:
        from baton.server.queue import parse_queue_url

        parse_queue_url(args.queue)
    return ServeConfig(store_url=args.store, workflows_dir=args.workflows, keys=keys, max_runs=args.max_runs,
                       tenant_limits=load_tenant_limits(args.tenant_limits), queue_url=args.queue,
                       provider=args.provider, max_body_bytes=args.max_body, sweep_s=args.recover_every,
                       webhook_window_s=args.webhook_window, access_log=not args.no_access_log,
                       ui_capture=args.ui_capture, engine=_temporal(args))


def _temporal(args: argparse.Namespace) -> Any:
    """``--engine temporal``: where the runs execute (None: in this service)."""
    if getattr(args, "engine", "local") != "temporal":
        return None
    from baton.temporal.cli import temporal_engine

    return temporal_engine(args)


async def serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from baton.server.app import create_app
    except ImportError as exc:
        raise UsageError(f"baton serve needs the server extra ({exc.name} is missing): "
                         f"pip install 'baton-agents[server]'") from None
    from baton.observe.redact import register_env_secrets

    register_env_secrets()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="baton: %(message)s")
    app = create_app(_config(args))
    service = app.app.app.state.service  # AccessLog -> BodyLimit -> FastAPI
    await service.start()  # store, recovery, queue: a failure here is one clear line, before binding
    loop = asyncio.get_running_loop()

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # SSE streams end and intake refuses before uvicorn waits on open connections
            loop.call_soon_threadsafe(service.begin_stop)
            super().handle_exit(sig, frame)
            # uvicorn re-raises the signal after its shutdown (the process would die by it); a
            # graceful stop here is complete, so it exits 0.
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):
                captured.clear()

    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                            lifespan="on", timeout_graceful_shutdown=10)
    server = Server(config)
    try:
        await server.serve()
    except SystemExit:  # uvicorn could not bind (it has printed why): not a budget stop (its code 3)
        await service.stop()
        raise UsageError(f"cannot listen on {args.host}:{args.port} (address in use or not permitted)") from None
    sys.stderr.write("baton: serve stopped\n")
    return 0
