"""Exports: the evidence of each event (as received, when, how often, the full event), the
seals covering it, in JSON Lines and CSV, by window and identity, over HTTP (the command:
tests/process/test_audit_export.py)."""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.domain.notification import Notification
from service.store.audit.canonical import row_hash
from service.store.audit.export import CSV_COLUMNS, ExportQuery, export
from service.store.audit.seals import seal_pending
from service.store.intake import Received, record_notifications
from tests.support.audit import T0, WINDOW, add_events, lines
from tests.support.tokens import read_headers


def check_row_hash(event_id: str, kind: str, row: dict[str, Any]) -> None:
    """The export alone is enough to recompute a journal row's canonical hash."""
    recorded_at = datetime.fromisoformat(row["recorded_at"].replace("Z", "+00:00"))
    expected = row_hash(row["position"], uuid.UUID(event_id), kind, recorded_at, row["body"])
    assert row["row_hash"] == expected.hex()


async def test_jsonl_export_carries_the_evidence_and_the_covering_seals(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    ids = await add_events(engine, 3, identity_id="id-1")
    await seal_pending(engine)
    await add_events(engine, 1, time=T0 + timedelta(days=3))  # outside the window
    # A second webhook delivery of the first event, through the real intake.
    note = Notification(
        id=ids[0],
        type="identity.approved",
        source="com.paxos",
        time=T0,
        object="event",
        is_test=False,
    )
    async with engine.begin() as conn:
        await record_notifications(conn, [Received(note, "{}", deliveries=2)])

    response = await client.get("/audit/export", params=WINDOW, headers=read_headers())

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    records = lines(response.text)
    events, trailer = records[:-1], records[-1]
    assert [r["event_id"] for r in events] == [str(i) for i in ids]
    first = events[0]
    assert first["record"] == "event"
    assert first["deliveries"] == 3
    assert len(first["receipt_times"]) == 3  # one kept from the first receipt, two new
    assert first["last_received_at"] == first["receipt_times"][-1]
    assert first["via"] == "webhook"
    assert first["fetched_at"] is not None
    assert json.loads(first["notification"]["body"])["id"] == str(ids[0])
    assert json.loads(first["event"]["body"])["identity_id"] == "id-1"
    for record in events:
        check_row_hash(record["event_id"], "notification", record["notification"])
        check_row_hash(record["event_id"], "event", record["event"])
    assert trailer["record"] == "trailer"
    assert trailer["events"] == 3
    assert trailer["journal_rows"] == 6
    assert trailer["journal_positions"] == {"first": 1, "last": 6}
    assert trailer["all_sealed"] is True
    assert trailer["seals"]["first"]["seal_id"] == 1
    assert trailer["seals"]["last"]["seal_id"] == 1
    assert trailer["head"]["hash"] == trailer["seals"]["last"]["hash"]


async def test_a_test_event_is_exported_with_paxoss_confirmation(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    [test] = await add_events(engine, 1, is_test=True)
    [real] = await add_events(engine, 1, time=T0 + timedelta(hours=1))
    await seal_pending(engine)
    records = lines((await client.get("/audit/export", params=WINDOW, headers=read_headers())).text)
    exported, trailer = {r["event_id"]: r for r in records[:-1]}, records[-1]
    confirmed = exported[str(test)]
    assert (confirmed["is_test"], confirmed["confirmed_is_test"]) == (True, True)
    assert json.loads(confirmed["test_confirmation"]["body"]) == {
        "is_test": True,
        "confirmed_by": "get_event",
    }
    check_row_hash(str(test), "test_confirmation", confirmed["test_confirmation"])
    assert exported[str(real)]["test_confirmation"] is None
    assert exported[str(real)]["confirmed_is_test"] is False
    assert (trailer["journal_rows"], trailer["all_sealed"]) == (5, True)


async def test_unsealed_rows_are_flagged_in_the_trailer(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await add_events(engine, 1)
    await seal_pending(engine)
    await add_events(engine, 1, time=T0 + timedelta(hours=1))
    trailer = lines(
        (await client.get("/audit/export", params=WINDOW, headers=read_headers())).text
    )[-1]
    assert (trailer["events"], trailer["all_sealed"], trailer["unsealed_rows"]) == (2, False, 2)
    assert trailer["seals"]["last"] is None  # the newest rows are in no seal yet


async def test_export_by_identity_and_as_csv(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await add_events(engine, 2, identity_id="id-a")
    wanted = await add_events(engine, 2, identity_id="id-b", time=T0 + timedelta(hours=1))
    response = await client.get(
        "/audit/export",
        params={**WINDOW, "identity_id": "id-b", "format": "csv"},
        headers=read_headers(),
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert list(rows[0].keys()) == list(CSV_COLUMNS)
    assert [r["event_id"] for r in rows[:-1]] == [str(i) for i in wanted]
    assert all(r["identity_id"] == "id-b" for r in rows[:-1])
    assert json.loads(rows[0]["receipt_times"])
    assert json.loads(rows[0]["notification_body"])["id"] == str(wanted[0])
    assert rows[-1]["record"] == "trailer"
    assert json.loads(rows[-1]["trailer"])["events"] == 2


@pytest.mark.server_independent  # refused before any SQL runs
@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-01-07T00:00:00"}, "until"),
        ({"since": "2026-01-08T00:00:00Z", "until": "2026-01-07T00:00:00Z"}, "until"),
        ({"format": "xml"}, "format"),
        ({"format": ""}, "format"),
        ({"identity_id": ""}, "identity_id"),
        ({"limit": "5"}, "limit"),
    ],
)
async def test_bad_export_parameters_are_named(
    client: httpx.AsyncClient, params: dict[str, str], parameter: str
) -> None:
    response = await client.get("/audit/export", params=params, headers=read_headers())
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["parameter"] == parameter


async def test_export_needs_a_read_token(client: httpx.AsyncClient) -> None:
    assert (await client.get("/audit/export")).status_code == 401


async def test_receipt_times_keep_the_first_hundred(engine: AsyncEngine) -> None:
    note = Notification(
        id=uuid.uuid4(),
        type="identity.approved",
        source="com.paxos",
        time=T0,
        object="event",
        is_test=False,
    )
    for deliveries in (60, 50, 1):
        async with engine.begin() as conn:
            await record_notifications(conn, [Received(note, "{}", deliveries=deliveries)])
            await conn.execute(text("SELECT pg_sleep(0.01)"))
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT deliveries, cardinality(receipt_times) AS kept, "
                    "receipt_times[1] = first_received_at AS first_kept, "
                    "receipt_times[100] < last_received_at AS last_beyond "
                    "FROM events WHERE event_id = :id"
                ),
                {"id": note.id},
            )
        ).one()
    assert (row.deliveries, row.kept, row.first_kept, row.last_beyond) == (111, 100, True, True)


@pytest.mark.parametrize("batch", [2, 4])
async def test_every_event_is_exported_once_in_order_across_batches(
    engine: AsyncEngine, batch: int
) -> None:
    # Pairs of events at the same time: the keyset must break ties by id.
    await add_events(engine, 3)
    await add_events(engine, 3)
    async with engine.connect() as conn:
        expected = [
            str(r[0])
            for r in await conn.execute(text("SELECT event_id FROM events ORDER BY time, event_id"))
        ]
    query = ExportQuery(since=T0 - timedelta(days=1), until=T0 + timedelta(days=1))
    chunks = [chunk async for chunk in export(engine, query, batch=batch)]
    records = lines(b"".join(chunks).decode())
    assert [r["event_id"] for r in records[:-1]] == expected
    assert records[-1]["events"] == 6
