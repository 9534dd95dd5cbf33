"""``baton serve``: the HTTP API and control plane (``pip install 'baton-agents[server]'``).

This module stays light: the web stack is imported only when the service starts."""

from __future__ import annotations

import argparse
from typing import Any


def add_serve_parser(sub: Any) -> None:
    """Register ``baton serve`` on the CLI's subparsers."""
    s = sub.add_parser("serve", help="serve registered workflows over HTTP, webhooks and a Redis queue")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--store", help="store URL (default: $BATON_STORE or sqlite:///.baton/baton.db)")
    s.add_argument("--workflows", required=True, metavar="DIR", help="serve the workflow files in DIR, by name")
    s.add_argument("--max-runs", type=int, default=8, metavar="N", help="runs executing at once (others wait)")
    s.add_argument("--keys-file", metavar="PATH", help="KEY=TENANT lines (also: $BATON_API_KEYS)")
    s.add_argument("--tenant-limits", metavar="PATH",
                   help='JSON {"TENANT": {"max_active_runs": N, "usd_per_day": X}} (also: $BATON_TENANT_LIMITS)')
    s.add_argument("--queue", metavar="URL", help="redis://HOST:PORT/DB?stream=baton:runs&group=baton")
    s.add_argument("--provider", help="anthropic | local | openai (as for baton run)")
    from baton.temporal.cli import add_engine_options

    add_engine_options(s)  # --engine local|temporal: runs execute here or on Temporal workers (baton worker)
    s.add_argument("--max-body", type=int, default=1_000_000, metavar="BYTES", help="request body cap")
    s.add_argument("--recover-every", type=float, default=15.0, metavar="S",
                   help="seconds between sweeps for runs whose owner died")
    s.add_argument("--webhook-window", type=float, default=300.0, metavar="S",
                   help="how old a webhook's X-Baton-Timestamp may be")
    s.add_argument("--no-access-log", action="store_true")
    s.add_argument("--ui-capture", choices=["none", "metadata", "full"], default="full",
                   help="how much step content the web UI at /ui/ shows (redacted as in logs; default full)")
    s.set_defaults(fn=cmd_serve, own_signals=True)  # uvicorn's shutdown handles SIGTERM (checkpoints runs)


async def cmd_serve(args: argparse.Namespace) -> int:
    from baton.server.main import serve

    return await serve(args)
