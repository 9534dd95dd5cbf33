"""The database servers the tests use, and why a test skips when one is not there.

`.ci/run` starts PostgreSQL and Redis (`scripts/services.sh`); on a user's machine without
them, the tests that need a server skip with the reason these functions give. Under
``CI=true`` they fail instead: a CI run that skipped every store test would prove nothing.
Call ``require_postgres()``/``require_redis()`` (or use the ``needs_postgres``/``needs_redis``
fixtures of conftest.py)
rather than skipping on a problem yourself; ``tests/conftest.py`` also turns any skip that
quotes one of these problems into a failure under CI.
"""

from __future__ import annotations

import functools
import os

import pytest

PG_URL = os.environ.get("BATON_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("BATON_TEST_REDIS", "redis://127.0.0.1:6379/15")


@functools.cache
def postgres_problem() -> str | None:
    """Why PostgreSQL cannot be used (None when it can)."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'baton-agents[postgres]')"
    try:
        psycopg.connect(PG_URL, connect_timeout=3).close()
    except psycopg.Error as exc:
        return f"PostgreSQL is unreachable at {PG_URL} (start it: bash scripts/services.sh, or set BATON_TEST_POSTGRES): {exc}"
    return None


@functools.cache
def redis_problem() -> str | None:
    """Why Redis cannot be used (None when it can)."""
    try:
        import redis
    except ImportError:
        return "redis-py is not installed (pip install 'baton-agents[redis]')"
    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
        client.ping()
        client.close()
    except redis.RedisError as exc:
        return f"Redis is unreachable at {REDIS_URL} (start it: bash scripts/services.sh, or set BATON_TEST_REDIS): {exc}"
    return None


SERVICE_SKIP_MARKS = ("is unreachable at", "is not installed (pip install 'baton-agents[")
"""Found in every problem text above: how conftest.py recognises a skip for a missing server."""


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unavailable(problem: str) -> None:
    """Skip the test for ``problem``, or fail it under CI=true."""
    if in_ci():
        pytest.fail(f"CI=true: {problem}", pytrace=False)
    pytest.skip(problem)


def require_postgres() -> None:
    if problem := postgres_problem():
        unavailable(problem)


def require_redis() -> None:
    if problem := redis_problem():
        unavailable(problem)

