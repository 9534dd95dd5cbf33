"""The service's pure parts: keys, tenant limits, caller limits, queue URLs and messages,
webhook signatures. (The service itself is driven over HTTP in test_serve.py.)"""

from __future__ import annotations

import hashlib
import hmac
import time

import pytest

pytest.importorskip("fastapi")

from baton.errors import UsageError  # noqa: E402
from baton.runtime.budget import Limits  # noqa: E402
from baton.server.app import _signed  # noqa: E402
from baton.server.config import TenantLimits, parse_keys  # noqa: E402
from baton.server.queue import Unusable, decode, parse_queue_url  # noqa: E402
from baton.server.runs import lowered  # noqa: E402


def test_keys_parse_from_commas_or_lines_with_comments() -> None:
    assert parse_keys("k1=tenant-a, k2 = tenant-b\n# a comment\nk3=c # trailing", source="x") == {
        "k1": "tenant-a", "k2": "tenant-b", "k3": "c"}
    for bad in ("k1", "=t", "k1=", "k1=bad tenant!"):
        with pytest.raises(UsageError, match="x: entry 1"):
            parse_keys(bad, source="x")


def test_tenant_limits_refuse_odd_numbers() -> None:
    assert TenantLimits.from_dict({"max_active_runs": 2, "usd_per_day": 1.5}, "t") == TenantLimits(2, 1.5)
    for bad in ({"max_active_runs": 0}, {"max_active_runs": True}, {"usd_per_day": float("nan")},
                {"usd_per_day": -1}, {"runs": 1}):
        with pytest.raises(UsageError):
            TenantLimits.from_dict(bad, "t")


def test_a_caller_may_tighten_limits_but_never_loosen_them() -> None:
    base = Limits(budget_usd=1.0, max_model_calls=10)
    assert lowered(base, {"budget_usd": 5.0}).budget_usd == 1.0
    assert lowered(base, {"budget_usd": 0.25}).budget_usd == 0.25
    assert lowered(base, {"budget_tokens": 500}).budget_tokens == 500  # unset in the workflow: the caller's
    assert lowered(base, None) is base
    for bad in ({"budget_usd": -1}, {"budget_usd": float("inf")}, {"budget_usd": "1"}, {"max_model_calls": True}):
        with pytest.raises(UsageError):
            lowered(base, bad)


def test_queue_url_and_messages() -> None:
    assert parse_queue_url("redis://h:6379/2?stream=s&group=g&claim_idle_ms=5") == (
        "redis://h:6379/2", "s", "g", "s:dead", 5)
    assert parse_queue_url("redis://h/0")[1:3] == ("baton:runs", "baton")
    with pytest.raises(UsageError):
        parse_queue_url("http://h/0")
    with pytest.raises(UsageError):
        parse_queue_url("redis://h/0?claim_idle_ms=soon")
    assert decode({"body": '{"workflow": "w", "input": [1]}'}) == {"workflow": "w", "input": [1]}
    assert decode({"workflow": "w", "input": "text"}) == {"workflow": "w", "input": "text"}
    with pytest.raises(Unusable, match="not JSON"):
        decode({"body": "{nope"})
    with pytest.raises(Unusable, match="JSON object"):
        decode({"data": "[1, 2]"})


def test_webhook_signature_covers_the_timestamp_and_expires() -> None:
    body, now = b'{"a": 1}', str(int(time.time()))

    def sign(ts: str, payload: bytes, secret: bytes = b"s") -> str:
        return "sha256=" + hmac.new(secret, ts.encode() + b"." + payload, hashlib.sha256).hexdigest()

    assert _signed(b"s", body, now, sign(now, body), 300)
    assert not _signed(b"s", body, now, sign(now, body, b"other"), 300)
    assert not _signed(b"s", body + b" ", now, sign(now, body), 300)
    old = str(int(time.time()) - 301)
    assert not _signed(b"s", body, old, sign(old, body), 300)
    later = str(int(now) + 1)
    assert not _signed(b"s", body, later, sign(now, body), 300)  # the timestamp is signed too
    assert not _signed(b"s", body, "", sign(now, body), 300)
    assert not _signed(b"s", body, now, sign(now, body).removeprefix("sha256="), 300)
