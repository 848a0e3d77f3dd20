"""verify-export's check of an event's own fields against its sealed rows (docs/audit.md,
"Verifying an export offline", step 6): the service's implementation and the standalone
script's, which must agree on every record."""

from __future__ import annotations

import importlib.util
import json
from types import ModuleType
from typing import Any

import pytest

from service.audit.exported_fields import field_problems, instant_ns
from tests.support.paths import ROOT

EVENT_ID = "5f0c8a4e-2b1d-4c3e-9f8a-7b6c5d4e3f21"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("verify_export", ROOT / "docs/verify_export.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SCRIPT = _script()


def _row(body: dict[str, Any]) -> dict[str, Any]:
    return {"position": 1, "recorded_at": "x", "row_hash": "x", "body": json.dumps(body)}


def _record(**changes: Any) -> dict[str, Any]:
    """A fetched real event that came by webhook, consistent with its rows."""
    record: dict[str, Any] = {
        "record": "event",
        "event_id": EVENT_ID,
        "type": "identity.approved",
        "source": "com.paxos",
        "time": "2026-01-07T14:30:02.123457Z",
        "object": "event",
        "is_test": False,
        "confirmed_is_test": False,
        "via": "webhook",
        "notification": _row(
            {
                "id": EVENT_ID.upper(),
                "type": "identity.approved",
                "source": "com.paxos",
                "time": "2026-01-07T15:30:02.1234567+01:00",
                "object": "event",
            }
        ),
        "event": _row(
            {"id": EVENT_ID, "type": "identity.approved", "created_at": "2026-01-07T14:30:01Z"}
        ),
        "test_confirmation": None,
    }
    record.update(changes)
    return record


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("1970-01-01T01:00:00+01:00", 0),
        ("1969-12-31T23:00:00.5-01:00", 500_000_000),
        ("2026-01-07t14:30:02.123456789123z", 1_767_796_202_123_456_789),
    ],
)
def test_times_are_read_to_the_nanosecond_with_their_offset(text: str, expected: int) -> None:
    assert instant_ns(text) == expected
    assert SCRIPT.nanoseconds(text) == expected


@pytest.mark.parametrize("text", ["2026-02-30T00:00:00Z", "2026-01-07 14:30", 1767796202, None])
def test_what_is_not_an_rfc3339_time_is_none(text: Any) -> None:
    assert instant_ns(text) is None
    assert SCRIPT.nanoseconds(text) is None


ACCEPTED = {
    "as exported": _record(),
    "pending: no full event yet": _record(event=None, confirmed_is_test=None),
    "the listing's time, the late webhook's notification": _record(
        time="2026-01-07T14:30:01Z", via="webhook"
    ),
    "older delivery without is_test, fetched as a test event": _record(
        is_test=False,
        confirmed_is_test=True,
        test_confirmation=_row({"is_test": True, "confirmed_by": "get_event"}),
    ),
}
REFUSED = {
    "type": _record(type="identity.denied"),
    "time 1 µs off": _record(time="2026-01-07T14:30:02.123459Z"),
    "time not a time": _record(time="yesterday"),
    "source": _record(source="com.example"),
    "object": _record(object="transfer"),
    "is_test": _record(is_test=True),
    "is_test as a number": _record(is_test=0),
    "confirmed_is_test without its row": _record(confirmed_is_test=True),
    "event_id": _record(event_id="5f0c8a4e-2b1d-4c3e-9f8a-7b6c5d4e3f22"),
    "a row that is not JSON": _record(event={**_row({}), "body": "{"}),
}


@pytest.mark.parametrize("name", ACCEPTED)
def test_a_record_that_agrees_with_its_rows_passes(name: str) -> None:
    assert field_problems(ACCEPTED[name]) == []
    assert SCRIPT.field_mismatches(ACCEPTED[name]) == []


@pytest.mark.parametrize("name", REFUSED)
def test_an_edited_field_is_found_by_both(name: str) -> None:
    assert field_problems(REFUSED[name]), name
    assert SCRIPT.field_mismatches(REFUSED[name]), name
