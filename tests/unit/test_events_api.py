"""The parts of GET /events that need no database: an identity-scoped query, and the cursor's
round trip."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

import pytest
from litestar.datastructures import MultiDict

from service.domain.stored import EventFilter, Position
from service.store.events import listing_statement
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


@pytest.mark.parametrize(
    "filters",
    [
        EventFilter(),
        EventFilter(type_prefixes=("identity.",)),
        EventFilter(types=("identity.approved", "transfer.x.y"), type_prefixes=("orchestration.",)),
        EventFilter(type_prefixes=("identity.kyc_refresh.",), status="failed", is_test=False),
    ],
)
def test_the_statement_is_the_same_for_every_limit(filters: EventFilter) -> None:
    """The limit is a bound parameter: a new page size is not a new statement to plan."""
    after = Position(time=datetime(2026, 1, 7, tzinfo=UTC), event_id=uuid.uuid4())
    small_sql, small_params = listing_statement(filters, 11, after)
    large_sql, large_params = listing_statement(filters, 1001, after)
    assert small_sql == large_sql
    assert small_params[:-1] == large_params[:-1]
    assert (small_params[-1], large_params[-1]) == (11, 1001)


def test_a_prefix_is_one_scan_per_is_test_value_whatever_the_types() -> None:
    sql, params = listing_statement(EventFilter(type_prefixes=("identity.", "identity.x.")), 5)
    assert sql.count("FROM events") == 2  # two scans, merged
    assert "identity." in params and "identity.x." not in params  # inside identity.*


@pytest.mark.parametrize("status", [None, "fetched", "pending"])
@pytest.mark.parametrize("is_test", [None, True])
@pytest.mark.parametrize(
    ("types", "prefixes"),
    [((), ()), (("a.b",), ()), ((), ("a.",)), (("a.b", "c"), ("a.", "a.x.", "d.e."))],
)
def test_every_bound_parameter_is_used(
    status: str | None, is_test: bool | None, types: tuple[str, ...], prefixes: tuple[str, ...]
) -> None:
    """PostgreSQL refuses a statement with a parameter it cannot type (one left unused)."""
    filters = EventFilter(types=types, type_prefixes=prefixes, status=status, is_test=is_test)
    sql, params = listing_statement(filters, 10)
    used = {int(n) for n in re.findall(r"\$(\d+)", sql)}
    assert used == set(range(1, len(params) + 1)), sql
