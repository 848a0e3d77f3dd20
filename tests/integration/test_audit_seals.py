"""Sealing: the canonical row hash, the chain of seals, and the horizon below which rows are
final."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.audit.sealer import Sealer
from service.store.audit.canonical import (
    GENESIS_HASH,
    ROW_HASH_SQL,
    row_hash,
    seal_hash,
    unpack_rows,
)
from service.store.audit.seals import covering, head, horizon, seal_next, seal_pending
from service.store.audit.verify import verify
from tests.support.audit import add_events, burn_position

AWKWARD_BODIES = [
    '{"id": 1}',
    '{\n  "name": "Zoë 😀 ü",\n  "spaced" :  [1,2 , 3]\n}',
    '{"nul": "\\u0000", "quote": "\\"", "tab": "\\t"}',
    '   {"leading": "spaces"}   ',
]


@pytest.mark.parametrize("body", AWKWARD_BODIES)
async def test_the_row_hash_in_sql_is_the_documented_canonical_form(
    engine: AsyncEngine, body: str
) -> None:
    async with engine.begin() as conn:
        row = (
            await conn.execute(
                text(
                    "INSERT INTO journal (event_id, kind, body) "
                    "VALUES (gen_random_uuid(), 'event', CAST(:body AS json)) "
                    "RETURNING position, event_id, kind, recorded_at, body::text AS body"
                ),
                {"body": body},
            )
        ).one()
        in_sql = await conn.scalar(
            text(f"SELECT {ROW_HASH_SQL} FROM journal j WHERE j.position = :p"),
            {"p": row.position},
        )
    assert row.body == body  # json keeps the exact text
    assert bytes(in_sql) == row_hash(row.position, row.event_id, "event", row.recorded_at, body)


async def test_sealing_chains_seals_over_every_row_in_position_order(
    engine: AsyncEngine,
) -> None:
    await add_events(engine, 3)  # 6 journal rows
    gap = await burn_position(engine)
    await add_events(engine, 2)  # 4 more

    seals = await seal_pending(engine, max_rows=4)

    assert [s.row_count for s in seals] == [4, 4, 2]
    assert seals[0].first_position == 1
    for before, after in zip(seals, seals[1:], strict=False):
        assert after.first_position == before.last_position + 1
    async with engine.connect() as conn:
        stored = (await conn.execute(text("SELECT * FROM seals ORDER BY seal_id"))).all()
        journal = (
            await conn.execute(
                text(f"SELECT j.position, {ROW_HASH_SQL} AS h FROM journal j ORDER BY 1")
            )
        ).all()
        newest = await head(conn)
        over_gap = await covering(conn, gap)
        beyond = await covering(conn, seals[-1].last_position + 1)
    # The digests list every journal row, once, in order, with its hash: the gap is in a
    # seal's range but in no digest.
    listed = [entry for s in stored for entry in unpack_rows(bytes(s.rows_digest))]
    assert listed == [(r.position, bytes(r.h)) for r in journal]
    assert gap not in [p for p, _ in listed]
    # Each hash chains the previous one.
    prev = GENESIS_HASH
    for s in stored:
        assert bytes(s.prev_hash) == prev
        assert bytes(s.hash) == seal_hash(
            prev, s.first_position, s.last_position, bytes(s.rows_digest)
        )
        prev = bytes(s.hash)
    assert newest == seals[-1]
    assert newest is not None and newest.hash_hex == prev.hex()
    assert over_gap is not None and over_gap.first_position <= gap <= over_gap.last_position
    assert beyond is None
    # Nothing new: nothing sealed.
    assert await seal_pending(engine) == []


async def test_a_row_not_yet_committed_holds_the_horizon_back(engine: AsyncEngine) -> None:
    await add_events(engine, 1)
    writer = await engine.connect()
    try:
        await writer.begin()
        await writer.execute(
            text(
                "INSERT INTO journal (event_id, kind, body) "
                "VALUES (gen_random_uuid(), 'notification', '{}')"
            )
        )
        # An insert in flight: no horizon (the lock is not granted; the writer is not stalled
        # for longer than the lock timeout), and nothing sealed.
        assert await horizon(engine, lock_timeout_ms=50) is None
        assert await seal_pending(engine, lock_timeout_ms=50) == []
        await writer.commit()
    finally:
        await writer.close()
    assert await horizon(engine) == 3
    seals = await seal_pending(engine)
    assert [(s.first_position, s.last_position, s.row_count) for s in seals] == [(1, 3, 3)]


async def test_only_one_sealer_at_a_time(engine: AsyncEngine) -> None:
    await add_events(engine, 2)
    through = await horizon(engine)
    assert through is not None
    async with engine.begin() as other:
        await other.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": 0x7061786F735F736C})
        assert await seal_next(engine, through) is None
    first, second = await asyncio.gather(seal_next(engine, through), seal_next(engine, through))
    sealed = [s for s in (first, second) if s is not None]
    async with engine.connect() as conn:
        count = await conn.scalar(text("SELECT count(*) FROM seals"))
    assert len(sealed) >= 1
    assert count == len(sealed)
    if len(sealed) == 2:  # the second chained onto the first, never beside it
        assert sealed[1].first_position == sealed[0].last_position + 1


async def test_seals_are_append_only(engine: AsyncEngine) -> None:
    await add_events(engine, 1)
    await seal_pending(engine)
    for statement in ("UPDATE seals SET row_count = 0", "DELETE FROM seals", "TRUNCATE seals"):
        with pytest.raises(Exception, match="seals is append-only"):
            async with engine.begin() as conn:
                await conn.execute(text(statement))


async def test_the_background_sealer_keeps_sealing(engine: AsyncEngine) -> None:
    sealer = asyncio.create_task(Sealer(engine, interval_s=0.05).run())
    try:
        for batch in range(2):
            await add_events(engine, 2)
            for _ in range(200):
                async with engine.connect() as conn:
                    newest = await head(conn)
                if newest is not None and newest.last_position >= 4 * (batch + 1):
                    break
                await asyncio.sleep(0.05)
            assert newest is not None and newest.last_position == 4 * (batch + 1)
    finally:
        sealer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sealer


async def test_sealing_while_rows_commit_out_of_order_misses_none(engine: AsyncEngine) -> None:
    """Writers hold positions open for a while, commit or roll back, in any order, while the
    sealer runs: every committed row ends up sealed exactly once, and the chain verifies."""

    async def writer(seed: int) -> None:
        for i in range(15):
            async with engine.connect() as conn:
                await conn.begin()
                await conn.execute(
                    text(
                        "INSERT INTO journal (event_id, kind, body) "
                        "VALUES (gen_random_uuid(), 'notification', '{}')"
                    )
                )
                await asyncio.sleep(((seed * 7 + i * 3) % 5) * 0.004)
                if (seed + i) % 4 == 0:
                    await conn.rollback()  # a burned position
                else:
                    await conn.commit()

    sealer = asyncio.create_task(Sealer(engine, interval_s=0.01).run())
    try:
        await asyncio.gather(*(writer(seed) for seed in range(4)))
    finally:
        sealer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sealer
    await seal_pending(engine)
    async with engine.connect() as conn:
        rows = await conn.scalar(text("SELECT count(*) FROM journal"))
        seals = await conn.scalar(text("SELECT count(*) FROM seals"))
    report = await verify(engine, 3600)
    assert report.ok, report.problems
    assert report.rows_checked == rows == 45
    assert seals is not None and seals > 1  # sealed while the writers ran, not only at the end
