"""Retention without losing evidence: the one audited way anything leaves the journal.

`prune_test_events` removes test events whose event time is older than a threshold, and
nothing else. A test event is one Paxos confirmed as such: the journal holds its
`test_confirmation` row (written with the full event, when Get Event answered with
`is_test=true` or the listing of test events held it) and `events.confirmed_is_test` says so.
The notification's `is_test` is unsigned and decides nothing here: an event only notified as a
test event is kept (and counted). For each batch, in one transaction: a `prunes` row (when,
threshold, counts), then every journal row of the batch but the confirmation into
`pruned_journal_rows` with its canonical hash, then those journal rows, then the events rows.
The journal's trigger (migration 0009) lets a DELETE through only for a row recorded in
pruned_journal_rows with its exact hash, of an event whose confirmation is in the journal, and
never the confirmation itself: the audit record is a precondition of the deletion, the
evidence that the event was a test event stays (verify checks every prune against it), and
UPDATE and TRUNCATE stay refused.

Only events whose journal rows are all sealed are pruned, so every pruned row's hash is also
in a seal, and verify accounts a pruned position by its recorded hash: the chain stays
verifiable. Events with unsealed rows are left for a later prune (and counted).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.store.audit.canonical import row_hash_sql
from service.store.tables import TEST_CONFIRMATION

BATCH_EVENTS = 5000
# The confirmation stays: the evidence that what was pruned was a test event.
_KEPT = f"WHERE j.kind <> '{TEST_CONFIRMATION}'"


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What a prune removed (`prune_ids`: one `prunes` row per batch) and what it left: test
    events with rows not sealed yet, and events notified as test events that Paxos has not
    confirmed as such (never fetched, or real)."""

    cutoff: datetime
    prune_ids: tuple[int, ...]
    events: int
    journal_rows: int
    skipped_unsealed: int
    skipped_unconfirmed: int = 0


# Confirmed test events `e`: the confirmation in the journal (found through the small partial
# index of confirmations; one per event at most) and the events row agreeing.
_CONFIRMED = (
    "journal c JOIN events e ON e.event_id = c.event_id "
    f"WHERE c.kind = '{TEST_CONFIRMATION}' AND e.confirmed_is_test IS TRUE"
)


async def prune_test_events(
    engine: AsyncEngine, older_than_days: int, *, now: datetime | None = None
) -> PruneResult:
    """Prune test events older than `older_than_days` (by event time); see the module doc."""
    if older_than_days < 0:
        raise ValueError("older_than_days must not be negative")
    cutoff = (now or datetime.now(UTC)) - timedelta(days=older_than_days)
    prune_ids: list[int] = []
    events = journal_rows = 0
    while True:
        async with engine.begin() as conn:
            sealed_through = await conn.scalar(
                text("SELECT last_position FROM seals ORDER BY seal_id DESC LIMIT 1")
            )
            await conn.execute(
                text(
                    "CREATE TEMPORARY TABLE prune_batch ON COMMIT DROP AS "
                    f"SELECT e.event_id FROM {_CONFIRMED} AND e.time < :cutoff AND NOT EXISTS ("
                    "  SELECT 1 FROM journal j WHERE j.event_id = e.event_id "
                    "  AND (CAST(:through AS bigint) IS NULL OR j.position > :through)) "
                    "ORDER BY e.event_id LIMIT :n"
                ),
                {"cutoff": cutoff, "through": sealed_through, "n": BATCH_EVENTS},
            )
            batch = await conn.scalar(text("SELECT count(*) FROM prune_batch"))
            if not batch:
                break
            rows = await conn.scalar(
                text(f"SELECT count(*) FROM journal j JOIN prune_batch b USING (event_id) {_KEPT}")
            )
            prune_id = await conn.scalar(
                text(
                    "INSERT INTO prunes (older_than_days, cutoff, events, journal_rows) "
                    "VALUES (:days, :cutoff, :events, :rows) RETURNING prune_id"
                ),
                {"days": older_than_days, "cutoff": cutoff, "events": batch, "rows": rows},
            )
            await conn.execute(
                text(
                    "INSERT INTO pruned_journal_rows "
                    "(position, event_id, kind, row_hash, prune_id) "
                    f"SELECT j.position, j.event_id, j.kind, {row_hash_sql('j')}, :prune_id "
                    f"FROM journal j JOIN prune_batch b USING (event_id) {_KEPT}"
                ),
                {"prune_id": prune_id},
            )
            # The journal first: the events row goes only once its rows are gone.
            await conn.execute(
                text(
                    "DELETE FROM journal j USING pruned_journal_rows p "
                    "WHERE p.prune_id = :prune_id AND j.position = p.position"
                ),
                {"prune_id": prune_id},
            )
            await conn.execute(
                text("DELETE FROM events e USING prune_batch b WHERE e.event_id = b.event_id")
            )
            prune_ids.append(prune_id)
            events += batch
            journal_rows += rows
    async with engine.connect() as conn:
        unsealed = await conn.scalar(
            text(f"SELECT count(*) FROM {_CONFIRMED} AND e.time < :cutoff"), {"cutoff": cutoff}
        )
        # Notified as test events, not confirmed so by Paxos: not fetched yet (or ever), or
        # real events.
        unconfirmed = await conn.scalar(
            text(
                "SELECT count(*) FROM events e WHERE e.is_test AND e.time < :cutoff "
                "AND NOT (e.confirmed_is_test IS TRUE AND EXISTS (SELECT 1 FROM journal c "
                f"WHERE c.event_id = e.event_id AND c.kind = '{TEST_CONFIRMATION}'))"
            ),
            {"cutoff": cutoff},
        )
    return PruneResult(
        cutoff, tuple(prune_ids), events, journal_rows, unsealed or 0, unconfirmed or 0
    )
