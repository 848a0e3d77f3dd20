"""Jobs: long work (backfills, rebuilds) that any process of the deployment can run.

`create_job` queues one (and NOTIFYs); every process's `JobRunner` claims queued jobs with
`FOR UPDATE SKIP LOCKED`, runs the handler registered for the job's kind, and heartbeats while
it runs. A runner that dies stops heartbeating; after `STALE_S` another runner takes the job
over, and the handler resumes from the progress it recorded (handlers must be resumable:
they read `job.progress` and write it as they go).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.db.outages import STORE_ERRORS, Outage

log = structlog.get_logger(__name__)

JOBS_CHANNEL = "jobs"
HEARTBEAT_S = 5.0
STALE_S = 30.0


@dataclass
class Job:
    """A claimed job; `report` records progress (and heartbeats)."""

    job_id: uuid.UUID
    kind: str
    params: dict[str, Any]
    progress: dict[str, Any]
    _engine: AsyncEngine = field(repr=False)

    async def report(self, **progress: Any) -> None:
        """Merge `progress` into the job's recorded progress (visible in GET /admin/jobs)."""
        self.progress.update(progress)
        async with self._engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE jobs SET progress = CAST(:p AS jsonb), heartbeat_at = now() "
                    "WHERE job_id = :id"
                ),
                {"p": _json(self.progress), "id": self.job_id},
            )


Handler = Callable[[Job], Awaitable[None]]


def _json(value: Any) -> str:
    import msgspec

    return msgspec.json.encode(value).decode()


async def create_job(conn: AsyncConnection, kind: str, params: Mapping[str, Any]) -> uuid.UUID:
    """Queue a job of `kind`; the caller's transaction commits it."""
    job_id = uuid.uuid4()
    await conn.execute(
        text("INSERT INTO jobs (job_id, kind, params) VALUES (:id, :kind, CAST(:params AS jsonb))"),
        {"id": job_id, "kind": kind, "params": _json(dict(params))},
    )
    await conn.execute(
        text("SELECT pg_notify(:channel, :kind)"), {"channel": JOBS_CHANNEL, "kind": kind}
    )
    return job_id


async def get_job(conn: AsyncConnection, job_id: uuid.UUID) -> dict[str, Any] | None:
    """A job's public state, or None."""
    row = (
        await conn.execute(
            text(
                "SELECT job_id, kind, params, state, progress, error, created_at, started_at, "
                "finished_at FROM jobs WHERE job_id = :id"
            ),
            {"id": job_id},
        )
    ).one_or_none()
    return dict(row._mapping) if row else None


_CLAIM = text(
    """
    UPDATE jobs SET state = 'running', heartbeat_at = now(),
                    started_at = coalesce(started_at, now())
    WHERE job_id = (
        SELECT job_id FROM jobs
        WHERE kind = ANY(:kinds)
          AND (state = 'queued'
               OR (state = 'running' AND heartbeat_at < now() - make_interval(secs => :stale)))
        ORDER BY created_at
        LIMIT 1
        FOR UPDATE SKIP LOCKED
    )
    RETURNING job_id, kind, params, progress
    """
)


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
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(_CLAIM, {"kinds": list(self._handlers), "stale": STALE_S})
            ).one_or_none()
        if row is None:
            return None
        return Job(row.job_id, row.kind, dict(row.params), dict(row.progress), self._engine)

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
            await self._finish(job, "failed", f"{type(exc).__name__}: {exc}"[:500])
        else:
            await self._finish(job, "done", None)
            log_.info("job done")
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat

    async def _heartbeat(self, job: Job) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            with contextlib.suppress(SQLAlchemyError, OSError, TimeoutError):
                async with self._engine.begin() as conn:
                    await conn.execute(
                        text("UPDATE jobs SET heartbeat_at = now() WHERE job_id = :id"),
                        {"id": job.job_id},
                    )

    async def _finish(self, job: Job, state: str, error: str | None) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE jobs SET state = :state, error = :error, finished_at = now(), "
                    "progress = CAST(:p AS jsonb) WHERE job_id = :id"
                ),
                {"state": state, "error": error, "p": _json(job.progress), "id": job.job_id},
            )
