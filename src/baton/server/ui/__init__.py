"""The web UI at ``/ui/``: runs list, run page (timeline, plan DAG, cost, steps, live
updates), approvals, cancel, resume, start forms and run comparison. See docs/ui.md.

Server-rendered HTML plus one small hand-written script (``static/ui.js``) for live
updates; no CDN, no build step. ``baton serve`` mounts it with its API keys and tenants
(``mount_ui`` with a ``ServiceSource``); ``baton ui`` mounts it read-only over a store."""

from __future__ import annotations

from baton.server.ui.routes import mount_ui

__all__ = ["mount_ui"]
