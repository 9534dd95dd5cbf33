"""What the service is configured with: API keys and their tenants, per-tenant limits,
webhook secrets. Everything comes from the environment or files the operator names;
nothing here is ever taken from a request."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from baton.errors import UsageError
from baton.observe.redact import Capture


def parse_keys(text: str, *, source: str) -> dict[str, str]:
    """``key1=tenant-a,key2=tenant-b`` (commas or newlines; ``#`` starts a comment) -> key: tenant."""
    keys: dict[str, str] = {}
    for n, raw in enumerate(re.split(r"[,\n]", text), 1):
        item = raw.split("#", 1)[0].strip()
        if not item:
            continue
        key, sep, tenant = item.partition("=")
        key, tenant = key.strip(), tenant.strip()
        if not sep or not key or not tenant:
            raise UsageError(f"{source}: entry {n} is not KEY=TENANT")
        if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,100}", tenant):
            raise UsageError(f"{source}: entry {n}: tenant names use letters, digits and _.:- only")
        keys[key] = tenant
    return keys


def load_keys(keys_file: str | None) -> dict[str, str]:
    """Keys from ``--keys-file`` and ``BATON_API_KEYS`` (both may be given)."""
    keys: dict[str, str] = {}
    if keys_file:
        try:
            text = Path(keys_file).read_text()
        except OSError as exc:
            raise UsageError(f"cannot read --keys-file {keys_file}: {exc.strerror}") from exc
        keys.update(parse_keys(text, source=f"--keys-file {keys_file}"))
    env = os.environ.get("BATON_API_KEYS")
    if env:
        keys.update(parse_keys(env, source="BATON_API_KEYS"))
    return keys


@dataclass(frozen=True, slots=True)
class TenantLimits:
    """Checked at intake: runs pending or running at once, and USD spent by runs created today."""

    max_active_runs: int | None = None
    usd_per_day: float | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> TenantLimits:
        extra = set(d) - {"max_active_runs", "usd_per_day"}
        if extra:
            raise UsageError(f"{where}: unknown key(s) {sorted(extra)}; use max_active_runs, usd_per_day")
        runs, usd = d.get("max_active_runs"), d.get("usd_per_day")
        if runs is not None and (not isinstance(runs, int) or isinstance(runs, bool) or runs < 1):
            raise UsageError(f"{where}.max_active_runs must be a positive integer")
        if usd is not None and (not isinstance(usd, int | float) or isinstance(usd, bool)
                                or not math.isfinite(usd) or usd < 0):
            raise UsageError(f"{where}.usd_per_day must be a finite number >= 0")
        return cls(runs, float(usd) if usd is not None else None)


def load_tenant_limits(path: str | None) -> dict[str, TenantLimits]:
    """``--tenant-limits FILE`` or ``BATON_TENANT_LIMITS``: JSON ``{tenant: {max_active_runs, usd_per_day}}``."""
    text, source = None, ""
    if path:
        try:
            text, source = Path(path).read_text(), f"--tenant-limits {path}"
        except OSError as exc:
            raise UsageError(f"cannot read --tenant-limits {path}: {exc.strerror}") from exc
    elif os.environ.get("BATON_TENANT_LIMITS"):
        text, source = os.environ["BATON_TENANT_LIMITS"], "BATON_TENANT_LIMITS"
    if not text:
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{source}: not JSON ({exc})") from exc
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise UsageError(f"{source}: expected {{\"TENANT\": {{\"max_active_runs\": N, \"usd_per_day\": X}}}}")
    return {str(t): TenantLimits.from_dict(v, f"{source}: {t}") for t, v in data.items()}


def _env_name(workflow: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", workflow).upper()


def webhook_secret(workflow: str) -> bytes | None:
    """``BATON_WEBHOOK_SECRET_<NAME>`` (name upper-cased, other characters as ``_``)."""
    value = os.environ.get(f"BATON_WEBHOOK_SECRET_{_env_name(workflow)}")
    return value.encode() if value else None


def webhook_tenant(workflow: str) -> str:
    """The tenant a webhook's runs belong to: ``BATON_WEBHOOK_TENANT_<NAME>``, else ``webhooks``."""
    return os.environ.get(f"BATON_WEBHOOK_TENANT_{_env_name(workflow)}") or "webhooks"


@dataclass
class ServeConfig:
    """What ``baton serve`` was started with."""

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
    ui_capture: Capture = "full"
    """How much step content the web UI shows (redacted as in logs): none, metadata or full."""
    engine: Any = None
    """None: runs execute in this service; a ``baton.temporal.TemporalEngine``: on its workers."""
