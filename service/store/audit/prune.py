"""Retention without losing evidence: the one audited way anything leaves the journal.

`prune_test_events` removes test events (`events.is_test`, sent from the Paxos Dashboard's
Test button) whose event time is older than a threshold, and nothing else. For each batch, in
one transaction: a `prunes` row (when, threshold, counts), then every journal row of the
batch into `pruned_journal_rows` with its canonical hash, then the journal rows, then the
events rows. The journal's trigger (migration 0006) lets a DELETE through only for a row
recorded in pruned_journal_rows with its exact hash, of a test event: the audit record is a
precondition of the deletion, and UPDATE and TRUNCATE stay refused.

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

BATCH_EVENTS = 5000


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What a prune removed (`prune_ids`: one `prunes` row per batch) and what it left."""

    cutoff: datetime
    prune_ids: tuple[int, ...]
    events: int
    journal_rows: int
    skipped_unsealed: int


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
                    "SELECT e.event_id FROM events e "
                    "WHERE e.is_test AND e.time < :cutoff AND NOT EXISTS ("
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
                text("SELECT count(*) FROM journal j JOIN prune_batch b USING (event_id)")
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
                    "FROM journal j JOIN prune_batch b USING (event_id)"
                ),
                {"prune_id": prune_id},
            )
            # The journal first: its trigger checks the events row says is_test.
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
        skipped = await conn.scalar(
            text("SELECT count(*) FROM events e WHERE e.is_test AND e.time < :cutoff"),
            {"cutoff": cutoff},
        )
    return PruneResult(cutoff, tuple(prune_ids), events, journal_rows, skipped or 0)
