"""Projections without a database: the ordering key (time_ns against the RFC 3339 parser) and
the pure fold."""

from __future__ import annotations

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from service.domain import identity
from service.domain.event import ProjectedEvent, time_ns
from service.simulator.universe import format_rfc3339_ns, parse_rfc3339_ns
from tests.support.projections import event


@given(st.integers(min_value=-(2**62), max_value=2**62), st.sampled_from(["Z", "+02:00", "-05:30"]))
def test_time_ns_agrees_with_the_rfc3339_parser(ns: int, zone: str) -> None:
    text_ = format_rfc3339_ns(ns)
    if zone != "Z":
        # The same instant written with an offset.
        sign = 1 if zone[0] == "+" else -1
        shift = sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60) * 10**9
        local = format_rfc3339_ns(ns + shift)
        text_ = local[:-1] + zone
    assert time_ns(text_) == parse_rfc3339_ns(text_) == ns


def test_unreadable_times_have_no_key() -> None:
    for bad in [
        "",
        "2025-01-01",
        "2025-01-01T00:00:00",
        "yesterday",
        "9999-01-01T00:00:00Z",
        5,
        "2025-13-01T00:00:00Z",
        "2025-01-00T00:00:00Z",
        "2025-01-01T24:00:00Z",
        "2025-01-01T00:00:00+24:00",
        "2025-01-01T00:00:00.Z",
        "2025-01-01T00:00:00\u0663Z",
    ]:
        assert time_ns(bad) is None


def test_pure_fold_ignores_an_older_status_that_arrives_late() -> None:
    newer = msgspec.convert(
        event(
            "identity.approved",
            {"identity_id": "i", "new_summary_status": "APPROVED"},
            "2026-01-07T14:30:03Z",
        ),
        ProjectedEvent,
    )
    older = msgspec.convert(
        event(
            "identity.denied",
            {"identity_id": "i", "new_summary_status": "DENIED"},
            "2026-01-07T14:30:02Z",
        ),
        ProjectedEvent,
    )
    state = identity.apply(identity.apply(None, newer), older)
    assert state is not None
    assert state.summary_status == "APPROVED"
    assert state.events_count == 2
    assert state.last_event_type == "identity.approved"
