"""The failed-authentication throttle on its own: it releases as failures leak away, and its
table of addresses is bounded."""

from __future__ import annotations

import pytest

from service.web.throttle import FailureThrottle

# The same on every PostgreSQL: CI runs these on one server only.
pytestmark = pytest.mark.server_independent


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_address_is_throttled_after_the_limit_and_released_as_failures_leak() -> None:
    clock = Clock()
    throttle = FailureThrottle(limit=4, window_s=60, clock=clock)
    for _ in range(3):
        throttle.failed("a")
        assert throttle.retry_after("a") is None
    throttle.failed("a")
    assert throttle.retry_after("a") == 15  # one failure leaks away every 60/4 s
    assert throttle.retry_after("b") is None
    clock.now += 14
    assert throttle.retry_after("a") in (1, 2)  # a second or so left, give or take rounding
    clock.now += 1.01
    assert throttle.retry_after("a") is None
    throttle.failed("a")  # one more try, then blocked again
    assert throttle.retry_after("a") == 15


def test_the_table_of_addresses_is_bounded() -> None:
    throttle = FailureThrottle(limit=1, window_s=60, max_clients=100, clock=Clock())
    for i in range(10_000):
        throttle.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(throttle) == 100
    # The most recent failures are the ones kept.
    assert throttle.retry_after("10.0.39.15") is not None
    assert throttle.retry_after("10.0.0.0") is None
