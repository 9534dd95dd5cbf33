"""RetryPolicy: what is retried, the backoff math, retry-after floors and caps, deadlines."""

from __future__ import annotations

import asyncio
import random

import pytest

from baton.errors import (
    BudgetExceeded,
    ModelBehaviorError,
    ProviderConnectionError,
    ProviderError,
    ProviderTimeout,
    ToolError,
    WorkflowError,
)
from baton.runtime.retry import RetryPolicy, is_retryable


def overloaded(retry_after: float | None = None) -> ProviderError:
    return ProviderError("overloaded", status=529, error_type="overloaded_error", retryable=True,
                         retry_after=retry_after)


@pytest.mark.parametrize(("error", "expected"), [
    (ProviderError("rate limited", status=429, retryable=True), True),
    (overloaded(), True),
    (ProviderError("server said x-should-retry: false", status=500, retryable=False), False),
    (ProviderError("spend limit", status=429, error_type="rate_limit_error", retryable=False), False),
    (ProviderError("bad request", status=400, retryable=False), False),
    (ProviderConnectionError("connection refused"), True),
    (ProviderTimeout("no response in 30s"), True),
    (TimeoutError(), True),
    (ToolError("boom", tool="search"), False),
    (ModelBehaviorError("invalid output"), False),
    (BudgetExceeded("over", limit="usd", spent=2.0, allowed=1.0), False),
    (ValueError("bug"), False),
    (ConnectionResetError(), False),  # a raw OSError must be mapped at the boundary first
])
def test_is_retryable_classification(error: BaseException, expected: bool) -> None:
    assert is_retryable(error) is expected


def test_timeouts_and_tool_errors_follow_their_switches() -> None:
    assert is_retryable(ProviderTimeout("t"), retry_timeouts=False) is False
    assert is_retryable(TimeoutError(), retry_timeouts=False) is False
    assert is_retryable(ProviderConnectionError("c"), retry_timeouts=False) is True
    assert is_retryable(ToolError("flaky", tool="fetch"), retry_tool_errors=True) is True
    policy = RetryPolicy(retry_timeouts=False)
    assert policy.delay_for(1, ProviderTimeout("t")) is None
    assert policy.delay_for(1, ToolError("flaky"), retry_tool_errors=True) is not None
    assert RetryPolicy().delay_for(1, ToolError("flaky")) is None


def test_full_jitter_bounds_grow_exponentially_and_cap() -> None:
    policy = RetryPolicy(max_attempts=10, initial_delay_s=0.5, max_delay_s=8.0, multiplier=2.0)
    assert [policy.backoff_bound(a) for a in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    rng = random.Random(7)
    for attempt in range(1, 8):
        samples = [policy.delay_for(attempt, overloaded(), rng=rng) for _ in range(300)]
        assert all(s is not None and 0.0 <= s <= policy.backoff_bound(attempt) for s in samples)
        values = [s for s in samples if s is not None]
        # full jitter: uniform over [0, bound], so the mean sits near bound / 2 and small values occur
        assert abs(sum(values) / len(values) - policy.backoff_bound(attempt) / 2) < 0.1 * policy.backoff_bound(attempt)
        assert min(values) < 0.1 * policy.backoff_bound(attempt)


def test_same_seed_same_delays() -> None:
    policy = RetryPolicy()
    a = [policy.delay_for(n, overloaded(), rng=random.Random(1)) for n in (1, 2, 3)]
    b = [policy.delay_for(n, overloaded(), rng=random.Random(1)) for n in (1, 2, 3)]
    assert a == b


def test_huge_attempt_numbers_do_not_overflow() -> None:
    policy = RetryPolicy(max_attempts=100_000, multiplier=10.0)
    assert policy.backoff_bound(5000) == policy.max_delay_s
    delay = policy.delay_for(5000, overloaded(), rng=random.Random(0))
    assert delay is not None and delay <= policy.max_delay_s


def test_attempts_are_counted_including_the_first() -> None:
    policy = RetryPolicy(max_attempts=3)
    rng = random.Random(0)
    assert policy.delay_for(1, overloaded(), rng=rng) is not None
    assert policy.delay_for(2, overloaded(), rng=rng) is not None
    assert policy.delay_for(3, overloaded(), rng=rng) is None
    assert RetryPolicy(max_attempts=1).delay_for(1, overloaded()) is None


def test_retry_after_is_a_floor_never_shortened() -> None:
    policy = RetryPolicy(initial_delay_s=0.5, max_delay_s=8.0)
    rng = random.Random(3)
    for _ in range(100):
        delay = policy.delay_for(1, overloaded(retry_after=5.0), rng=rng)
        assert delay == 5.0  # jitter bound is 0.5, the server asked for 5
    # when the backoff is already longer, the longer wait stands (never less than retry-after)
    long = RetryPolicy(initial_delay_s=20.0, max_delay_s=20.0)
    delays = [long.delay_for(1, overloaded(retry_after=2.0), rng=rng) for _ in range(200)]
    assert all(d is not None and 2.0 <= d <= 20.0 for d in delays)
    assert max(d for d in delays if d is not None) > 10.0


def test_retry_after_above_the_cap_is_capped() -> None:
    policy = RetryPolicy(max_retry_after_s=60.0)
    assert policy.delay_for(1, overloaded(retry_after=3600.0), rng=random.Random(0)) == 60.0
    assert RetryPolicy(max_retry_after_s=10.0).delay_for(1, overloaded(retry_after=61.0),
                                                         rng=random.Random(0)) == 10.0
    # zero or negative server values fall back to plain backoff
    assert policy.delay_for(1, overloaded(retry_after=0.0), rng=random.Random(0)) <= 0.5  # type: ignore[operator]


def test_a_deadline_turns_a_long_sleep_into_giving_up() -> None:
    policy = RetryPolicy()
    err = overloaded(retry_after=10.0)
    assert policy.delay_for(1, err, now=100.0, deadline=111.0) == 10.0
    assert policy.delay_for(1, err, now=100.0, deadline=109.0) is None
    # default clock is time.monotonic: a deadline in the past always gives up
    assert policy.delay_for(1, overloaded(), deadline=0.0) is None


def test_non_retryable_errors_are_never_retried_even_with_retry_after() -> None:
    err = ProviderError("spend limit reached", status=429, retryable=False, retry_after=1.0)
    assert RetryPolicy().delay_for(1, err) is None
    assert RetryPolicy().delay_for(1, ModelBehaviorError("bad json")) is None


def test_from_dict_reads_yaml_keys() -> None:
    policy = RetryPolicy.from_dict({"max_attempts": 6, "initial_delay_s": 1, "max_delay_s": 30.0,
                                    "multiplier": 3, "max_retry_after_s": 20, "retry_timeouts": False})
    assert policy == RetryPolicy(6, 1, 30.0, 3, 20, False)
    assert RetryPolicy.from_dict({}) == RetryPolicy()


@pytest.mark.parametrize(("data", "field", "words"), [
    ({"max_attempt": 3}, "retry.max_attempt", "unknown key 'max_attempt'"),
    ({"max_attempts": 0}, "retry.max_attempts", "integer >= 1"),
    ({"max_attempts": 2.5}, "retry.max_attempts", "integer >= 1"),
    ({"max_attempts": True}, "retry.max_attempts", "integer >= 1"),
    ({"initial_delay_s": -1}, "retry.initial_delay_s", "number >= 0"),
    ({"multiplier": 0.5}, "retry.multiplier", "number >= 1"),
    ({"max_delay_s": "8s"}, "retry.max_delay_s", "number >= 0"),
    ({"retry_timeouts": "yes"}, "retry.retry_timeouts", "true or false"),
])
def test_from_dict_rejects_bad_settings_naming_the_field(data: dict[str, object], field: str, words: str) -> None:
    with pytest.raises(WorkflowError) as info:
        RetryPolicy.from_dict(data)
    assert info.value.field == field
    assert words in str(info.value)


def test_from_dict_where_prefix_and_non_mapping() -> None:
    with pytest.raises(WorkflowError) as info:
        RetryPolicy.from_dict({"bogus": 1}, where="agents.writer.retry")
    assert info.value.field == "agents.writer.retry.bogus"
    with pytest.raises(WorkflowError) as info2:
        RetryPolicy.from_dict({"max_attempts": -2}, where="defaults.retry")
    assert info2.value.field == "defaults.retry.max_attempts"
    with pytest.raises(WorkflowError):
        RetryPolicy.from_dict([1, 2])  # type: ignore[arg-type]


def test_policy_is_frozen() -> None:
    policy = RetryPolicy()
    with pytest.raises(AttributeError):
        policy.max_attempts = 9  # type: ignore[misc]


async def test_a_retry_loop_driven_by_the_policy_makes_the_expected_attempts() -> None:
    """How calls.py uses it: attempt, ask for a delay, sleep, until success or None."""
    failures = [overloaded(), ProviderConnectionError("reset"), ProviderTimeout("slow")]
    attempts = 0
    slept: list[float] = []

    async def call() -> str:
        nonlocal attempts
        attempts += 1
        if failures:
            raise failures.pop(0)
        return "ok"

    policy = RetryPolicy(max_attempts=4, initial_delay_s=0.001, max_delay_s=0.004)
    rng = random.Random(5)
    while True:
        try:
            result = await call()
            break
        except Exception as exc:
            delay = policy.delay_for(attempts, exc, rng=rng)
            assert delay is not None
            slept.append(delay)
            await asyncio.sleep(delay)
    assert result == "ok" and attempts == 4 and len(slept) == 3
    assert all(0 <= d <= b for d, b in zip(slept, (0.001, 0.002, 0.004), strict=True))
