"""Redis store (``redis://host:port/db``): the blackboard shared by processes and machines.

Keys (prefix from ``?prefix=``, default ``baton:``)::

    {p}run:{id}          hash: data (the run as JSON, owner left out), owner, owner_token
    {p}steps:{id}        hash: step key -> step JSON
    {p}steporder:{id}    list: step keys in first-insertion order
    {p}done:{id}         set: keys of completed steps (their records are write-once)
    {p}transitions:{id}  list: audit rows as JSON, oldest first
    {p}runs              sorted set: run id scored by created_at (``list_runs``)
    {p}state:{ns}:{key}  string: JSON value, with PX expiry when a TTL is given

Every multi-key write is one Lua script, so it is atomic and the compare-and-set of
``claim_run`` cannot interleave with another client. ``ttl_s`` (constructor or
``?ttl_s=``) expires a run's keys that long after its last write; the default keeps
them. Keys of one run are not hash-tagged: use a single Redis (or one shard), not a
Cluster. Needs ``pip install 'baton-agents[redis]'``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from baton.errors import RunNotFound, StoreError, UsageError
from baton.stores import _codec
from baton.stores.base import Owner, RunRecord, StepRecord, Transition, displaced, fence_of, last_per_key

if TYPE_CHECKING:
    from redis.asyncio import Redis

CONNECT_TIMEOUT_S = 10.0

_EXPIRE_RUN_KEYS = """
local ttl = tonumber(ARGV[7])
if ttl > 0 then for _, i in ipairs({1, 2, 3, 4, 6}) do redis.call('PEXPIRE', KEYS[i], ttl) end end
return 1
"""

# KEYS: run, transitions, steps, order, index, done (ttl_ms expires all but the index).
# ARGV: run_id, data, owner, token, created_at, transition, ttl_ms.  An empty owner means none.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'data', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'owner', ARGV[3], 'owner_token', ARGV[4]) end
redis.call('ZADD', KEYS[5], ARGV[5], ARGV[1])
redis.call('RPUSH', KEYS[2], ARGV[6])
""" + _EXPIRE_RUN_KEYS

# Same KEYS and ARGV as _CREATE, then the fence token (ARGV[8], '' for none: the write happens
# only while that token owns the run, else -1). An empty transition appends no audit row.
_UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[8] ~= '' and redis.call('HGET', KEYS[1], 'owner_token') ~= ARGV[8] then return -1 end
redis.call('HSET', KEYS[1], 'data', ARGV[2])
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], 'owner', ARGV[3], 'owner_token', ARGV[4])
else
  redis.call('HDEL', KEYS[1], 'owner', 'owner_token')
end
redis.call('ZADD', KEYS[5], ARGV[5], ARGV[1])
if ARGV[6] ~= '' then redis.call('RPUSH', KEYS[2], ARGV[6]) end
""" + _EXPIRE_RUN_KEYS

# KEYS: run.  ARGV: '1' when no owner is expected else '0', expected token, owner JSON, token.
_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local current = redis.call('HGET', KEYS[1], 'owner_token')
if ARGV[1] == '1' then
  if current then return 0 end
elseif current ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], 'owner', ARGV[3], 'owner_token', ARGV[4])
return 1
"""

# KEYS: per run (steps, order, run, transitions, done).  ARGV: fence token ('' for none; else the
# batch is one run's and is written only while that token owns it, else -1), then
# (run index, step key, JSON, completed '1'/'0')*, ttl_ms. A key whose stored record is
# completed is not overwritten (write-once); its key is in the run's ``done`` set.
# HSET answers 1 for a new field: only then does the key join the order list.
_PUT_STEPS = """
if ARGV[1] ~= '' and redis.call('HGET', KEYS[3], 'owner_token') ~= ARGV[1] then return -1 end
for i = 2, #ARGV - 1, 4 do
  local base = (tonumber(ARGV[i]) - 1) * 5
  if redis.call('SISMEMBER', KEYS[base + 5], ARGV[i + 1]) == 0 then
    if redis.call('HSET', KEYS[base + 1], ARGV[i + 1], ARGV[i + 2]) == 1 then
      redis.call('RPUSH', KEYS[base + 2], ARGV[i + 1])
    end
    if ARGV[i + 3] == '1' then redis.call('SADD', KEYS[base + 5], ARGV[i + 1]) end
  end
end
local ttl = tonumber(ARGV[#ARGV])
if ttl > 0 then for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ttl) end end
return 1
"""


def _import_redis() -> Any:
    try:
        import redis.asyncio as redis_asyncio
    except ImportError as exc:
        raise UsageError("the Redis store needs redis-py: pip install 'baton-agents[redis]'") from exc
    return redis_asyncio


def _split_options(url: str) -> tuple[str, str, float | None]:
    """Take baton's own ``prefix`` and ``ttl_s`` out of the query; redis-py gets the rest."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix, ttl_s, rest = "baton:", None, []
    for name, value in query:
        if name == "prefix":
            prefix = value
        elif name == "ttl_s":
            try:
                ttl_s = float(value)
            except ValueError:
                raise UsageError(f"ttl_s={value!r} in Redis store URL is not a number") from None
        else:
            rest.append((name, value))
    return urlunsplit(parts._replace(query=urlencode(rest))), prefix, ttl_s


def _server(url: str) -> str:
    try:
        parts = urlsplit(url)
        return f"{parts.hostname or 'localhost'}:{parts.port or 6379}{parts.path or ''}"
    except ValueError:
        return _codec.redact_url(url)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _escape(part: str) -> str:
    """Escape ``:`` so namespace ``a:b`` + key ``c`` and ``a`` + ``b:c`` get different keys."""
    return part.replace("\\", "\\\\").replace(":", "\\:")


def _glob_literal(text: str) -> str:
    """``text`` matched literally by a SCAN pattern."""
    return "".join("\\" + ch if ch in "\\*?[]" else ch for ch in text)


class RedisStore:
    """``Store`` on Redis; ``ttl_s`` expires each run's keys that long after its last write."""

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, ttl_s: float | None = None) -> None:
        self._dsn, self.prefix, url_ttl = _split_options(url)
        self.ttl_s = ttl_s if ttl_s is not None else url_ttl
        self.url = _codec.redact_url(url)
        self.server = _server(url)
        self._client: Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._open_lock = asyncio.Lock()

    # -- keys -------------------------------------------------------------------------

    def _key(self, kind: str, run_id: str) -> str:
        return f"{self.prefix}{kind}:{run_id}"

    def _run_keys(self, run_id: str) -> list[str]:
        """The KEYS of the create/update scripts."""
        return [self._key("run", run_id), self._key("transitions", run_id), self._key("steps", run_id),
                self._key("steporder", run_id), f"{self.prefix}runs", self._key("done", run_id)]

    def _state_key(self, namespace: str, key: str) -> str:
        return f"{self.prefix}state:{_escape(namespace)}:{key}"

    def _ttl_ms(self) -> int:
        return max(1, int(self.ttl_s * 1000)) if self.ttl_s else 0

    # -- plumbing ---------------------------------------------------------------------

    async def open(self) -> None:
        async with self._open_lock:
            if self._client is not None:
                return
            redis_asyncio = _import_redis()
            from redis.exceptions import RedisError

            try:
                client = redis_asyncio.from_url(self._dsn, socket_connect_timeout=CONNECT_TIMEOUT_S)
            except ValueError as exc:
                raise UsageError(f"malformed Redis store URL {self.url!r}: {exc}") from exc
            try:
                await client.ping()
            except (RedisError, OSError) as exc:
                await client.aclose()
                raise StoreError(f"cannot connect to Redis at {self.server}: {exc}") from exc
            self._scripts = {name: client.register_script(src) for name, src in
                             (("create", _CREATE), ("update", _UPDATE), ("claim", _CLAIM), ("put_steps", _PUT_STEPS))}
            self._client = client

    async def close(self) -> None:
        async with self._open_lock:
            client, self._client = self._client, None
            if client is not None:
                await client.aclose()

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[Redis]:
        if self._client is None:
            await self.open()
        client = self._client
        if client is None:
            raise StoreError(f"Redis store at {self.server} is closed")
        from redis.exceptions import RedisError

        try:
            yield client
        except RedisError as exc:
            raise StoreError(f"Redis store at {self.server}: {exc}") from exc

    def _decode_run(self, run_id: str, data: bytes | str | None, owner: bytes | str | None, listing: bool = False) -> RunRecord:
        return _codec.decode_run(data, owner, run_id=run_id, where=self.url, listing=listing)

    def _transition_json(self, run: RunRecord, status: str, at: float, detail: dict[str, Any]) -> str:
        row = {"status": status, "at": at, "detail": detail,
               "owner_host": run.owner.host if run.owner else None,
               "owner_pid": run.owner.pid if run.owner else None}
        return _codec.encode(row, what=_codec.run_what(run.run_id, self.url))

    # -- runs -------------------------------------------------------------------------

    def _run_args(self, run: RunRecord, transition_json: str) -> list[Any]:
        data, owner = _codec.encode_run(run, self.url)
        token = run.owner.token if run.owner else ""
        return [run.run_id, data, owner or "", token, repr(float(run.created_at)), transition_json, self._ttl_ms()]

    async def create_run(self, run: RunRecord) -> None:
        args = self._run_args(run, self._transition_json(run, run.status, time.time(), {"created": True}))
        async with self._session():
            created = await self._scripts["create"](keys=self._run_keys(run.run_id), args=args)
        if not created:
            raise UsageError(f"run {run.run_id!r} already exists in {self.url}")

    async def get_run(self, run_id: str) -> RunRecord:
        async with self._session() as r:
            data, owner = await r.hmget(self._key("run", run_id), ["data", "owner"])
        if data is None:
            raise RunNotFound(f"no run with id {run_id!r} in {self.url}")
        return self._decode_run(run_id, data, owner)

    async def list_runs(self, limit: int = 50) -> list[RunRecord]:
        runs: list[RunRecord] = []
        index = f"{self.prefix}runs"
        start = 0
        async with self._session() as r:
            while len(runs) < limit:
                ids = [_text(i) for i in await r.zrevrange(index, start, start + limit - len(runs) - 1)]
                if not ids:
                    break
                start += len(ids)
                async with r.pipeline(transaction=False) as pipe:
                    for run_id in ids:
                        pipe.hmget(self._key("run", run_id), ["data", "owner"])
                    rows = await pipe.execute()
                expired = []
                for run_id, (data, owner) in zip(ids, rows, strict=True):
                    if data is None:  # its keys expired (ttl_s): drop it from the index
                        expired.append(run_id)
                    else:
                        runs.append(self._decode_run(run_id, data, owner, listing=True))
                if expired:
                    await r.zrem(index, *expired)
                    start -= len(expired)
        return runs

    async def update_run(self, run: RunRecord, *, transition: str | None = None,
                         detail: dict[str, Any] | None = None, owner_token: str | None = None) -> None:
        run.updated_at = time.time()
        row = self._transition_json(run, transition, run.updated_at, detail or {}) if transition else ""
        args = [*self._run_args(run, row), owner_token or ""]
        async with self._session():
            updated = int(await self._scripts["update"](keys=self._run_keys(run.run_id), args=args))
        if updated < 0:
            raise displaced(run.run_id)
        if not updated:
            raise RunNotFound(f"no run with id {run.run_id!r} in {self.url}")

    async def claim_run(self, run_id: str, owner: Owner, *, expected_token: str | None) -> bool:
        args = ["1" if expected_token is None else "0", expected_token or "",
                _codec.encode_owner(owner, run_id, self.url), owner.token]
        async with self._session():
            result = int(await self._scripts["claim"](keys=[self._key("run", run_id)], args=args))
        if result < 0:
            raise RunNotFound(f"no run with id {run_id!r} in {self.url}")
        return result == 1

    # -- steps ------------------------------------------------------------------------

    async def put_steps(self, steps: list[StepRecord], *, owner_token: str | None = None) -> None:
        if not steps:
            return
        fence = fence_of(steps, owner_token)
        run_index: dict[str, int] = {}
        keys: list[str] = []
        args: list[Any] = [owner_token or ""]
        for s in last_per_key(steps):
            if s.run_id not in run_index:
                run_index[s.run_id] = len(run_index) + 1
                keys += [self._key("steps", s.run_id), self._key("steporder", s.run_id),
                         self._key("run", s.run_id), self._key("transitions", s.run_id),
                         self._key("done", s.run_id)]
            args += [run_index[s.run_id], s.key, _codec.encode_step(s, self.url),
                     "1" if s.status == "completed" else "0"]
        args.append(self._ttl_ms())
        async with self._session():
            written = await self._scripts["put_steps"](keys=keys, args=args)
        if fence is not None and int(written) < 0:
            raise displaced(fence[0])

    async def load_steps(self, run_id: str) -> list[StepRecord]:
        async with self._session() as r:
            async with r.pipeline(transaction=True) as pipe:
                pipe.lrange(self._key("steporder", run_id), 0, -1)
                pipe.hgetall(self._key("steps", run_id))
                order, by_key = await pipe.execute()
        steps = []
        for raw_key in order:
            key = _text(raw_key)
            steps.append(_codec.decode_step(by_key.get(raw_key), run_id=run_id, key=key, where=self.url))
        return steps

    async def transitions(self, run_id: str) -> list[Transition]:
        async with self._session() as r:
            rows = await r.lrange(self._key("transitions", run_id), 0, -1)
        return [_codec.decode_transition(row, run_id=run_id, where=self.url) for row in rows]

    # -- shared state -----------------------------------------------------------------

    async def put_state(self, namespace: str, key: str, value: Any, ttl_s: float | None = None) -> None:
        data = _codec.encode_state(value, what=_codec.state_what(namespace, key, self.url))
        name = self._state_key(namespace, key)
        async with self._session() as r:
            if not ttl_s:
                await r.set(name, data)
            elif ttl_s > 0:
                await r.set(name, data, px=max(1, int(ttl_s * 1000)))
            else:  # already expired
                await r.delete(name)

    async def list_state(self, namespace: str, prefix: str = "") -> list[str]:
        head = self._state_key(namespace, "")
        pattern = _glob_literal(head + prefix) + "*"
        keys: set[str] = set()
        async with self._session() as r:
            async for name in r.scan_iter(match=pattern, count=500):  # expired keys are gone already
                keys.add(_text(name)[len(head):])
        return sorted(keys)

    async def delete_state(self, namespace: str, key: str) -> bool:
        async with self._session() as r:
            return bool(await r.delete(self._state_key(namespace, key)))

    async def get_state(self, namespace: str, key: str) -> Any:
        async with self._session() as r:
            data = await r.get(self._state_key(namespace, key))
        if data is None:
            return None
        return _codec.decode_state(data, what=_codec.state_what(namespace, key, self.url))
