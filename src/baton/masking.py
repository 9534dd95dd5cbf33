"""What a message may show: URL credentials masked, terminal control characters escaped.

Error messages and listings echo URLs (store, provider base URL) and stored data (run
ids, workflow refs). A URL's userinfo may hold a password, even in a URL too malformed
to parse, and stored text may hold escape sequences that would drive the terminal.
Only ``re`` is imported here: this sits on every error path.
"""

from __future__ import annotations

import re

MASK = "***"

# scheme://USERINFO@ : the userinfo runs to the last '@' of the URL-like token, so a
# password holding '/', ':' or '@' (invalid, hence echoed verbatim by parsers) is masked whole.
_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.\-]*://)[^\s'\"<>`]*@")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONTROL_ALL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def mask_urls(text: str) -> str:
    """``text`` with the userinfo (user and password) of every URL in it replaced by ``***``."""
    if "://" not in text or "@" not in text:
        return text
    return _USERINFO.sub(lambda m: f"{m.group(1)}{MASK}@", text)


def mask_in(value: object) -> object:
    """``mask_urls`` applied to every string inside a JSON-like value (a new value; the argument is kept)."""
    if isinstance(value, str):
        return mask_urls(value)
    if isinstance(value, dict):
        return {k: mask_in(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask_in(v) for v in value]
    return value


def printable(text: str, *, keep_newlines: bool = True) -> str:
    """``text`` with control characters (ESC, BEL, CR, C1...) shown as ``\\xNN`` escapes, so
    stored data cannot move the cursor, retitle the terminal or forge lines."""
    pattern = _CONTROL if keep_newlines else _CONTROL_ALL
    if not pattern.search(text):
        return text
    return pattern.sub(lambda m: f"\\x{ord(m.group(0)):02x}", text)
