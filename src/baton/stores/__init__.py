"""Store backends behind one protocol, chosen by URL.

``sqlite:///path`` (default ``sqlite:///.baton/baton.db``), ``postgresql://...``,
``redis://...`` and ``memory://``. Backends with extra dependencies import lazily.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

from baton.errors import UsageError
from baton.stores.base import RunRecord, StepRecord, Store

DEFAULT_STORE_URL = "sqlite:///.baton/baton.db"


def store_url_from_env(url: str | None = None) -> str:
    return url or os.environ.get("BATON_STORE") or DEFAULT_STORE_URL


def open_store(url: str | None = None) -> Store:
    """Build (not yet open) the store for ``url``; ``UsageError`` names a malformed URL."""
    url = store_url_from_env(url)
    scheme, sep, _rest = url.partition("://")
    if not sep:
        raise UsageError(f"malformed store URL {url!r}: expected SCHEME://..., e.g. {DEFAULT_STORE_URL}")
    if scheme == "memory":
        from baton.stores.memory import MemoryStore

        return MemoryStore(url)
    if scheme == "sqlite":
        from baton.stores.sqlite import SQLiteStore

        return SQLiteStore(url)
    if scheme in ("postgresql", "postgres"):
        from baton.stores.postgres import PostgresStore

        return PostgresStore(url)
    if scheme in ("redis", "rediss"):
        from baton.stores.redis import RedisStore

        return RedisStore(url)
    raise UsageError(
        f"unknown store URL scheme {scheme!r} in {url!r}: use sqlite:///PATH, postgresql://..., redis://... or memory://"
    )


@contextlib.asynccontextmanager
async def using_store(store: Store | str | None) -> AsyncIterator[Store]:
    """An open store for the length of a block. A ``Store`` object is opened (opening is
    idempotent) and left open for whoever owns it; a URL (``None``: ``BATON_STORE`` or the
    default) is opened here and closed when the block ends, however it ends."""
    owned = store is None or isinstance(store, str)
    opened = open_store(store) if store is None or isinstance(store, str) else store
    await opened.open()
    try:
        yield opened
    finally:
        if owned:
            await opened.close()


__all__ = ["RunRecord", "StepRecord", "Store", "open_store"]
