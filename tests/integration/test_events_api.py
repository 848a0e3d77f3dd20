"""GET /events and GET /events/{id}: every filter, order, paging, and each 400 of DESIGN.md §3.

The last test is a property: for random stored events and random filters, walking every page
gives exactly what a plain Python filter and sort of the same rows gives.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.datastructures import MultiDict
from sqlalchemy import delete, insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.store.tables import events, journal
from tests.support.tokens import read_headers

T0 = datetime(2026, 1, 7, 14, 30, 2, tzinfo=UTC)
_ids = itertools.count(1)

Params = Sequence[tuple[str, str | int]]


def row(
    *,
    type: str = "identity.approved",  # noqa: A002 - the column is called type
    time: datetime = T0,
    is_test: bool = False,
    status: str = "fetched",
    identity_id: str | None = None,
    event_id: uuid.UUID | None = None,
) -> dict[str, Any]:
    """An `events` row as the intake and the fetcher would leave it."""
    fetched = status == "fetched"
    event_id = event_id or uuid.uuid4()
    return {
        "event_id": event_id,
        "type": type,
        "source": "com.paxos",
        "time": time,
        "object": "event",
        "is_test": is_test,
        "status": status,
        "via": "webhook",
        "deliveries": 1,
        "first_received_at": time + timedelta(seconds=1),
        "last_received_at": time + timedelta(seconds=1),
        "fetched_at": time + timedelta(seconds=2) if fetched else None,
        "attempts": 1 if fetched else 0,
        "last_error": None,
        "identity_id": identity_id,
        "object_type": "identity_summary_status_change" if fetched else None,
        "undelivered_webhooks": 0 if fetched else None,
        "detail": {"id": str(event_id), "type": type} if fetched else None,
    }


async def store(engine: AsyncEngine, rows: Sequence[dict[str, Any]]) -> None:
    """Insert `rows` straight into `events`, and each one's `detail` into the journal as its
    full event (Core, an executemany each)."""
    if not rows:
        return
    full = [
        {"event_id": r["event_id"], "kind": "event", "body": r["detail"]}
        for r in rows
        if r.get("detail") is not None
    ]
    async with engine.begin() as conn:
        await conn.execute(
            insert(events), [{k: v for k, v in r.items() if k != "detail"} for r in rows]
        )
        if full:
            await conn.execute(insert(journal), full)


async def listing(client: httpx.AsyncClient, params: Params = ()) -> httpx.Response:
    return await client.get("/events", params=list(params), headers=read_headers())


async def ids(client: httpx.AsyncClient, params: Params = ()) -> list[str]:
    response = await listing(client, params)
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def by_time(rows: Sequence[dict[str, Any]], *, descending: bool = True) -> list[str]:
    ordered = sorted(rows, key=lambda r: (r["time"], r["event_id"]), reverse=descending)
    return [str(r["event_id"]) for r in ordered]


# --- the listing --------------------------------------------------------------------------


async def test_listing_is_newest_first_with_every_event_field(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    rows = [row(time=at(i), identity_id="idt-1") for i in range(3)]
    await store(engine, rows)
    response = await listing(client)
    assert response.status_code == 200
    page = response.json()
    assert page["next_cursor"] is None
    assert [item["id"] for item in page["items"]] == by_time(rows)
    first = page["items"][0]
    assert set(first) == {
        "id",
        "type",
        "source",
        "time",
        "object",
        "is_test",
        "status",
        "via",
        "deliveries",
        "first_received_at",
        "last_received_at",
        "fetched_at",
        "attempts",
        "last_error",
        "identity_id",
        "object_type",
        "undelivered_webhooks",
        "detail",
    }
    assert first["time"] == "2026-01-07T14:32:02Z"
    assert first["detail"] == {"id": first["id"], "type": "identity.approved"}


async def test_empty_store_lists_nothing(client: httpx.AsyncClient) -> None:
    response = await listing(client)
    assert response.json() == {"items": [], "next_cursor": None}


async def test_order_asc_is_oldest_first_and_ties_go_by_id(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    rows = [row(time=at(1)) for _ in range(4)] + [row(time=at(0)), row(time=at(2))]
    await store(engine, rows)
    assert await ids(client, [("order", "asc")]) == by_time(rows, descending=False)
    assert await ids(client, [("order", "desc")]) == by_time(rows)


async def test_type_exact_and_repeated(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    approved = row(type="identity.approved", time=at(0))
    denied = row(type="identity.denied", time=at(1))
    transfer = row(type="transfer.crypto_deposit.completed", time=at(2))
    await store(engine, [approved, denied, transfer])
    assert await ids(client, [("type", "identity.approved")]) == [str(approved["event_id"])]
    assert await ids(
        client, [("type", "identity.approved"), ("type", "transfer.crypto_deposit.completed")]
    ) == by_time([approved, transfer])
    assert await ids(client, [("type", "identity.approve")]) == []


async def test_type_prefix_matches_every_type_below_the_dot(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    inside = [
        row(type="identity.approved", time=at(0)),
        row(type="identity.kyc_refresh.started", time=at(1), is_test=True),
        row(type="identity.control.created", time=at(2), status="failed"),
    ]
    outside = [
        row(type="identity", time=at(3)),
        row(type="identityx.approved", time=at(4)),
        row(type="transfer.identity.x", time=at(5)),
    ]
    await store(engine, inside + outside)
    assert await ids(client, [("type", "identity.*")]) == by_time(inside)
    assert await ids(client, [("type", "identity.kyc_refresh.*")]) == [str(inside[1]["event_id"])]
    assert await ids(client, [("type", "nothing.*")]) == []
    # A prefix and an exact type it already covers: each event once.
    assert await ids(
        client, [("type", "identity.*"), ("type", "identity.approved"), ("type", "identity")]
    ) == by_time([*inside, outside[0]])


async def test_type_prefix_takes_sql_wildcards_literally(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    underscore = row(type="a_b.created", time=at(0))
    other = row(type="axb.created", time=at(1))
    await store(engine, [underscore, other])
    assert await ids(client, [("type", "a_b.*")]) == [str(underscore["event_id"])]
    assert await ids(client, [("type", "a%.*")]) == []
    assert await ids(client, [("type", "a_b.*"), ("identity_id", "x")]) == []


async def test_since_is_inclusive_and_until_exclusive(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    rows = [row(time=at(i)) for i in range(5)]
    await store(engine, rows)
    # Paxos writes nanoseconds; Postgres keeps microseconds.
    window = [("since", "2026-01-07T14:31:02.000000000Z"), ("until", "2026-01-07T14:33:02Z")]
    assert await ids(client, window) == by_time(rows[1:3])
    # The same instants with offsets, one sent with an unencoded + (which arrives as a space).
    assert await ids(client, [("since", "2026-01-07T16:31:02+02:00")]) == by_time(rows[1:])
    response = await client.get(
        "/events?until=2026-01-07T16:31:02.000+02:00", headers=read_headers()
    )
    assert [item["id"] for item in response.json()["items"]] == by_time(rows[:1])


async def test_is_test_true_false_and_absent(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    real = row(time=at(0))
    test = row(time=at(1), is_test=True)
    await store(engine, [real, test])
    assert await ids(client, [("is_test", "true")]) == [str(test["event_id"])]
    assert await ids(client, [("is_test", "false")]) == [str(real["event_id"])]
    assert await ids(client) == by_time([real, test])


async def test_identity_id(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    mine = [row(time=at(0), identity_id="idt-1"), row(time=at(2), identity_id="idt-1")]
    await store(engine, [*mine, row(time=at(1), identity_id="idt-2"), row(time=at(3))])
    assert await ids(client, [("identity_id", "idt-1")]) == by_time(mine)
    assert await ids(client, [("identity_id", "idt-3")]) == []


@pytest.mark.parametrize("status", ["pending", "fetched", "failed", "not_found"])
async def test_status(client: httpx.AsyncClient, engine: AsyncEngine, status: str) -> None:
    rows = [
        row(status=s, time=at(i))
        for i, s in enumerate(["pending", "fetched", "failed", "not_found", status])
    ]
    await store(engine, rows)
    assert await ids(client, [("status", status)]) == by_time(
        [r for r in rows if r["status"] == status]
    )


async def test_filters_combine(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    wanted = row(type="identity.kyc_refresh.started", status="failed", is_test=True, time=at(2))
    rows = [
        wanted,
        row(type="identity.kyc_refresh.started", status="failed", is_test=False, time=at(2)),
        row(type="identity.kyc_refresh.started", status="fetched", is_test=True, time=at(2)),
        row(type="transfer.wire_deposit.failed", status="failed", is_test=True, time=at(2)),
        row(type="identity.kyc_refresh.started", status="failed", is_test=True, time=at(9)),
    ]
    await store(engine, rows)
    params: list[tuple[str, str | int]] = [
        ("type", "identity.*"),
        ("status", "failed"),
        ("is_test", "true"),
        ("until", "2026-01-07T14:35:00Z"),
    ]
    assert await ids(client, params) == [str(wanted["event_id"])]
    fetched = [("type", "identity.kyc_refresh.started"), ("status", "fetched")]
    assert await ids(client, fetched) == [str(rows[2]["event_id"])]


async def test_limit_bounds(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    await store(engine, [row(time=at(i)) for i in range(3)])
    assert len(await ids(client, [("limit", 1)])) == 1
    assert len(await ids(client, [("limit", 1000)])) == 3


async def test_cursor_walk_gives_every_event_once_and_stops_without_an_empty_page(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    # Six events on two timestamps: pages must split ties by id, never skip or repeat.
    rows = [row(time=at(i % 2)) for i in range(6)]
    await store(engine, rows)
    for order, limit in [("desc", 2), ("asc", 2), ("desc", 4), ("asc", 5), ("desc", 6)]:
        seen: list[str] = []
        sizes: list[int] = []
        cursor = None
        while True:
            params = [("order", order), ("limit", limit)]
            response = await listing(client, params + ([("cursor", cursor)] if cursor else []))
            page = response.json()
            seen += [item["id"] for item in page["items"]]
            sizes.append(len(page["items"]))
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == by_time(rows, descending=order == "desc"), (order, limit)
        assert 0 not in sizes
        assert len(sizes) == -(-len(rows) // limit)


async def test_cursor_may_change_the_page_size(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    rows = [row(time=at(i)) for i in range(5)]
    await store(engine, rows)
    first = (await listing(client, [("limit", 2)])).json()
    rest = await ids(client, [("limit", 10), ("cursor", first["next_cursor"])])
    assert [item["id"] for item in first["items"]] + rest == by_time(rows)


# --- the answers that are not a page ------------------------------------------------------


def _flip(cursor: str) -> str:
    middle = len(cursor) // 2
    return cursor[:middle] + ("A" if cursor[middle] != "A" else "B") + cursor[middle + 1 :]


def _forged(version: int = 1) -> str:
    body = f'[{version},0,"{uuid.uuid4()}","0000000000000000"]'.encode()
    return base64.urlsafe_b64encode(body + b"\0" * 8).decode().rstrip("=")


@pytest.mark.server_independent  # refused before any SQL runs
@pytest.mark.parametrize(
    ("params", "parameter", "mentions"),
    [
        ([("limit", "0")], "limit", "from 1 to 1000"),
        ([("limit", "1001")], "limit", "from 1 to 1000"),
        ([("limit", "abc")], "limit", "from 1 to 1000"),
        ([("limit", "-1")], "limit", "from 1 to 1000"),
        ([("limit", " 5")], "limit", "from 1 to 1000"),
        ([("limit", "")], "limit", "from 1 to 1000"),
        ([("limit", "5"), ("limit", "6")], "limit", "more than once"),
        ([("since", "2026-01-07T14:30:02")], "since", "no UTC offset"),
        ([("since", "2026-01-07")], "since", "not an RFC 3339 time"),
        ([("since", "yesterday")], "since", "not an RFC 3339 time"),
        ([("until", "2026-02-30T00:00:00Z")], "until", "not a valid time"),
        ([("until", "2026-01-07T24:00:00Z")], "until", "not a valid time"),
        ([("until", "2026-01-07T14:30:02+24:00")], "until", "not a valid time"),
        ([("since", "0001-01-01T00:00:00+01:00")], "since", "not a valid time"),
        (
            [("since", "2026-01-07T14:30:02Z"), ("until", "2026-01-07T14:30:02Z")],
            "until",
            "later than since",
        ),
        ([("status", "done")], "status", "pending, fetched, failed, not_found"),
        ([("status", "")], "status", "must be one of"),
        ([("order", "newest")], "order", "desc, asc"),
        ([("is_test", "yes")], "is_test", "true or false"),
        ([("is_test", "True")], "is_test", "true or false"),
        ([("identity_id", "")], "identity_id", "1 to 200"),
        ([("type", "")], "type", "empty"),
        ([("type", "*")], "type", "wildcard"),
        ([("type", ".*")], "type", "wildcard"),
        ([("type", "identity*")], "type", "wildcard"),
        ([("type", "identity.*.started")], "type", "wildcard"),
        ([("type", f"t{i}") for i in range(51)], "type", "at most 50"),
        ([("typo", "identity.approved")], "typo", "unknown parameter"),
        ([("page", "2")], "page", "known are type, since"),
        ([("cursor", "not a cursor!")], "cursor", "malformed"),
        ([("cursor", "")], "cursor", "malformed"),
        ([("cursor", "YWJj")], "cursor", "damaged or altered"),
        ([("cursor", _forged())], "cursor", "damaged or altered"),
    ],
)
async def test_bad_parameter_is_a_problem_naming_it(
    client: httpx.AsyncClient, params: Params, parameter: str, mentions: str
) -> None:
    response = await listing(client, params)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["parameter"] == parameter
    assert problem["detail"].startswith(f"{parameter}: ")
    assert mentions in problem["detail"]


async def _a_cursor(client: httpx.AsyncClient, engine: AsyncEngine, params: Params) -> str:
    await store(engine, [row(time=at(i), type="identity.approved") for i in range(3)])
    cursor = (await listing(client, [*params, ("limit", 1)])).json()["next_cursor"]
    assert isinstance(cursor, str)
    return cursor


@pytest.mark.server_independent  # refused before any SQL runs
@pytest.mark.parametrize(
    "other",
    [
        [("type", "identity.denied")],
        [("type", "identity.*")],
        [("order", "asc")],
        [("is_test", "false")],
        [("status", "fetched")],
        [("identity_id", "idt-1")],
        [("since", "2026-01-01T00:00:00Z")],
    ],
)
async def test_cursor_used_with_other_filters_is_refused(
    client: httpx.AsyncClient, engine: AsyncEngine, other: Params
) -> None:
    issued_for = [("type", "identity.approved")]
    cursor = await _a_cursor(client, engine, issued_for)
    # A type replaces the filter the cursor was issued for; anything else is added to it.
    params = other if other[0][0] == "type" else [*issued_for, *other]
    response = await listing(client, [*params, ("cursor", cursor)])
    assert response.status_code == 400
    assert response.json()["parameter"] == "cursor"
    assert "other filters" in response.json()["detail"]


async def test_cursor_fits_the_same_filters_in_another_spelling(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    params = [("type", "identity.approved"), ("type", "identity.denied")]
    cursor = await _a_cursor(client, engine, params)
    reordered = [*reversed(params), ("type", "identity.denied"), ("order", "desc")]
    response = await listing(client, [*reordered, ("cursor", cursor)])
    assert response.status_code == 200


async def test_altered_cursor_is_refused(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    cursor = await _a_cursor(client, engine, [])
    response = await listing(client, [("cursor", _flip(cursor))])
    assert response.status_code == 400
    assert response.json()["parameter"] == "cursor"
    response = await listing(client, [("cursor", cursor[:-3])])
    assert response.json()["parameter"] == "cursor"


async def test_listing_needs_a_read_token(client: httpx.AsyncClient) -> None:
    response = await client.get("/events")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    response = await client.get("/events", headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401
    response = await client.get(f"/events/{uuid.uuid4()}")
    assert response.status_code == 401


async def test_one_event_by_id(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    stored = row(type="identity.kyc_refresh.started", status="pending")
    await store(engine, [stored])
    response = await client.get(f"/events/{stored['event_id']}", headers=read_headers())
    assert response.status_code == 200
    assert response.json()["type"] == "identity.kyc_refresh.started"
    assert response.json()["detail"] is None


async def test_unknown_event_id_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/events/{uuid.uuid4()}", headers=read_headers())
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_openapi_documents_the_listing_parameters(client: httpx.AsyncClient) -> None:
    document = (await client.get("/schema/openapi.json")).json()
    operation = document["paths"]["/events"]["get"]
    parameters = {p["name"]: p for p in operation["parameters"]}
    assert list(parameters) == [
        "type",
        "since",
        "until",
        "is_test",
        "identity_id",
        "status",
        "order",
        "limit",
        "cursor",
    ]
    assert parameters["type"]["schema"]["type"] == "array"
    assert parameters["limit"]["schema"]["maximum"] == 1000
    assert parameters["status"]["schema"]["enum"] == ["pending", "fetched", "failed", "not_found"]
    assert "400" in operation["responses"]


# --- the pieces, without HTTP -------------------------------------------------------------


# --- the property -------------------------------------------------------------------------

STORED_TYPES = [
    "identity.approved",
    "identity.denied",
    "identity.documents_required",
    "identity.kyc_refresh.started",
    "identity.kyc_refresh.completed",
    "identity.control.created",
    "transfer.crypto_deposit.pending",
    "transfer.crypto_deposit.completed",
    "transfer.wire_withdrawal.failed",
    "orchestration.completed",
    # Types we do not know, and ones that only look like a prefix's.
    "identity",
    "identity.kyc_refresh",
    "identityx.approved",
    "stablecoin.minted.v9",
    "a_b.c",
]
TYPE_FILTERS = [
    *STORED_TYPES[:4],
    "transfer.crypto_deposit.pending",
    "identity.never_seen",
    "identity.*",
    "identity.kyc_refresh.*",
    "identity.control.*",
    "transfer.*",
    "transfer.crypto_deposit.*",
    "orchestration.*",
    "stablecoin.*",
    "a_b.*",
    "nothing.*",
]
# Few instants, so that many events share a timestamp and pages must split ties by id.
INSTANTS = [
    T0,
    T0 + timedelta(microseconds=1),
    T0 + timedelta(seconds=1),
    T0 + timedelta(minutes=5),
    T0 + timedelta(hours=3, microseconds=500),
    T0 + timedelta(days=40),
]
BOUNDS = [*INSTANTS, T0 - timedelta(days=1), T0 + timedelta(seconds=30)]
IDENTITIES = ["idt-1", "idt-2", "idt-3"]
STATUSES = ["pending", "fetched", "failed", "not_found"]

stored_rows = st.lists(
    st.builds(
        row,
        type=st.sampled_from(STORED_TYPES),
        time=st.sampled_from(INSTANTS),
        is_test=st.booleans(),
        status=st.sampled_from(STATUSES),
        identity_id=st.sampled_from([None, *IDENTITIES]),
        event_id=st.uuids(),
    ),
    # Enough events that most walks take several pages; hypothesis favours short lists.
    min_size=50,
    max_size=200,
    unique_by=lambda r: r["event_id"],
)


@st.composite
def queries(draw: st.DrawFn) -> list[tuple[str, str | int]]:
    # Each filter is left out more often than not, so most walks match enough events to
    # take several pages.
    types = st.lists(st.sampled_from(TYPE_FILTERS), min_size=1, max_size=3)
    params: list[tuple[str, str | int]] = [("type", t) for t in draw(st.just([]) | types)]
    since = draw(st.none() | st.none() | st.sampled_from(BOUNDS))
    until = draw(st.none() | st.none() | st.sampled_from(BOUNDS))
    if since is not None and until is not None and until <= since:
        since, until = (None, until) if draw(st.booleans()) else (since, None)
    params += [("since", since.isoformat())] if since else []
    params += [("until", until.isoformat())] if until else []
    for name, values in [
        ("is_test", ["true", "false"]),
        ("identity_id", [*IDENTITIES, "idt-none"]),
        ("status", STATUSES),
        ("order", ["asc", "desc"]),
    ]:
        value = draw(st.none() | st.none() | st.sampled_from(values))
        params += [(name, value)] if value else []
    limit = draw(st.integers(1, 3) | st.integers(4, 12) | st.integers(13, 60) | st.none())
    return params + ([("limit", limit)] if limit else [])


def expected(rows: Sequence[dict[str, Any]], params: Params) -> list[str]:
    """The plain-Python answer: filter by every parameter, sort by (time, id)."""
    given_ = MultiDict(params)
    types = [str(t) for t in given_.getall("type", [])]
    tests: list[Callable[[dict[str, Any]], bool]] = []
    if types:
        exact = {t for t in types if not t.endswith(".*")}
        prefixes = tuple(t[:-1] for t in types if t.endswith(".*"))
        tests.append(lambda r: r["type"] in exact or r["type"].startswith(prefixes))
    if "since" in given_:
        tests.append(lambda r: r["time"] >= datetime.fromisoformat(str(given_["since"])))
    if "until" in given_:
        tests.append(lambda r: r["time"] < datetime.fromisoformat(str(given_["until"])))
    if "is_test" in given_:
        tests.append(lambda r: r["is_test"] == (given_["is_test"] == "true"))
    for name in ("identity_id", "status"):
        if name in given_:
            tests.append(lambda r, name=name: r[name] == given_[name])
    kept = [r for r in rows if all(test(r) for test in tests)]
    return by_time(kept, descending=given_.get("order", "desc") == "desc")


async def walk(client: httpx.AsyncClient, params: Params, max_pages: int) -> list[list[str]]:
    """Every page of a listing, following next_cursor to the end."""
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        response = await listing(client, [*params, *([("cursor", cursor)] if cursor else [])])
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append([item["id"] for item in body["items"]])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < max_pages, "more pages than events"


async def test_every_walk_matches_a_plain_filter_and_sort(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    loop = asyncio.get_running_loop()

    def run(coroutine: Any) -> Any:
        # Hypothesis drives a synchronous test, so it runs in a worker thread and hands each
        # step to this test's event loop (where the client and the engine live).
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=60)

    async def replace_rows(rows: list[dict[str, Any]]) -> None:
        async with engine.begin() as conn:
            # Events and the journal are never deleted in service (triggers); this test
            # starts each example afresh, as the test server's superuser.
            await conn.execute(text("SET LOCAL session_replication_role = replica"))
            await conn.execute(delete(events))
            await conn.execute(delete(journal))
        await store(engine, rows)

    @settings(
        max_examples=100,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )
    @given(rows=stored_rows, walks=st.lists(queries(), min_size=1, max_size=3))
    def check(rows: list[dict[str, Any]], walks: list[list[tuple[str, str | int]]]) -> None:
        run(replace_rows(rows))
        for params in walks:
            want = expected(rows, params)
            limit = int(MultiDict(params).get("limit", 100))
            pages = run(walk(client, params, max_pages=len(want) // limit + 2))
            got = [event_id for page in pages for event_id in page]
            assert got == want, params
            assert len(set(got)) == len(got)
            # Full pages, then one last page that is not empty (unless nothing matched).
            assert all(len(page) == limit for page in pages[:-1])
            assert pages[-1] or len(pages) == 1

    await loop.run_in_executor(None, check)
