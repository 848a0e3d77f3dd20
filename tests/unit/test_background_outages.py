"""A background loop's spell without the database: one warning, a bounded doubling pause,
one line when it is over (`service.db.outages`)."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from service.db.outages import Outage

# The same on every PostgreSQL: CI runs these on one server only.
pytestmark = pytest.mark.server_independent


def test_a_spell_is_said_once_and_its_end_once() -> None:
    outage = Outage("fetch queue", first_s=0.4, cap_s=2.0)
    with capture_logs() as logs:
        pauses = [outage.failed(ConnectionRefusedError(111, "refused")) for _ in range(6)]
        outage.succeeded()
        outage.succeeded()
        second = outage.failed(TimeoutError())
    assert pauses == [0.4, 0.8, 1.6, 2.0, 2.0, 2.0]
    assert second == 0.4  # a new spell starts from the first pause again
    assert [(e["log_level"], e["event"]) for e in logs] == [
        ("warning", "fetch queue: the database is unavailable"),
        ("info", "fetch queue: the database is back"),
        ("warning", "fetch queue: the database is unavailable"),
    ]
    assert logs[0]["error"] == "ConnectionRefusedError: [Errno 111] refused"
    assert logs[1]["failed_tries"] == 6


def test_no_spell_no_line() -> None:
    outage = Outage("job queue", first_s=2.0, cap_s=2.0)
    with capture_logs() as logs:
        outage.succeeded()
    assert logs == []
