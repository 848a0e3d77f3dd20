"""The fetcher's retry decisions, as a pure function of the error and the attempt."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from service.domain.paxos_event import Fetched, PaxosEvent
from service.fetching.fetcher import RetryPolicy, check_matches, decide
from service.paxos.client import (
    PaxosBadRequest,
    PaxosForbidden,
    PaxosNotFound,
    PaxosRateLimited,
    PaxosServerError,
    PaxosUnavailable,
)
from service.store.fetch_queue import Claim, FinalOutcome, RetryOutcome

# The same on every PostgreSQL: CI runs these on one server only.
pytestmark = pytest.mark.server_independent

NOW = datetime(2026, 11, 26, 12, tzinfo=UTC)
POLICY = RetryPolicy()


def claim(
    attempts: int = 1, received: timedelta = timedelta(0), type_: str = "identity.approved"
) -> Claim:
    return Claim(uuid.uuid4(), type_, False, attempts, NOW - received)


@pytest.mark.parametrize(
    "error", [PaxosServerError("503", status=503), PaxosUnavailable("timed out")]
)
def test_transient_errors_back_off_exponentially_with_jitter(error: Exception) -> None:
    rng = random.Random(7)
    delays = [decide(claim(n), error, POLICY, NOW, rng) for n in range(1, 12)]  # type: ignore[arg-type]
    assert all(isinstance(d, RetryOutcome) for d in delays)
    seconds = [d.delay_s for d in delays]  # type: ignore[union-attr]
    for n, s in enumerate(seconds, start=1):
        ceiling = min(POLICY.cap_s, POLICY.base_s * 2 ** (n - 1))
        assert ceiling / 2 <= s <= ceiling
    assert seconds[-1] > seconds[0] * 50
    assert len({round(s, 6) for s in seconds}) == len(seconds)


def test_transient_errors_give_up_past_the_horizon() -> None:
    old = claim(attempts=400, received=timedelta(days=7))
    outcome = decide(old, PaxosServerError("HTTP 502", status=502), POLICY, NOW, random.Random())
    assert isinstance(outcome, FinalOutcome)
    assert outcome.status == "failed"
    assert "HTTP 502" in outcome.error and "gave up after 400 attempts" in outcome.error


def test_a_429_waits_what_paxos_says() -> None:
    outcome = decide(
        claim(3), PaxosRateLimited("429", retry_after=42.0), POLICY, NOW, random.Random()
    )
    assert isinstance(outcome, RetryOutcome) and outcome.delay_s == 42.0


def test_a_404_is_retried_a_few_times_over_minutes_then_not_found() -> None:
    delays = []
    for attempt in range(1, len(POLICY.not_found_delays_s) + 1):
        outcome = decide(claim(attempt), PaxosNotFound("404"), POLICY, NOW, random.Random())
        assert isinstance(outcome, RetryOutcome)
        delays.append(outcome.delay_s)
    assert sum(delays) >= 5 * 60  # "several minutes"
    final = decide(claim(len(delays) + 1), PaxosNotFound("HTTP 404"), POLICY, NOW, random.Random())
    assert isinstance(final, FinalOutcome) and final.status == "not_found"


@pytest.mark.parametrize(
    "error",
    [
        PaxosBadRequest("HTTP 400 (error parsing event id)"),
        PaxosForbidden("HTTP 403 (insufficient scopes)"),
    ],
)
def test_400_and_403_fail_at_once_with_the_reason(error: Exception) -> None:
    outcome = decide(claim(1), error, POLICY, NOW, random.Random())  # type: ignore[arg-type]
    assert isinstance(outcome, FinalOutcome)
    assert outcome.status == "failed" and outcome.error == str(error)


def test_a_fetched_event_must_match_its_notification() -> None:
    c = claim(type_="identity.approved")
    when = NOW

    def fetched(id_: str, type_: str) -> Fetched:
        return Fetched(PaxosEvent(id=id_, type=type_, created_at=when), "{}")

    assert check_matches(c, fetched(str(c.event_id), "identity.approved")) is None
    assert check_matches(c, fetched(str(c.event_id).upper(), "identity.approved")) is None
    wrong_id = check_matches(c, fetched(str(uuid.uuid4()), "identity.approved"))
    assert wrong_id is not None and "not stored" in wrong_id
    wrong_type = check_matches(c, fetched(str(c.event_id), "identity.denied"))
    assert wrong_type is not None and "identity.denied" in wrong_type
