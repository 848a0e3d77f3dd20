"""The parts of GET /events that need no database: an identity-scoped query, and the cursor's
round trip."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from litestar.datastructures import MultiDict

from service.domain.stored import EventFilter, Position
from service.web.cursor import decode_cursor, encode_cursor
from service.web.problems import InvalidParameter
from service.web.query import parse_query


def test_identity_scope_fixes_the_identity_and_refuses_the_parameter() -> None:
    query = parse_query(MultiDict([("type", "identity.*")]), identity_id="idt-9")
    assert query.filters.identity_id == "idt-9"
    assert query.filters.type_prefixes == ("identity.",)
    with pytest.raises(InvalidParameter) as refused:
        parse_query(MultiDict([("identity_id", "idt-1")]), identity_id="idt-9")
    assert refused.value.extensions["parameter"] == "identity_id"


def test_cursor_round_trip_keeps_microseconds() -> None:
    position = Position(
        time=datetime(2026, 1, 7, 14, 30, 2, 123456, tzinfo=UTC), event_id=uuid.uuid4()
    )
    filters = EventFilter(type_prefixes=("identity.",), is_test=False)
    assert decode_cursor(encode_cursor(position, filters), filters) == position
