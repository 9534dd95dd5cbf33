"""Under CI=true a test skipped for a missing PostgreSQL or Redis fails instead.

``_services.require_*`` already fail under CI; this catches the other ways a test can skip on
one of their problems (``pytest.mark.skipif(redis_problem() ...)``, ``pytest.skip(problem)``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator
from typing import Any

import pytest

from _services import SERVICE_SKIP_MARKS, in_ci, require_postgres, require_redis
from baton.models.anthropic import AnthropicModel
from baton.testing import FakeAnthropicServer


@pytest.fixture
def needs_postgres() -> None:
    require_postgres()


@pytest.fixture
def needs_redis() -> None:
    require_redis()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or not in_ci():
        return
    reason = str(report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr)
    if any(mark in reason for mark in SERVICE_SKIP_MARKS):
        report.outcome = "failed"
        report.longrepr = f"CI=true: a missing service is a failure, not a skip: {reason}"


@pytest.fixture
async def server() -> AsyncIterator[FakeAnthropicServer]:
    """baton's fake Messages API on 127.0.0.1 (a test file may define its own ``server``)."""
    async with FakeAnthropicServer() as s:
        yield s


@pytest.fixture
async def model(server: FakeAnthropicServer) -> AsyncIterator[AnthropicModel]:
    """The Anthropic adapter pointed at ``server``, closed after the test."""
    m = AnthropicModel(api_key="sk-test", base_url=server.url)
    yield m
    await m.aclose()
