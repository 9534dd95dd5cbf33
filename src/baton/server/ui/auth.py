"""UI sessions: the same API keys and tenants as ``/v1``, kept in a cookie that holds no key.

A person enters an API key once; the cookie then carries ``KEYID.EXPIRES.MAC``: the key's
short hash (to find the key again), an expiry, and an HMAC of both made with the key
itself. Any service process with the same keys accepts it; removing a key ends its
sessions. Forms that change something carry a CSRF token derived from the session (the
cookie is also ``SameSite=Strict``)."""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

COOKIE = "baton_ui"
SESSION_S = 12 * 3600


def _kid(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _mac(key: str, *parts: str) -> str:
    return hmac.new(key.encode(), ".".join(("baton-ui", *parts)).encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Session:
    tenant: str
    csrf: str


class Sessions:
    """Issues and checks session cookies for ``keys`` (API key -> tenant)."""

    def __init__(self, keys: dict[str, str], lifetime_s: float = SESSION_S) -> None:
        self._by_kid = {_kid(k): (k, t) for k, t in keys.items()}
        self.lifetime_s = lifetime_s

    def issue(self, key: str, now: float | None = None) -> str | None:
        """A cookie value for ``key``, or None when it is not a key of this service."""
        found = self._by_kid.get(_kid(key))
        if found is None or not hmac.compare_digest(found[0].encode(), key.encode()):
            return None
        expires = str(int((now if now is not None else time.time()) + self.lifetime_s))
        kid = _kid(key)
        return f"{kid}.{expires}.{_mac(key, kid, expires)}"

    def check(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session a cookie stands for, or None (absent, forged, expired, key removed)."""
        if not cookie or cookie.count(".") != 2:
            return None
        kid, expires, mac = cookie.split(".")
        found = self._by_kid.get(kid)
        if found is None or not expires.isdigit():
            return None
        if int(expires) < (now if now is not None else time.time()):
            return None
        key, tenant = found
        if not hmac.compare_digest(_mac(key, kid, expires).encode(), mac.encode()):
            return None
        return Session(tenant, _mac(key, "csrf", cookie)[:32])
