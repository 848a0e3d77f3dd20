"""The job table: queueing, claiming, progress and outcome of long work (backfills, rebuilds).

Claims, heartbeats and outcomes are short transactions of their own; `create_job` joins the
caller's transaction, so a job is queued only if the request that asked for it commits.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

JOBS_CHANNEL = "jobs"


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


# A job is claimable when queued, or when its runner stopped heartbeating (it died): the
# handler then resumes from the progress it recorded.
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


async def claim_job(engine: AsyncEngine, kinds: Sequence[str], stale_s: float) -> Job | None:
    """Claim the oldest claimable job of `kinds` in a transaction of its own, or None."""
    async with engine.begin() as conn:
        row = (await conn.execute(_CLAIM, {"kinds": list(kinds), "stale": stale_s})).one_or_none()
    if row is None:
        return None
    return Job(row.job_id, row.kind, dict(row.params), dict(row.progress), engine)


async def heartbeat(engine: AsyncEngine, job_id: uuid.UUID) -> None:
    """Say the job's runner is alive, in a transaction of its own."""
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE jobs SET heartbeat_at = now() WHERE job_id = :id"), {"id": job_id}
        )


async def finish_job(engine: AsyncEngine, job: Job, state: str, error: str | None) -> None:
    """Record the job's outcome (`done` or `failed`) and final progress."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE jobs SET state = :state, error = :error, finished_at = now(), "
                "progress = CAST(:p AS jsonb) WHERE job_id = :id"
            ),
            {"state": state, "error": error, "p": _json(job.progress), "id": job.job_id},
        )
