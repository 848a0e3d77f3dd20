"""The journal is append-only: the database itself refuses UPDATE, DELETE and TRUNCATE."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from service.domain import history
from service.simulator.universe import generate_universe
from service.store.tables import journal


async def append(engine: AsyncEngine, event_id: uuid.UUID, kind: str = "notification") -> None:
    async with engine.begin() as conn:
        await conn.execute(insert(journal).values(event_id=event_id, kind=kind, body={"id": 1}))


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE journal SET body = '{}'::json",
        "UPDATE journal SET kind = 'event'",
        "DELETE FROM journal",
        "TRUNCATE journal",
    ],
)
async def test_changing_the_journal_is_refused(engine: AsyncEngine, statement: str) -> None:
    event_id = uuid.uuid4()
    await append(engine, event_id)
    with pytest.raises(DBAPIError, match="the journal is append-only"):
        async with engine.begin() as conn:
            await conn.execute(text(statement))
    async with engine.connect() as conn:
        row = (await conn.execute(select(journal))).one()
    assert (row.event_id, row.kind, row.body) == (event_id, "notification", {"id": 1})


async def test_one_row_per_event_and_kind(engine: AsyncEngine) -> None:
    event_id = uuid.uuid4()
    await append(engine, event_id, "notification")
    await append(engine, event_id, "event")
    with pytest.raises(IntegrityError, match="uq_journal_event_id_kind"):
        await append(engine, event_id, "notification")
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(journal)) == 2


async def test_unknown_kinds_are_refused(engine: AsyncEngine) -> None:
    with pytest.raises(IntegrityError, match="ck_journal_kind"):
        await append(engine, uuid.uuid4(), "rumour")


async def test_rows_carry_their_transaction_id_for_gap_safe_reading(engine: AsyncEngine) -> None:
    await append(engine, uuid.uuid4())
    await append(engine, uuid.uuid4())
    async with engine.connect() as conn:
        xids = (
            (await conn.execute(text("SELECT xid::text::bigint FROM journal ORDER BY position")))
            .scalars()
            .all()
        )
        horizon = await conn.scalar(
            text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
        )
    assert len(xids) == 2 and xids[0] < xids[1]
    # Both committed, so both are below the visibility horizon a gap-safe reader uses.
    assert max(xids) < horizon


async def test_a_full_event_is_kept_parsed_as_written_and_nothing_can_write_that_copy(
    engine: AsyncEngine,
) -> None:
    """`doc` (what projections read) is computed by PostgreSQL from the body: for `event`
    rows its type, time and the values of the object fields the folds read of its type, in
    the layout of its family (`domain.history.LAYOUTS`), as they are, with
    jsonb's one refusal (\\u0000) replaced; nothing for notifications; and no statement can
    set it, not even with the append-only trigger out of the way."""
    body = (
        '{"id": "e1", "type": "transfer.crypto_withdrawal.completed", "object": {"id": '
        '"a\\u0000b", "status": 1.50, "memo": null, "identity_id": "x"}, "source": "com.paxos"}'
    )
    notified, fetched = uuid.uuid4(), uuid.uuid4()
    async with engine.begin() as conn:
        for event_id, kind in [(notified, "notification"), (fetched, "event")]:
            await conn.execute(
                text("INSERT INTO journal (event_id, kind, body) VALUES (:id, :kind, :body)"),
                {"id": event_id, "kind": kind, "body": body},
            )
        docs = {
            r.kind: r.doc
            for r in await conn.execute(text("SELECT kind, doc::text AS doc FROM journal"))
        }
        bodies = {r[0] for r in await conn.execute(text("SELECT body::text FROM journal"))}
    assert bodies == {body}
    assert docs == {
        "notification": None,
        # The transfer layout: id, type, status (then profile_id, ..., memo: none here).
        "event": '["transfer.crypto_withdrawal.completed", null, "a\ufffdb", null, 1.50]',
    }
    for statement, refusal in [
        ("UPDATE journal SET doc = '{}'::jsonb", 'column "doc" can only be updated to DEFAULT'),
        (
            "INSERT INTO journal (event_id, kind, body, doc) VALUES (gen_random_uuid(), 'event', "
            "'{}', '{\"forged\": true}')",
            'cannot insert a non-DEFAULT value into column "doc"',
        ),
    ]:
        with pytest.raises(DBAPIError, match=refusal):
            async with engine.begin() as conn:
                await conn.execute(text("SET LOCAL session_replication_role = replica"))
                await conn.execute(text(statement))


async def test_the_folds_read_nothing_the_journals_doc_leaves_out(engine: AsyncEngine) -> None:
    """The journal keeps of a full event only what the folds read (`journal_doc`): every
    subject's state and history folded from those copies are the ones folded from the full
    events, over a simulated universe (every field Paxos sends, the folds' and the others')."""
    universe = generate_universe(600, seed=7)
    bodies = [sim.event_body() for sim in universe]
    async with engine.connect() as conn:
        docs = await conn.scalars(
            text("SELECT journal_doc(CAST(b AS json))::text FROM unnest(CAST(:b AS text[])) b"),
            {"b": [msgspec.json.encode(body).decode() for body in bodies]},
        )
        kept = [msgspec.json.decode(doc) for doc in docs]
    at = datetime(2026, 12, 5, tzinfo=UTC)

    def recorded(parts: list[tuple[Any, Any, Any]]) -> list[history.Recorded]:
        return [
            history.Recorded.parsed(uuid.UUID(body["id"]), *part, at, "webhook")
            for body, part in zip(bodies, parts, strict=True)
        ]

    unpacked = [history.unpack(doc) for doc in kept]
    full = recorded([(b["type"], b["created_at"], b["object"]) for b in bodies])
    narrow = recorded(unpacked)
    left_out = {
        f for b, u in zip(bodies, unpacked, strict=True) for f in b["object"].keys() - u[2].keys()
    }
    assert "id" in left_out  # an identity event's own: the identity fold reads identity_id
    compared = 0
    for kind in history.KINDS:
        subjects = {history.subject_of(kind, r.event) for r in full} - {None}
        for subject in subjects:
            assert history.fold(narrow, kind, subject) == history.fold(full, kind, subject)
            assert [
                (e.key, e.state, e.changes) for e in history.history(narrow, kind, subject)
            ] == [(e.key, e.state, e.changes) for e in history.history(full, kind, subject)]
            compared += 1
    assert compared > 50
