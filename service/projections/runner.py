"""The projection runner: applies new journal events to every projection, in any process.

A round applies the next batch of each projection in its own transaction
(`checkpoints.apply_batch`, which locks the projection's checkpoint row, applies the batch
with one statement that moves the checkpoint, and returns) and commits: the rows and the
checkpoint change together or not at all, so a crash anywhere leaves a projection equal to a
replay up to its checkpoint. Another process that finds the row locked skips it, so any
number of `serve` and `worker` copies can run a runner and each batch is applied by exactly
one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db.outages import STORE_ERRORS, Outage
from service.store.projections.checkpoints import BATCH_SIZE, apply_batch, ensure_checkpoints, lag
from service.store.projections.registry import PROJECTIONS, Projection

log = structlog.get_logger(__name__)

RETRY_CAP_S = 2.0  # the longest pause between two tries while the database is unavailable
PROJECTION_POLL_S = 0.2  # how often to look for new journal rows when no NOTIFY woke the runner


class Projector:
    """Keeps every projection caught up with the journal, until cancelled."""

    def __init__(
        self,
        engine: AsyncEngine,
        projections: Iterable[Projection] = PROJECTIONS.values(),
        *,
        batch_size: int = BATCH_SIZE,
        poll_s: float = PROJECTION_POLL_S,
        lag_every_s: float = 5.0,
    ) -> None:
        self._engine = engine
        self._projections = tuple(projections)
        self._batch_size = batch_size
        self._poll_s = poll_s
        self._lag_every_s = lag_every_s
        self.wakeup = asyncio.Event()

    async def catch_up(self) -> int:
        """Apply batches to every projection until none has more (or another process is
        applying it); the number of journal rows consumed."""
        async with self._engine.begin() as conn:
            await ensure_checkpoints(conn, (p.name for p in self._projections))
        total = 0
        for projection in self._projections:
            while True:
                async with self._engine.begin() as conn:
                    read = await apply_batch(conn, projection, limit=self._batch_size)
                if not read:
                    break
                total += read
                if read < self._batch_size:
                    break
        return total

    async def run(self) -> None:
        """Catch up, then poll (the wake-up event shortens the wait)."""
        next_lag = 0.0
        # The database is away: try again soon, but not five times a second (and never
        # longer than RETRY_CAP_S after it is back).
        outage = Outage("projections", first_s=2 * self._poll_s, cap_s=RETRY_CAP_S)
        while True:
            # Cleared before catching up, so a wake-up that comes during it is not lost.
            self.wakeup.clear()
            wait_s = self._poll_s
            try:
                await self.catch_up()
                if time.monotonic() >= next_lag:
                    async with self._engine.connect() as conn:
                        await lag(conn, (p.name for p in self._projections))
                    next_lag = time.monotonic() + self._lag_every_s
                outage.succeeded()
            except STORE_ERRORS as exc:
                wait_s = outage.failed(exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), wait_s)
