"""The activity sampler: every process records, every `interval_s`, what the console's charts
draw (service/store/activity.py), so they survive restarts and show every process's work.

Each pass recounts the journal's last few minutes, writes this minute's fetch backlog, fetch
lag and projection lag (read from the database: the deployment's, not this process's), adds
the Get Events this process saw fail since its last pass, and, about hourly, deletes samples
older than a week. A process's first pass recounts the last 24 hours, filling the minutes
nothing sampled while every process was down. A process that dies loses its failures of the
last pass at most.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db.outages import STORE_ERRORS, Outage
from service.store import activity
from service.store.fetch_queue import fetch_backlog
from service.store.projections.checkpoints import lag
from service.telemetry import metrics

log = structlog.get_logger(__name__)

SAMPLE_INTERVAL_S = 20.0
PRUNE_EVERY_S = 3600.0
# Get Event outcomes that did not bring the event (metrics.FETCHES): errors to be retried and
# final ones. A 429 (`rate_limited`) is Paxos pacing us, not a failure.
FAILED_OUTCOMES = ("retry", "failed", "not_found", "mismatch")


def failed_fetches() -> int:
    """This process's Get Events that did not bring their event, since it started."""
    return int(
        sum(
            sample.value
            for family in metrics.FETCHES.collect()
            for sample in family.samples
            if sample.name.endswith("_total") and sample.labels["outcome"] in FAILED_OUTCOMES
        )
    )


class ActivitySampler:
    """Records a sample every `interval_s` seconds (see the module's docstring)."""

    def __init__(self, engine: AsyncEngine, *, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self._engine = engine
        self._interval_s = interval_s
        self._reported = failed_fetches()  # what earlier runs in this process already added
        self._last_pass: datetime | None = None
        self._pruned_at: float | None = None

    async def sample(self) -> None:
        """One pass: recount, write this minute's gauges and failures, prune when due."""
        started = datetime.now(UTC)
        failed = failed_fetches()
        prune = self._pruned_at is None or time.monotonic() - self._pruned_at >= PRUNE_EVERY_S
        # The first pass fills in the day; then the minutes since the last pass, and one more
        # for transactions that began before it and committed after.
        since = (self._last_pass or started - timedelta(hours=24)) - timedelta(minutes=1)
        async with self._engine.begin() as conn:
            backlog = await fetch_backlog(conn)
            lags = await lag(conn)
            gauges = activity.Gauges(
                backlog=backlog.pending,
                fetch_lag_s=backlog.oldest_pending_age_s,
                projection_behind=max((p.events_behind for p in lags), default=0),
                projection_lag_s=max((p.seconds_behind for p in lags), default=0.0),
            )
            await activity.record(
                conn, recount_since=since, gauges=gauges, failed=failed - self._reported
            )
            if prune:
                await activity.prune(conn)
        self._reported = failed
        self._last_pass = started
        if prune:
            self._pruned_at = time.monotonic()

    async def run(self) -> None:
        outage = Outage("activity sampling", first_s=self._interval_s, cap_s=self._interval_s)
        while True:
            try:
                await self.sample()
                outage.succeeded()
            except asyncio.CancelledError:
                raise
            except STORE_ERRORS as exc:
                outage.failed(exc)
            except Exception:  # noqa: BLE001 - the next pass tries again
                log.exception("activity sampling failed; retrying next interval")
            await asyncio.sleep(self._interval_s)
