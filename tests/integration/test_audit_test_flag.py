"""A test event is what Paxos confirmed, not what a column says (issue 15, item 3).

The attack reproduced: `UPDATE events SET is_test = true` on a real, sealed event, then a
prune removed it and verify said ok. Now the flags cannot change, a prune takes only events
whose confirmation by Paxos is in the journal, and verify reports any prune of another.
"""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from service.store.audit.prune import prune_test_events
from service.store.audit.seals import seal_pending
from service.store.audit.verify import verify
from tests.support.audit import add_events, count, prune_by_hand, tamper

FLAG_FIXED = "is_test never changes"


async def test_is_test_cannot_change_even_for_the_tables_owner(engine: AsyncEngine) -> None:
    [real] = await add_events(engine, 1)
    async with engine.connect() as conn:
        owner = await conn.scalar(
            text(
                "SELECT pg_get_userbyid(relowner) = current_user FROM pg_class "
                "WHERE oid = CAST('events' AS regclass)"
            )
        )
    assert owner is True
    with pytest.raises(DBAPIError, match=FLAG_FIXED):
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE events SET is_test = true WHERE event_id = :id"), {"id": real}
            )
    assert await count(engine, "SELECT count(*) FROM events WHERE is_test") == 0


async def test_paxoss_answer_is_recorded_once_and_never_changed(engine: AsyncEngine) -> None:
    [pending] = await add_events(engine, 1, fetched=False)
    [confirmed] = await add_events(engine, 1, is_test=True)
    async with engine.begin() as conn:  # not answered yet: the fetch may set it
        await conn.execute(
            text("UPDATE events SET confirmed_is_test = false WHERE event_id = :id"),
            {"id": pending},
        )
    for event_id, value in ((pending, "true"), (pending, "NULL"), (confirmed, "false")):
        with pytest.raises(DBAPIError, match=FLAG_FIXED):
            async with engine.begin() as conn:
                await conn.execute(
                    text(f"UPDATE events SET confirmed_is_test = {value} WHERE event_id = :id"),
                    {"id": event_id},
                )
    # Every other column moves as before.
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE events SET deliveries = deliveries + 1, is_test = is_test"))


async def test_a_real_event_flagged_by_hand_is_not_pruned(engine: AsyncEngine) -> None:
    """The reproduced attack, with the trigger out of the way (a superuser can do that)."""
    await add_events(engine, 1)
    await seal_pending(engine)
    await tamper(engine, "UPDATE events SET is_test = true")

    result = await prune_test_events(engine, 0)

    assert (result.events, result.journal_rows) == (0, 0)
    assert result.skipped_unconfirmed == 1
    assert await count(engine, "SELECT count(*) FROM journal") == 2
    assert await count(engine, "SELECT count(*) FROM events") == 1
    assert (await verify(engine, 3600)).ok


async def test_a_confirmation_forged_in_the_events_table_is_not_enough(
    engine: AsyncEngine,
) -> None:
    await add_events(engine, 1)
    await seal_pending(engine)
    await tamper(engine, "UPDATE events SET is_test = true, confirmed_is_test = true")

    assert (await prune_test_events(engine, 0)).events == 0
    assert await count(engine, "SELECT count(*) FROM journal") == 2
    # Nor can the audited path be taken by hand: the journal's guard asks for the evidence.
    with pytest.raises(DBAPIError, match="the journal is append-only: DELETE"):
        await prune_by_hand(engine, triggers=True)


async def test_verify_reports_a_pruned_event_paxos_never_confirmed(engine: AsyncEngine) -> None:
    [real] = await add_events(engine, 1)
    await seal_pending(engine)
    await tamper(engine, "UPDATE events SET is_test = true")
    await prune_by_hand(engine)  # the prune as it was before, which trusted is_test

    report = await verify(engine, 3600)

    assert not report.ok
    assert [(p.kind, p.position, p.seal_id) for p in report.problems] == [
        ("unconfirmed_prune", 1, 1),
        ("unconfirmed_prune", 2, 1),
    ]
    assert str(real) in report.problems[0].detail
    assert "Paxos never confirmed" in report.problems[0].detail


async def test_a_pruned_confirmed_test_event_verifies_ok(engine: AsyncEngine) -> None:
    [test] = await add_events(engine, 1, is_test=True)
    await seal_pending(engine)
    result = await prune_test_events(engine, 0)
    assert (result.events, result.journal_rows) == (1, 2)
    async with engine.connect() as conn:
        left = (await conn.execute(text("SELECT event_id, kind FROM journal"))).all()
    assert left == [(test, "test_confirmation")]  # the evidence stays
    assert (await verify(engine, 3600)).ok


async def test_the_confirmation_itself_is_never_pruned(engine: AsyncEngine) -> None:
    await add_events(engine, 1, is_test=True)
    with pytest.raises(DBAPIError, match="the journal is append-only: DELETE"):
        await prune_by_hand(engine, triggers=True)
    assert await count(engine, "SELECT count(*) FROM journal") == 3


async def test_an_unconfirmed_test_event_is_kept_and_counted(engine: AsyncEngine) -> None:
    """Notified as a test event but never fetched: Paxos has not confirmed it."""
    await add_events(engine, 1, is_test=True, fetched=False)
    await seal_pending(engine)
    result = await prune_test_events(engine, 0)
    assert (result.events, result.skipped_unconfirmed) == (0, 1)
