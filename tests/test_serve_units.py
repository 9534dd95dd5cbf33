"""The service's pure parts: keys, tenant limits, caller limits, queue URLs and messages,
webhook signatures. (The service itself is driven over HTTP in test_serve.py.)"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

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


@pytest.mark.redis
async def test_a_queue_message_is_acknowledged_only_once_its_run_is_stored(tmp_path: Any) -> None:
    """With the store unreachable the message stays pending (neither acknowledged nor
    dead-lettered); once the store answers, it is claimed again, stored, then acknowledged."""
    import uuid

    from _services import REDIS_URL, redis_problem

    if problem := redis_problem():
        pytest.skip(problem)
    import redis.asyncio as redis_asyncio

    from baton.runtime.engine import Engine
    from baton.server.app import ServeConfig
    from baton.server.queue import QueueConsumer
    from baton.server.runs import RunManager
    from baton.server.state import Service
    from baton.stores.memory import MemoryStore

    (tmp_path / "wf").mkdir()
    (tmp_path / "wf" / "one.yaml").write_text(
        "version: 1\nname: one\nagents: {a: {system: x, model: claude-haiku-4-5}}\n"
        "workflow: {pattern: agent, agent: a}\n")
    down = "postgresql://nobody@127.0.0.1:1/nothing?connect_timeout=2"
    svc = Service(ServeConfig(store_url=down, workflows_dir=str(tmp_path / "wf"), keys={"k": "t"}))
    svc.runs = RunManager(svc.store, Engine(store=svc.store), svc.registry, max_runs=0)  # store, never run
    stream = f"baton:unit:{uuid.uuid4().hex[:8]}"
    base = REDIS_URL.split("?")[0]
    consumer = QueueConsumer(f"{base}?stream={stream}&claim_idle_ms=0", svc)
    await consumer.open()
    r = redis_asyncio.from_url(base, decode_responses=True)
    try:
        msg_id = await r.xadd(stream, {"workflow": "one", "input": "hello"})
        with pytest.raises(Exception, match="PostgreSQL"):
            await consumer.poll_once(block_ms=100)
        assert (await r.xpending(stream, "baton"))["pending"] == 1
        assert await r.xlen(f"{stream}:dead") == 0

        memory = MemoryStore("memory://")
        svc.runs.store = memory  # the store is back
        assert await consumer.poll_once(block_ms=100) == 1  # claimed again (a dead consumer's, or ours)
        assert (await r.xpending(stream, "baton"))["pending"] == 0
        runs = await memory.list_runs()
        assert [(x.input, x.metadata["queue_message"]) for x in runs] == [("hello", msg_id)]
    finally:
        await r.delete(stream, f"{stream}:dead")
        await r.aclose()
        await consumer.client.aclose()
