"""The console's activity per minute (store/activity.py, ui/sampler.py) on a real database:
journal rows counted by the minute they were recorded in, gauges sampled, failures added up
across processes, the newest minutes read live, old samples pruned."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.store import activity
from service.store.tables import activity_samples, journal
from service.telemetry import metrics
from service.ui.sampler import ActivitySampler

NO_GAUGES = activity.Gauges(backlog=0, fetch_lag_s=None, projection_behind=0, projection_lag_s=0)


def minute(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


async def recorded(engine: AsyncEngine, kind: str, at: datetime, n: int = 1) -> None:
    """`n` journal rows of `kind`, recorded at `at`."""
    async with engine.begin() as conn:
        for _ in range(n):
            await conn.execute(
                insert(journal).values(
                    event_id=uuid.uuid4(), kind=kind, body={"id": 1}, recorded_at=at
                )
            )


async def db_now(engine: AsyncEngine) -> datetime:
    async with engine.connect() as conn:
        now = await conn.scalar(text("SELECT now()"))
    assert isinstance(now, datetime)
    return now.astimezone(UTC)


async def test_journal_rows_are_counted_by_the_minute_they_were_recorded_in(
    engine: AsyncEngine,
) -> None:
    now = await db_now(engine)
    await recorded(engine, "notification", now - timedelta(minutes=30), 3)
    await recorded(engine, "notification", now - timedelta(minutes=5), 2)
    await recorded(engine, "event", now - timedelta(minutes=5), 1)
    await recorded(engine, "event", now - timedelta(hours=2), 4)  # outside the hour
    async with engine.begin() as conn:
        await activity.record(
            conn, recount_since=now - timedelta(hours=3), gauges=NO_GAUGES, failed=0
        )
    async with engine.connect() as conn:
        hour = await activity.activity(conn, minutes=60)
    assert len(hour) == 60
    assert hour[-1].start == minute(await db_now(engine))
    by_start = {b.start: b for b in hour}
    five = by_start[minute(now - timedelta(minutes=5))]
    thirty = by_start[minute(now - timedelta(minutes=30))]
    assert (five.received, five.fetched) == (2, 1)
    assert (thirty.received, thirty.fetched) == (3, 0)
    assert sum(b.received for b in hour) == 5
    assert sum(b.fetched for b in hour) == 1
    # The recount wrote every minute of its range, zeros included: the 2-hour-old rows too.
    async with engine.connect() as conn:
        old = await conn.scalar(
            select(activity_samples.c.fetched).where(
                activity_samples.c.minute == minute(now - timedelta(hours=2))
            )
        )
    assert old == 4


async def test_the_day_is_read_in_buckets_that_add_up(engine: AsyncEngine) -> None:
    now = await db_now(engine)
    for hours_ago in (1, 5, 23):
        await recorded(engine, "notification", now - timedelta(hours=hours_ago), 2)
    async with engine.begin() as conn:
        await activity.record(
            conn, recount_since=now - timedelta(hours=24), gauges=NO_GAUGES, failed=0
        )
    async with engine.connect() as conn:
        day = await activity.activity(conn, minutes=24 * 60, bucket_minutes=10)
    assert len(day) in (144, 145)  # a partial bucket at the start when not on a 10-min mark
    assert sum(b.received for b in day) == 6
    assert all((b.start.minute % 10 == 0) for b in day[1:])


async def test_the_newest_minutes_are_counted_live_without_waiting_for_a_sample(
    engine: AsyncEngine,
) -> None:
    async with engine.begin() as conn:
        await activity.record(conn, recount_since=await db_now(engine), gauges=NO_GAUGES, failed=0)
    await recorded(engine, "notification", await db_now(engine), 1)  # after the last sample
    async with engine.connect() as conn:
        hour = await activity.activity(conn, minutes=60)
    assert hour[-1].received == 1


async def test_gauges_are_the_last_sampled_and_failures_add_up_across_processes(
    engine: AsyncEngine,
) -> None:
    now = await db_now(engine)
    async with engine.begin() as conn:
        await activity.record(
            conn,
            recount_since=now,
            gauges=activity.Gauges(
                backlog=7, fetch_lag_s=12.5, projection_behind=3, projection_lag_s=1.5
            ),
            failed=2,
        )
    async with engine.begin() as conn:  # another process, the same minute
        await activity.record(
            conn,
            recount_since=now,
            gauges=activity.Gauges(
                backlog=4, fetch_lag_s=9.0, projection_behind=0, projection_lag_s=0.0
            ),
            failed=3,
        )
    async with engine.connect() as conn:
        last = (await activity.activity(conn, minutes=5))[-1]
    if last.start != minute(now):  # the minute turned between the writes and the read
        return
    assert last.failed == 5
    assert (last.backlog, last.fetch_lag_s) == (4, 9.0)
    assert (last.projection_behind, last.projection_lag_s) == (0, 0.0)


async def test_minutes_without_a_sample_have_no_gauges(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        hour = await activity.activity(conn, minutes=60)
    assert len(hour) == 60
    assert all(b.backlog is None and b.projection_lag_s is None for b in hour)
    assert all(b.received == b.fetched == b.failed == 0 for b in hour)


async def test_samples_older_than_a_week_are_pruned(engine: AsyncEngine) -> None:
    now = await db_now(engine)
    async with engine.begin() as conn:
        for days in (8, 6):
            await conn.execute(
                insert(activity_samples).values(
                    minute=minute(now - timedelta(days=days)), received=1
                )
            )
        assert await activity.prune(conn) == 1
        kept = (await conn.execute(select(activity_samples.c.minute))).scalars().all()
    assert kept == [minute(now - timedelta(days=6))]


async def test_the_sampler_records_this_processs_failed_fetches_once(engine: AsyncEngine) -> None:
    sampler = ActivitySampler(engine)
    metrics.FETCHES.labels(outcome="retry").inc(2)
    metrics.FETCHES.labels(outcome="not_found").inc()
    metrics.FETCHES.labels(outcome="rate_limited").inc(5)  # Paxos pacing us: not a failure
    metrics.FETCHES.labels(outcome="fetched").inc(4)
    await sampler.sample()
    await sampler.sample()  # nothing new failed: nothing added
    async with engine.connect() as conn:
        total = await conn.scalar(text("SELECT sum(failed) FROM activity_samples"))
        sampled = await conn.scalar(
            text("SELECT count(*) FROM activity_samples WHERE sampled_at IS NOT NULL")
        )
    assert total == 3
    assert sampled >= 1


async def test_a_minute_of_the_journal_is_found_through_its_brin_index(
    engine: AsyncEngine,
) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join(
            (
                await conn.execute(
                    text(
                        "EXPLAIN SELECT count(*) FROM journal "
                        "WHERE recorded_at >= now() - interval '3 minutes'"
                    )
                )
            ).scalars()
        )
    assert "ix_journal_recorded_at_brin" in plan
