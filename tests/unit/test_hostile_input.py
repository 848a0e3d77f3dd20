"""Hostile input to the notification parser on its own, with Hypothesis: whatever the bytes, it
returns a notification or raises one of its two documented errors. (The real server under
hostile bodies and clients: tests/process/test_hostile_input.py.)
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.domain.notification import (
    NotANotification,
    Notification,
    NotJSON,
    decode_notification,
)
from tests.support.factories import encode, notification

# The same on every PostgreSQL: CI runs these on one server only.
pytestmark = pytest.mark.server_independent

_event_types = st.from_regex(r"\A[\x21-\x7e]{1,200}\Z")
_times = st.datetimes(
    min_value=datetime(1970, 1, 2),  # noqa: DTZ001 - made aware by `timezones`
    max_value=datetime(9998, 12, 30),  # noqa: DTZ001
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), UTC]),
)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    event_id=st.uuids(),
    type_=_event_types,
    time=_times,
    is_test=st.none() | st.booleans(),
    extra=st.dictionaries(
        st.text().filter(lambda k: k not in Notification.__struct_fields__), _json_values
    ),
)
def test_valid_notifications_round_trip(
    event_id: uuid.UUID,
    type_: str,
    time: datetime,
    is_test: bool | None,
    extra: dict[str, object],
) -> None:
    body: dict[str, object] = {
        **extra,
        "id": str(event_id),
        "type": type_,
        "source": "com.paxos",
        "time": time.isoformat(),
        "object": "event",
    }
    if is_test is not None:
        body["is_test"] = is_test
    decoded = decode_notification(msgspec.json.encode(body))
    assert decoded == Notification(
        id=event_id,
        type=type_,
        source="com.paxos",
        time=time,
        object="event",
        is_test=bool(is_test),
    )


def _only_documented_errors(body: bytes) -> None:
    try:
        decode_notification(body)
    except (NotJSON, NotANotification) as exc:
        assert str(exc)  # a message to put in the problem's detail
    # Anything else propagates and fails the test.


@settings(max_examples=500)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_raise_only_the_documented_errors(body: bytes) -> None:
    _only_documented_errors(body)


@settings(max_examples=500)
@given(_json_values)
def test_arbitrary_json_raises_only_the_documented_errors(value: object) -> None:
    _only_documented_errors(msgspec.json.encode(value))


@settings(max_examples=300)
@given(
    valid=st.builds(lambda: encode(notification())),
    cut=st.integers(min_value=0),
    junk=st.binary(max_size=8),
)
def test_mangled_notifications_raise_only_the_documented_errors(
    valid: bytes, cut: int, junk: bytes
) -> None:
    position = cut % (len(valid) + 1)
    _only_documented_errors(valid[:position])
    _only_documented_errors(valid[:position] + junk + valid[position:])
