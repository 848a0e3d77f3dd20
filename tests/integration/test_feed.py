"""GET /feed as JSON: gap-safe order under inverted commits, filters and `next_after`, the
long-poll and its NOTIFY wake-up, and the 400s. (SSE runs on a real server: tests/process.)"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.api.feed import sse_message
from service.db.notify import FETCHED_CHANNEL, Waker
from service.store.feed import FeedFilter, read_page
from service.store.following import Follower
from service.store.listed import Listed
from tests.support.feed import full_event, store
from tests.support.tokens import read_headers


async def commit(engine: AsyncEngine, *events: Listed) -> dict[uuid.UUID, int]:
    async with engine.begin() as conn:
        return await store(conn, *events)


async def feed(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await client.get("/feed", params=params, headers=read_headers())
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def follow(client: httpx.AsyncClient, after: int = 0, **params: Any) -> list[dict[str, Any]]:
    """Every item from `after` on, page by page, as a reader passing `next_after` back."""
    items: list[dict[str, Any]] = []
    while True:
        page = await feed(client, after=after, **params)
        items += page["items"]
        assert page["next_after"] >= after
        if page["next_after"] == after:
            return items
        after = page["next_after"]


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [item["event"]["id"] for item in items]


async def test_items_are_full_events_in_position_order_as_get_event_returns_them(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    events = [full_event(n=n) for n in range(3)]
    written: dict[uuid.UUID, int] = {}
    for event in events:
        written |= await commit(engine, event)
    page = await feed(client)
    assert [item["position"] for item in page["items"]] == sorted(written.values())
    assert ids(page["items"]) == [str(e.event_id) for e in events]
    for item in page["items"]:
        one = await client.get(f"/events/{item['event']['id']}", headers=read_headers())
        assert item["event"] == one.json()
        assert item["event"]["detail"]["object"]["identity_id"] == "idt-1"
    assert page["next_after"] >= max(written.values())
    assert (await feed(client, after=page["next_after"]))["items"] == []


async def test_a_full_event_sent_over_several_lines_is_one_line_of_an_sse_message(
    engine: AsyncEngine,
) -> None:
    """The feed passes the journal's body through as received; JSON spread over lines (as
    Paxos may send it) is put on one line, so an SSE message's `data` stays one line."""
    compact = full_event()
    spread = dataclasses.replace(compact, raw=json.dumps(json.loads(compact.raw), indent=2))
    assert "\n" in spread.raw
    written = await commit(engine, spread)
    async with engine.connect() as conn:
        page = await read_page(conn, after=0, through=max(written.values()), limit=10)
    [(position, event)] = page.items
    message = sse_message(position, event)
    assert message.count(b"\n") == 4 and message.endswith(b"\n\n")  # id, event, data, blank
    data = message.split(b"\n")[2].removeprefix(b"data: ")
    assert json.loads(data)["event"]["detail"] == json.loads(compact.raw)


async def test_a_position_that_commits_late_is_neither_skipped_nor_repeated(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    first, second = full_event(n=1), full_event(n=2)
    async with engine.connect() as a, engine.connect() as b:
        await a.begin()
        await b.begin()
        low = await store(a, first)
        high = await store(b, second)
        assert low[first.event_id] < high[second.event_id]
        await b.commit()  # the higher position commits first
        page = await feed(client)
        # The lower position is still in flight: nothing past it may be handed out.
        assert page["items"] == []
        assert page["next_after"] < low[first.event_id]
        after = page["next_after"]
        await a.commit()
    items = await follow(client, after=after)
    assert ids(items) == [str(first.event_id), str(second.event_id)]


async def test_a_lower_position_from_a_younger_transaction_is_waited_for(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """The case a `pg_snapshot_xmin` horizon alone gets wrong: the older transaction (smaller
    xid) inserts the higher position and commits; the younger one holds the lower position."""
    older, younger = full_event(n=1), full_event(n=2)
    async with engine.connect() as a, engine.connect() as b:
        await a.begin()
        await b.begin()
        xid_a = await a.scalar(text("SELECT pg_current_xact_id()::text::bigint"))
        xid_b = await b.scalar(text("SELECT pg_current_xact_id()::text::bigint"))
        assert xid_a < xid_b
        low = (await store(b, younger))[younger.event_id]
        high = (await store(a, older))[older.event_id]
        assert low < high
        await a.commit()
        async with engine.connect() as probe:
            below_xmin = await probe.scalar(
                text(
                    "SELECT xid < pg_snapshot_xmin(pg_current_snapshot()) FROM journal "
                    "WHERE position = :p"
                ),
                {"p": high},
            )
        assert below_xmin  # xmin alone would hand out `high` now, and skip `low` for ever
        page = await feed(client)
        assert page["items"] == []
        assert page["next_after"] < low
        after = page["next_after"]
        await b.commit()
    assert ids(await follow(client, after=after)) == [str(younger.event_id), str(older.event_id)]


async def test_many_concurrent_writers_a_follower_sees_each_event_once_in_order(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    written: dict[uuid.UUID, int] = {}
    seen: list[dict[str, Any]] = []

    async def writer(k: int) -> None:
        for n in range(15):
            async with engine.begin() as conn:
                written.update(await store(conn, full_event(n=n, identity_id=f"idt-{k}")))
                await asyncio.sleep(0.001 * ((n + k) % 3))  # commits interleave

    async def reader(stop: asyncio.Event) -> None:
        after = 0
        while True:
            done = stop.is_set()
            page = await feed(client, after=after, limit=7)
            seen.extend(page["items"])
            after = page["next_after"]
            if done and not page["items"]:
                return

    stop = asyncio.Event()
    reading = asyncio.create_task(reader(stop))
    await asyncio.gather(*(writer(k) for k in range(4)))
    stop.set()
    await asyncio.wait_for(reading, 30)
    positions = [item["position"] for item in seen]
    assert positions == sorted(written.values())  # each once, in order, none skipped
    assert ids(seen) == [str(i) for i, _ in sorted(written.items(), key=lambda kv: kv[1])]


async def test_filters_keep_matching_events_and_next_after_moves_past_the_rest(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    kinds = ["transfer.crypto_deposit.completed"] * 24 + ["identity.approved"]
    events = [full_event(kinds[n % 25], n=n) for n in range(50)]  # matches at 24 and 49
    for event in events:
        await commit(engine, event)
    wanted = [str(e.event_id) for e in events if e.type.startswith("identity.")]
    assert ids(await follow(client, type="identity.*")) == wanted
    # One item asked for: each read looks at 10 rows at most, so most answers are empty, but
    # every answer moves on, and no row is read twice.
    after, answers, got = 0, 0, []
    while True:
        page = await feed(client, after=after, limit=1, type="identity.approved")
        answers += 1
        got += page["items"]
        if page["next_after"] == after:
            break
        assert page["next_after"] > after
        if page["items"]:
            assert page["next_after"] == page["items"][-1]["position"]
        else:
            assert page["next_after"] - after <= 10
        after = page["next_after"]
    assert ids(got) == wanted
    assert 5 <= answers <= 8  # 50 rows, 10 at most per answer, plus the last empty one


async def test_test_events_are_in_the_feed_and_is_test_selects_them(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    real, test = full_event(n=1), full_event(n=2, is_test=True)
    await commit(engine, real)
    await commit(engine, test)
    assert ids(await follow(client)) == [str(real.event_id), str(test.event_id)]
    assert ids(await follow(client, is_test="true")) == [str(test.event_id)]
    assert ids(await follow(client, is_test="false")) == [str(real.event_id)]
    only = await follow(client, is_test="true")
    assert only[0]["event"]["is_test"] is True


async def test_wait_returns_empty_when_nothing_comes(client: httpx.AsyncClient) -> None:
    started = time.monotonic()
    page = await feed(client, wait="0.6")
    assert time.monotonic() - started >= 0.6
    assert page["items"] == []


async def test_wait_returns_soon_after_a_fetched_event_commits(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    start = await feed(client)
    waiting = asyncio.create_task(feed(client, after=start["next_after"], wait=20))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    waker = Waker(engine, FETCHED_CHANNEL)  # as the fetcher tells that full events arrived
    waker.start()
    try:
        event = full_event()
        await commit(engine, event)
        committed = time.monotonic()
        waker.poke()
        page = await asyncio.wait_for(waiting, 5)
        assert time.monotonic() - committed < 1.0
    finally:
        await waker.stop()
    assert ids(page["items"]) == [str(event.event_id)]


async def test_the_notify_alone_wakes_a_waiting_follower(
    database_url: str, engine: AsyncEngine
) -> None:
    """With the poll a minute away, only the NOTIFY can wake the reader in time."""
    follower = Follower(engine, database_url, poll_s=60)
    waker = Waker(engine, FETCHED_CHANNEL)
    waker.start()
    try:
        horizon = await follower.horizon()
        waiting = asyncio.create_task(follower.wait_past(horizon, 30))
        await asyncio.sleep(0.5)  # the listener connects (and wakes everyone once) meanwhile
        assert not waiting.done()
        event = full_event()
        await commit(engine, event)
        committed = time.monotonic()
        waker.poke()
        await asyncio.wait_for(waiting, 5)
        assert time.monotonic() - committed < 0.5
        async with engine.connect() as conn:
            page = await read_page(
                conn, after=horizon, through=follower.final, limit=10, where=FeedFilter()
            )
        assert [e.id for _, e in page.items] == [event.event_id]
    finally:
        await waker.stop()
        await follower.close()


@pytest.mark.parametrize(
    ("params", "headers", "parameter"),
    [
        ({"after": "-1"}, {}, "after"),
        ({"after": "1e3"}, {}, "after"),
        ({"after": str(2**63)}, {}, "after"),
        ({"limit": "0"}, {}, "limit"),
        ({"limit": "1001"}, {}, "limit"),
        ({"type": ""}, {}, "type"),
        ({"type": "identity*"}, {}, "type"),
        ({"is_test": "yes"}, {}, "is_test"),
        ({"wait": "61"}, {}, "wait"),
        ({"wait": "-1"}, {}, "wait"),
        ({"wait": "nan"}, {}, "wait"),
        ({"cursor": "x"}, {}, "cursor"),
        ({"after": ["1", "2"]}, {}, "after"),
        ({}, {"Last-Event-ID": "abc"}, "Last-Event-ID"),
    ],
)
async def test_bad_parameters_are_problems_that_name_them(
    client: httpx.AsyncClient, params: dict[str, Any], headers: dict[str, str], parameter: str
) -> None:
    response = await client.get("/feed", params=params, headers={**read_headers(), **headers})
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["parameter"] == parameter


async def test_the_feed_needs_a_read_token(client: httpx.AsyncClient) -> None:
    assert (await client.get("/feed")).status_code == 401
