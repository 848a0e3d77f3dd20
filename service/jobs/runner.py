"""Jobs: long work (backfills, rebuilds) that any process of the deployment can run.

`create_job` (service.store.jobs) queues one (and NOTIFYs); every process's `JobRunner` claims
queued jobs with `FOR UPDATE SKIP LOCKED`, runs the handler registered for the job's kind, and
heartbeats while it runs. A runner that dies stops heartbeating; after `STALE_S` another
runner takes the job over, and the handler resumes from the progress it recorded (handlers
must be resumable: they read `job.progress` and write it as they go).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

import structlog
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db.outages import STORE_ERRORS, Outage
from service.store.jobs import Handler, Job, claim_job, finish_job, heartbeat

log = structlog.get_logger(__name__)

HEARTBEAT_S = 5.0
STALE_S = 30.0


class JobRunner:
    """Runs this process's share of the deployment's jobs, one at a time."""

    def __init__(
        self, engine: AsyncEngine, handlers: Mapping[str, Handler], *, poll_s: float = 2.0
    ) -> None:
        self._engine = engine
        self._handlers = dict(handlers)
        self._poll_s = poll_s
        self.wakeup = asyncio.Event()

    async def run(self) -> None:
        """Claim and run jobs until cancelled."""
        outage = Outage("job queue", first_s=self._poll_s, cap_s=self._poll_s)
        while True:
            try:
                job = await self._claim()
                outage.succeeded()
            except STORE_ERRORS as exc:
                outage.failed(exc)
                job = None
            if job is None:
                self.wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wakeup.wait(), self._poll_s)
                continue
            await self._run(job)

    async def run_one(self) -> bool:
        """Claim and run one job if there is one (tests, CLI); True if one ran."""
        job = await self._claim()
        if job is None:
            return False
        await self._run(job)
        return True

    async def _claim(self) -> Job | None:
        return await claim_job(self._engine, list(self._handlers), STALE_S)

    async def _run(self, job: Job) -> None:
        log_ = log.bind(job_id=str(job.job_id), kind=job.kind)
        log_.info("job started", resumed=bool(job.progress))
        beat = asyncio.create_task(self._heartbeat(job))
        try:
            await self._handlers[job.kind](job)
        except asyncio.CancelledError:
            raise  # shutting down: the job stays running, another runner resumes it
        except Exception as exc:  # noqa: BLE001 - a failed job is recorded, not fatal
            log_.exception("job failed")
            await finish_job(self._engine, job, "failed", f"{type(exc).__name__}: {exc}"[:500])
        else:
            await finish_job(self._engine, job, "done", None)
            log_.info("job done")
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat

    async def _heartbeat(self, job: Job) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            with contextlib.suppress(SQLAlchemyError, OSError, TimeoutError):
                await heartbeat(self._engine, job.job_id)
