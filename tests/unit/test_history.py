"""Time travel without a database: the history fold and what each event changed."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from service.domain import history, identity
from service.domain.event import ProjectedEvent
from service.domain.history import Change, Recorded
from tests.support.projections import event

T0 = datetime(2026, 1, 7, tzinfo=UTC)


def recorded(body: dict[str, object], hours: int = 0, via: str = "webhook") -> Recorded:
    return Recorded.of(msgspec.convert(body, ProjectedEvent), T0 + timedelta(hours=hours), via)


def status(identity_id: str, value: str, at: str, event_id: int | None = None) -> Recorded:
    body = event(
        f"identity.{value.lower()}",
        {"identity_id": identity_id, "new_summary_status": value},
        at,
        uuid.UUID(int=event_id) if event_id is not None else None,
    )
    return recorded(body)


def test_history_is_in_created_at_order_then_id_whatever_the_input_order() -> None:
    late_tie = status("i", "DENIED", "2026-01-07T14:30:02Z", event_id=2)
    early_tie = status("i", "APPROVED", "2026-01-07T16:30:02+02:00", event_id=1)  # same instant
    first = status("i", "PENDING", "2026-01-07T14:30:01.999999999Z")
    entries = history.history([late_tie, early_tie, first], "identities", "i")
    assert [e.recorded for e in entries] == [first, early_tie, late_tie]
    assert [e.state["summary_status"] for e in entries] == ["PENDING", "APPROVED", "DENIED"]
    assert entries[-1].changes == (Change("summary_status", "APPROVED", "DENIED"),)


def test_other_subjects_unreadable_times_and_repeats_are_left_out() -> None:
    mine = status("i", "APPROVED", "2026-01-07T14:30:02Z")
    entries = history.history(
        [
            mine,
            mine,  # the same event twice
            status("other", "DENIED", "2026-01-07T14:30:03Z"),
            status("i", "DENIED", "yesterday"),
        ],
        "identities",
        "i",
    )
    assert [e.recorded for e in entries] == [mine]
    assert (
        history.fold([status("other", "DENIED", "2026-01-07T14:30:03Z")], "identities", "i") is None
    )


def test_an_event_that_changes_nothing_says_so() -> None:
    a = status("i", "APPROVED", "2026-01-07T14:30:02Z")
    b = status("i", "APPROVED", "2026-01-07T14:30:03Z")
    entries = history.history([a, b], "identities", "i")
    assert [(e.changed, e.changes) for e in entries] == [
        (True, (Change("summary_status", None, "APPROVED"),)),
        (False, ()),
    ]
    # The bookkeeping moves all the same.
    assert entries[1].state["events_count"] == 2
    assert entries[1].state["last_event_id"] == b.event.id


def test_updated_at_is_the_latest_recording_among_the_folded_events() -> None:
    late = recorded(
        event("identity.approved", {"identity_id": "i"}, "2026-01-07T14:30:01Z"), hours=30
    )
    early = recorded(event("identity.denied", {"identity_id": "i"}, "2026-01-07T14:30:02Z"), 1)
    entries = history.history([late, early], "identities", "i")
    assert [e.state["updated_at"] for e in entries] == [late.recorded_at, late.recorded_at]
    row = history.fold([early], "identities", "i")
    assert row is not None and row["updated_at"] == early.recorded_at


def test_transfer_changes_name_the_fields_that_moved() -> None:
    def transfer(state: str, at: str) -> Recorded:
        return recorded(
            event(
                f"transfer.wire_deposit.{state.lower()}",
                {"id": "t", "type": "WIRE_DEPOSIT", "status": state, "memo": "m"},
                at,
            )
        )

    entries = history.history(
        [
            transfer("COMPLETED", "2026-01-07T14:30:03Z"),
            transfer("PENDING", "2026-01-07T14:30:02Z"),
        ],
        "transfers",
        "t",
    )
    assert entries[0].changes == (
        Change("type", None, "WIRE_DEPOSIT"),
        Change("status", None, "PENDING"),
        Change("memo", None, "m"),
    )
    assert entries[1].changes == (Change("status", "PENDING", "COMPLETED"),)
    assert entries[1].state["transfer_id"] == "t" and entries[1].state["events_count"] == 2


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["APPROVED", "DENIED", "PENDING"]),
            st.sampled_from(["2026-01-07T14:30:02Z", "2026-01-07T14:30:03Z", "bad"]),
            st.integers(1, 6),
        ),
        max_size=8,
    )
)
def test_each_entry_is_the_fold_of_the_events_up_to_it(
    draws: list[tuple[str, str, int]],
) -> None:
    events = [status("i", v, at, event_id=n) for v, at, n in draws]
    entries = history.history(events, "identities", "i")
    folded: identity.IdentityState | None = None
    for n, entry in enumerate(entries):
        folded = identity.apply(folded, entry.recorded.event)
        assert folded is not None
        assert entry.state["summary_status"] == folded.summary_status
        assert entry.state["events_count"] == n + 1
    assert (history.fold(events, "identities", "i") or {}).get("events_count") == (
        len(entries) or None
    )
