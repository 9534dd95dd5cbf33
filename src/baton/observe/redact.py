"""Redaction and content capture: what a sink may write.

Every sink passes event data through ``apply_capture`` (drop or size content) and
``redact`` (mask secrets) before it writes anything. Redaction is copy-on-write: the
argument is never mutated, and when nothing matches it is returned as is. Clean text
is cheap: short strings (names, ids) hit a cache, longer ones are scanned for a few
trigger substrings before any regex runs.
"""

from __future__ import annotations

import dataclasses
import os
import re
import threading
from collections.abc import Mapping
from typing import Any, Literal, cast, get_args

import orjson

from baton.errors import UsageError

Capture = Literal["none", "metadata", "full"]
"""How much model/tool content a sink keeps: nothing, sizes only, or everything (redacted)."""

CAPTURE_MODES: tuple[str, ...] = get_args(Capture)

REDACTED = "[REDACTED]"

# Event fields that hold model or tool content (prompts, outputs, tool arguments).
CONTENT_KEYS = frozenset({
    "input", "output", "messages", "arguments", "system", "content", "text", "result",
    "raw_output", "prompt", "completion", "thinking", "tool_input", "tool_output",
})
# Other free text that may quote content (error messages, validation errors).
FREE_TEXT_KEYS = frozenset({
    "error", "errors", "message", "reason", "detail", "details", "description", "traceback",
})

# Well-known credential shapes. Each is cheap to search; all are searched in one pass.
_SECRET_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Anthropic (sk-ant-api03-...) and OpenAI (sk-proj-..., sk-...) keys. The prefixed
    # shapes are masked even glued to other text; bare sk- only as a word of its own,
    # so "task-force-..." stays readable.
    (re.compile(r"sk-(?:ant|proj|svcacct|admin)-[A-Za-z0-9_\-]{8,}"), REDACTED),
    (re.compile(r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_\-]{16,}"), REDACTED),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]{8,}"), r"\1 " + REDACTED),
    (re.compile(r"\bAKIA[0-9A-Z]{16}\b"), REDACTED),
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}"), REDACTED),
    (re.compile(r"\bxox[abprs]-[A-Za-z0-9\-]{10,}"), REDACTED),
    (re.compile(r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"), REDACTED),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)", re.S),
     REDACTED),
    # Passwords in URLs: scheme://user:password@host (store URLs get logged).
    (re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^/\s:@]*:)[^/\s@]+@"), r"\1" + REDACTED + "@"),
)

# Keys whose values are credentials whatever they look like. ``input_tokens`` and
# ``max_tokens`` must not match, so "token" is matched as a whole last word only.
_SENSITIVE_KEY = re.compile(
    r"(?i)^(?:.*[_\-. ])?(?:authorization|api[_\-]?key|apikey|password|passwd|passphrase|secret"
    r"|token|cookie|set[_\-]cookie|credentials?|private[_\-]?key|session[_\-]?id)$"
)

_ENV_SECRET_SUFFIXES = ("_KEY", "_TOKEN", "_SECRET", "PASSWORD")
_MIN_SECRET_CHARS = 4
_MIN_ENV_SECRET_CHARS = 8  # shorter env values ("1", "true") would mangle ordinary text

_lock = threading.Lock()
_secrets: set[str] = set()
_generation = 0
_any_secret: re.Pattern[str]
_any_trigger: re.Pattern[str]
_key_cache: dict[str, tuple[bool, str]] = {}
_text_cache: dict[str, str] = {}
# Content key -> the names its size fields get under "metadata" (after key redaction).
_size_keys: dict[Any, tuple[Any, Any]] = {}
_CACHE_MAX = 4096
_SHORT = 80  # names, ids and model ids repeat: their verdicts are cached

# Substrings at least one of which occurs in anything the patterns match. Searching for
# these is far cheaper than the full regex, so clean text never reaches it.
_PATTERN_TRIGGERS = ("sk-", "earer", "EARER", "asic", "ASIC", "AKIA", "ghp_", "gho_", "ghu_", "ghs_", "ghr_",
                     "xox", "eyJ", "-----BEGIN", "://")


def _rebuild() -> None:
    global _any_secret, _any_trigger, _generation
    parts = [p.pattern.replace("(?i)", "(?i:", 1) + ")" if p.pattern.startswith("(?i)") else p.pattern
             for p, _ in _SECRET_PATTERNS if not p.flags & re.S]
    # The private-key block needs DOTALL; its opening line is enough to detect it.
    parts.append(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
    ordered = sorted(_secrets, key=len, reverse=True)
    parts.extend(re.escape(s) for s in ordered)
    _any_secret = re.compile("|".join(parts))
    # One literal alternation: a few times faster than testing each trigger with ``in``.
    _any_trigger = re.compile("|".join(re.escape(t) for t in (*_PATTERN_TRIGGERS, *ordered)))
    _key_cache.clear()
    _text_cache.clear()
    _size_keys.clear()
    _generation += 1


_rebuild()


def generation() -> int:
    """A counter that changes whenever the set of registered secrets changes (for caches)."""
    return _generation


def register_secret(secret: str) -> None:
    """Mask ``secret`` wherever it appears in any event from now on (e.g. an API key value)."""
    if not isinstance(secret, str):
        raise UsageError(f"register_secret needs a str, got {type(secret).__name__}")
    secret = secret.strip()
    if len(secret) < _MIN_SECRET_CHARS:
        raise UsageError(f"a registered secret must be at least {_MIN_SECRET_CHARS} characters "
                         f"(got {len(secret)}); masking shorter strings would mangle ordinary text")
    with _lock:
        if secret not in _secrets:
            _secrets.add(secret)
            _rebuild()


def register_env_secrets(environ: Mapping[str, str] | None = None) -> list[str]:
    """Register the values of env vars named ``*_KEY``, ``*_TOKEN``, ``*_SECRET``, ``*PASSWORD``.

    Returns the variable names registered (never their values). Values shorter than
    8 characters are skipped: they are flags, not credentials.
    """
    env = os.environ if environ is None else environ
    names = []
    for name, value in env.items():
        if name.upper().endswith(_ENV_SECRET_SUFFIXES) and len(value.strip()) >= _MIN_ENV_SECRET_CHARS:
            register_secret(value)
            names.append(name)
    return sorted(names)


def clear_secrets() -> None:
    """Forget every registered secret (tests; the built-in patterns stay)."""
    with _lock:
        _secrets.clear()
        _rebuild()


def redact_text(text: str) -> str:
    """``text`` with secrets masked; the same object when there are none."""
    if len(text) <= _SHORT:
        cached = _text_cache.get(text)
        if cached is None:
            cached = _redact_text(text)
            if len(_text_cache) >= _CACHE_MAX:
                _text_cache.clear()
            _text_cache[text] = cached
        return cached
    return _redact_text(text)


def _redact_text(text: str) -> str:
    if _any_trigger.search(text) is None or _any_secret.search(text) is None:
        return text
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _key_info(key: str) -> tuple[bool, str]:
    """(is the key's value a credential, the key itself redacted). Cached: keys repeat."""
    info = _key_cache.get(key)
    if info is None:
        info = (_SENSITIVE_KEY.match(key) is not None, redact_text(key))
        if len(_key_cache) >= _CACHE_MAX:
            _key_cache.clear()
        _key_cache[key] = info
    return info


def redact(value: Any) -> Any:
    """Return ``value`` with secrets masked; the argument is never mutated.

    Strings: known key shapes, ``Bearer``/``Basic`` credentials, URL passwords and
    registered secrets become ``[REDACTED]``. Dicts: values under credential-named keys
    (authorization, x-api-key, api_key, password, secret, token, ...) are masked whole.
    When nothing matches, the very same object comes back (treat results as read-only).
    """
    t = type(value)
    if t is str:
        return redact_text(value)
    if t is int or t is float or t is bool or value is None:
        return value
    if t is dict:
        return _redact_dict(value)
    if t is list or t is tuple:
        return _redact_seq(value)
    if isinstance(value, str):
        return redact_text(str(value))
    if isinstance(value, int | float):
        return value
    if isinstance(value, Mapping):
        return _redact_dict(dict(value))
    if isinstance(value, list | tuple):
        return _redact_seq(list(value))
    return redact(_plain(value))


def _redact_dict(d: dict[Any, Any]) -> dict[Any, Any]:
    return _walk(d, strip=False, sizes=False)


def _walk(d: dict[Any, Any], *, strip: bool, sizes: bool) -> dict[Any, Any]:
    """The one dict walker of ``redact`` and ``apply_capture``: keys redacted, values under
    credential-named keys masked whole, text redacted. ``strip``: content fields become
    sizes (or go), nested dicts are stripped too, and the result is always a new dict;
    otherwise the very same dict comes back when nothing changed."""
    out: dict[Any, Any] | None = {} if strip else None
    key_cache, text_cache = _key_cache, _text_cache
    for k, v in d.items():
        if strip and (k in CONTENT_KEYS or (not sizes and k in FREE_TEXT_KEYS and not isinstance(v, dict))):
            if sizes and v is not None and out is not None:
                chars_key, count_key = _size_keys.get(k) or _size_key_names(k)
                out[chars_key] = content_size(v)
                if isinstance(v, list):
                    out[count_key] = len(v)
            continue  # a free-text dict is stripped inside, below
        # Inlined fast paths: event dicts are mostly repeated keys, short names and numbers.
        info = key_cache.get(k) if type(k) is str else (False, k)
        if info is None:
            info = _key_info(k)
        sensitive, new_k = info
        tv = type(v)
        if sensitive:
            new_v = v if v is None or v == "" else REDACTED
        elif tv is str:
            new_v = text_cache.get(v)
            if new_v is None:
                new_v = redact_text(v)
        elif tv is int or tv is float or tv is bool or v is None:
            new_v = v
        elif strip and isinstance(v, dict):
            new_v = _walk(v, strip=True, sizes=sizes)
        else:
            new_v = redact(v)
        if out is None:
            if new_k is k and new_v is v:
                continue
            out = {}
            for k2, v2 in d.items():  # copy what came before, unchanged
                if k2 is k:
                    break
                out[k2] = v2
        out[new_k] = new_v
    return d if out is None else out


def _redact_seq(seq: list[Any] | tuple[Any, ...]) -> list[Any] | tuple[Any, ...]:
    out: list[Any] | None = None
    for i, item in enumerate(seq):
        new = redact(item)
        if out is None:
            if new is item:
                continue
            out = list(seq[:i])
        out.append(new)
    if out is None:
        return seq
    return tuple(out) if isinstance(seq, tuple) else out


def _plain(value: Any) -> Any:
    """Turn a foreign object into JSON-like data so it can be redacted and written."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    dump = getattr(value, "model_dump", None)
    if callable(dump):  # pydantic models
        return dump(mode="json")
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    if isinstance(value, set | frozenset):
        return list(value)
    return str(value)


def check_capture(mode: str) -> Capture:
    if mode not in CAPTURE_MODES:
        raise UsageError(f"capture must be one of {', '.join(CAPTURE_MODES)}; got {mode!r}")
    return cast(Capture, mode)


def content_size(value: Any) -> int:
    """Characters in a content value: the string's length, or its JSON form's (only the number leaves)."""
    if isinstance(value, str):
        return len(value)
    try:
        return len(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS, default=str))
    except orjson.JSONEncodeError:  # e.g. nested deeper than orjson allows
        return len(str(value))


def apply_capture(data: dict[str, Any], mode: Capture) -> dict[str, Any]:
    """Apply a capture mode, then redact. Never mutates ``data``.

    - ``none``: drop content fields and other free text (error messages); keep ids,
      names, counts, durations, usage and error types.
    - ``metadata``: replace each content field ``X`` by ``X_chars`` (its size) and, for
      message lists, ``X_count``; keep error messages (redacted).
    - ``full``: keep everything, redacted.
    """
    if mode == "full":
        return cast(dict[str, Any], redact(data))
    if mode not in CAPTURE_MODES:
        check_capture(mode)
    return _walk(data, strip=True, sizes=mode == "metadata")


def _size_key_names(key: Any) -> tuple[Any, Any]:
    names = _size_keys.get(key)
    if names is None:
        names = _size_keys[key] = (_key_info(f"{key}_chars")[1], _key_info(f"{key}_count")[1])
    return names
