"""CircuitBreaker and BreakerRegistry: state machine, probes, which errors count."""

from __future__ import annotations

import pytest

from baton.errors import (
    BudgetExceeded,
    CircuitOpenError,
    ModelBehaviorError,
    ProviderConnectionError,
    ProviderError,
    ProviderTimeout,
    ToolError,
    WorkflowError,
)
from baton.runtime.breaker import BreakerRegistry, CircuitBreaker, counts_as_failure


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make(clock: Clock, changes: list[tuple[str, str, str]] | None = None, **kw: int | float) -> CircuitBreaker:
    return CircuitBreaker("claude-sonnet-4-6", clock=clock,
                          on_change=(lambda n, o, s: changes.append((n, o, s))) if changes is not None else None,
                          **kw)  # type: ignore[arg-type]


def test_opens_after_threshold_consecutive_failures_and_fails_fast() -> None:
    clock, changes = Clock(), []  # type: ignore[var-annotated]
    b = make(clock, changes, failure_threshold=3, cooldown_s=10)
    for _ in range(2):
        assert b.allow()
        b.record_failure()
    assert b.state == "closed" and b.consecutive_failures == 2
    assert b.allow()
    b.record_failure()
    assert b.state == "open"
    assert changes == [("claude-sonnet-4-6", "closed", "open")]
    assert [b.allow() for _ in range(5)] == [False] * 5
    assert b.retry_in() == 10.0


def test_failure_rate_below_the_threshold_keeps_the_breaker_closed() -> None:
    clock = Clock()
    b = make(clock, failure_threshold=3)
    for _ in range(10):  # one failure in three calls: 33 % < 50 %
        assert b.allow() and b.allow() and b.allow()
        b.record_failure()
        b.record_success()
        b.record_success()
    assert b.state == "closed" and b.consecutive_failures == 0


def test_failure_rate_above_the_threshold_opens() -> None:
    clock = Clock()
    b = make(clock, failure_threshold=3)
    rounds = 0
    while b.state == "closed" and rounds < 5:  # two failures in three calls: 66 % >= 50 %
        rounds += 1
        assert b.allow() and b.allow() and b.allow()
        b.record_failure()
        b.record_failure()
        b.record_success()
    assert b.state == "open" and rounds == 2  # the 3rd failure came with 6 calls started: 50 %


def test_concurrent_burst_with_fast_failures_does_not_trip() -> None:
    """50 calls in flight, the 10 failing ones answer first: 10/50 is a 20 % rate, not 10 in a row."""
    clock = Clock()
    b = make(clock, failure_threshold=5)
    assert all(b.allow() for _ in range(50))
    for _ in range(10):
        b.record_failure()
    assert b.state == "closed"
    for _ in range(40):
        b.record_success()
    assert b.state == "closed"


def test_old_failures_leave_the_window() -> None:
    clock = Clock()
    b = make(clock, failure_threshold=3, window_s=10)
    for _ in range(2):
        assert b.allow()
        b.record_failure()
    clock.t += 11
    assert b.allow()
    b.record_failure()
    assert b.state == "closed"


def test_cooldown_moves_to_half_open_lazily_and_a_probe_success_closes() -> None:
    clock, changes = Clock(), []  # type: ignore[var-annotated]
    b = make(clock, changes, failure_threshold=1, cooldown_s=30)
    b.record_failure()
    clock.t += 29.9
    assert b.state == "open" and not b.allow()
    assert b.retry_in() == pytest.approx(0.1)
    clock.t += 0.1
    assert b.state == "half_open"
    assert b.allow() is True           # the one probe
    assert b.allow() is False          # a second caller still fails fast
    b.record_success()
    assert b.state == "closed" and b.allow()
    assert [c[1:] for c in changes] == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_half_open_failure_reopens_and_restarts_the_cooldown() -> None:
    clock = Clock()
    b = make(clock, failure_threshold=2, cooldown_s=5)
    b.record_failure()
    b.record_failure()
    clock.t += 5
    assert b.allow()
    b.record_failure()
    assert b.state == "open"
    clock.t += 4.9
    assert b.state == "open"  # cooldown counted from the failed probe, not the first opening
    clock.t += 0.1
    assert b.state == "half_open"


def test_half_open_admits_up_to_max_probes_and_release_frees_a_slot() -> None:
    clock = Clock()
    b = make(clock, failure_threshold=1, cooldown_s=1, half_open_max_calls=2)
    b.record_failure()
    clock.t += 1
    assert [b.allow(), b.allow(), b.allow()] == [True, True, False]
    b.release()  # a probe was cancelled: its slot comes back
    assert b.allow() is True and b.allow() is False
    b.record_success()
    assert b.state == "closed"


def test_straggler_results_while_open_do_not_close_or_extend() -> None:
    clock = Clock()
    b = make(clock, failure_threshold=1, cooldown_s=10)
    b.record_failure()
    clock.t += 6
    b.record_success()  # a call that started before the breaker opened
    assert b.state == "open"
    b.record_failure()
    clock.t += 4
    assert b.state == "half_open"  # cooldown not restarted by the straggler


def test_check_raises_circuit_open_error_naming_target_and_wait() -> None:
    clock = Clock()
    b = make(clock, failure_threshold=1, cooldown_s=12)
    b.check()
    b.record_failure()
    with pytest.raises(CircuitOpenError) as info:
        b.check()
    assert info.value.target == "claude-sonnet-4-6"
    assert "open" in str(info.value) and "12.0s" in str(info.value)
    clock.t += 12
    b.check()  # the probe goes through
    with pytest.raises(CircuitOpenError, match="probe"):
        b.check()


def test_on_change_errors_do_not_break_the_breaker() -> None:
    def bad(name: str, old: str, new: str) -> None:
        raise RuntimeError("sink down")

    b = CircuitBreaker("tool:search", failure_threshold=1, on_change=bad)
    b.record_failure()
    assert b.state == "open"


@pytest.mark.parametrize(("error", "counts"), [
    (ProviderError("overloaded", status=529, retryable=True), True),
    (ProviderError("rate limited", status=429, retryable=True), True),
    (ProviderError("internal", status=500, retryable=False), True),  # x-should-retry: false, still unhealthy
    (ProviderConnectionError("refused"), True),
    (ProviderTimeout("slow"), True),
    (TimeoutError(), True),
    (ConnectionResetError(), True),
    (ToolError("crashed", tool="search"), True),
    (ProviderError("bad request", status=400), False),
    (ProviderError("not found", status=404), False),
    (ProviderError("spend limit", status=429, retryable=False), False),
    (BudgetExceeded("over", limit="usd", spent=1, allowed=1), False),
    (ModelBehaviorError("invalid json"), False),
    (WorkflowError("bad"), False),
    (CircuitOpenError("open", target="x"), False),
    (ValueError("bug"), False),
])
def test_counts_as_failure(error: BaseException, counts: bool) -> None:
    assert counts_as_failure(error) is counts


def test_rate_limits_can_be_left_to_the_governor() -> None:
    assert counts_as_failure(ProviderError("429", status=429, retryable=True), count_rate_limits=False) is False
    assert counts_as_failure(ProviderError("529", status=529, retryable=True), count_rate_limits=False) is True


def test_invalid_settings_are_rejected() -> None:
    with pytest.raises(WorkflowError, match="failure_threshold"):
        CircuitBreaker("x", failure_threshold=0)
    with pytest.raises(WorkflowError, match="cooldown_s"):
        CircuitBreaker("x", cooldown_s=-1)


def test_registry_creates_one_breaker_per_name_with_defaults_and_overrides() -> None:
    clock, changes = Clock(), []  # type: ignore[var-annotated]
    reg = BreakerRegistry(defaults={"failure_threshold": 2, "cooldown_s": 5}, clock=clock,
                          on_change=lambda n, o, s: changes.append((n, o, s)))
    reg.configure("tool:payments", failure_threshold=1)
    sonnet = reg.get("claude-sonnet-4-6")
    assert reg.get("claude-sonnet-4-6") is sonnet
    pay = reg.get("tool:payments")
    assert (sonnet.failure_threshold, sonnet.cooldown_s) == (2, 5.0)
    assert (pay.failure_threshold, pay.cooldown_s) == (1, 5.0)
    pay.record_failure()
    sonnet.record_failure()
    assert reg.states() == {"claude-sonnet-4-6": "closed", "tool:payments": "open"}
    assert changes == [("tool:payments", "closed", "open")]
    clock.t += 5
    assert reg.states()["tool:payments"] == "half_open"
    # configuring a live breaker keeps its state
    reg.configure("claude-sonnet-4-6", failure_threshold=1)
    assert sonnet.state == "closed" and sonnet.consecutive_failures == 1
    sonnet.record_failure()
    assert sonnet.state == "open"
    assert "tool:payments" in reg and "nope" not in reg


def test_registry_rejects_unknown_settings() -> None:
    with pytest.raises(WorkflowError) as info:
        BreakerRegistry(defaults={"threshold": 3})
    assert "unknown key 'threshold'" in str(info.value)
    reg = BreakerRegistry()
    with pytest.raises(WorkflowError, match="cooldown"):
        reg.configure("x", cooldown="10s")
    with pytest.raises(WorkflowError, match="half_open_max_calls"):
        reg.configure("x", half_open_max_calls=0)
