"""Optional encryption at rest of stored content, with a key from the environment.

When ``BATON_STORE_KEY`` is set, the content of what a store writes (a step's result and
error, a run's input, output and error, shared-state values) is sealed with Fernet
(AES-128-CBC + HMAC-SHA256, from the ``cryptography`` package) before it is written; ids,
statuses, times, usage and costs stay readable so listing and stats need no key. Reading a
sealed value needs the key it was written with: a missing or wrong key is a
``StoreKeyError`` naming the variable, never garbage.

``BATON_STORE_KEY`` holds one key, or several separated by commas: the first seals, every
one opens (rotate by putting the new key first). Generate a key with::

    python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"
"""

from __future__ import annotations

import os
from typing import Any

import orjson

from baton.errors import StoreKeyError, UsageError

ENV = "BATON_STORE_KEY"
MARK = "$baton_sealed"
"""A sealed value is stored as ``{"$baton_sealed": "fernet", "token": "..."}``."""

_cache: tuple[str, Any] | None = None


def cipher() -> Any:
    """The ``MultiFernet`` of ``BATON_STORE_KEY``, or None when it is unset (cached per value)."""
    global _cache
    raw = os.environ.get(ENV)
    if not raw:
        return None
    if _cache is not None and _cache[0] == raw:
        return _cache[1]
    try:
        from cryptography.fernet import Fernet, MultiFernet
    except ImportError as exc:
        raise UsageError(f"{ENV} is set but the cryptography package is not installed: "
                         f"pip install 'baton-agents[crypto]'") from exc
    try:
        keys = [Fernet(part.strip().encode()) for part in raw.split(",") if part.strip()]
    except (ValueError, TypeError):
        raise UsageError(f"{ENV} is not a valid key: expected 32 url-safe base64-encoded bytes (generate one "
                         f"with Fernet.generate_key()), or several separated by commas") from None
    if not keys:
        raise UsageError(f"{ENV} holds no key")
    _cache = (raw, MultiFernet(keys))
    return _cache[1]


def seal(value: Any, box: Any) -> Any:
    """``value`` sealed with ``box`` (``None`` stays ``None``: nothing to hide)."""
    if value is None:
        return None
    token = box.encrypt(orjson.dumps(value))
    return {MARK: "fernet", "token": token.decode()}


def is_sealed(value: Any) -> bool:
    return type(value) is dict and MARK in value


def unseal(value: Any, *, what: str) -> Any:
    """The plain value of a sealed one (anything else comes back as is)."""
    if not is_sealed(value):
        return value
    box = cipher()
    if box is None:
        raise StoreKeyError(f"{what} is encrypted: set {ENV} to the key it was written with")
    from cryptography.fernet import InvalidToken

    try:
        return orjson.loads(box.decrypt(str(value.get("token", "")).encode()))
    except InvalidToken:
        raise StoreKeyError(f"cannot decrypt {what}: {ENV} is not the key it was written with "
                            f"(or the stored value was altered)") from None
    except orjson.JSONDecodeError as exc:
        raise StoreKeyError(f"cannot decrypt {what}: the sealed value is not JSON ({exc})") from None
