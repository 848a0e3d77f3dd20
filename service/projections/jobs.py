"""The `rebuild` job kind: `POST /admin/projections/{name}/rebuild` queues one.

Resumable like every job: a rebuild that dies leaves its shadow tables and their checkpoint,
and the runner that takes the job over goes on from there.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from service.projections.rebuild import Progress, rebuild
from service.store.jobs import Handler, Job
from service.store.projections.registry import PROJECTIONS


def rebuild_job(engine: AsyncEngine) -> Handler:
    """The handler of `rebuild` jobs (params: `name`, a projection or `all`)."""

    async def handle(job: Job) -> None:
        name = str(job.params.get("name", "all"))
        names = list(PROJECTIONS) if name == "all" else [name]
        for projection_name in names:

            async def report(progress: Progress) -> None:
                await job.report(
                    **{
                        progress.projection: {
                            "phase": progress.phase,
                            "done": progress.done,
                            "total": progress.total,
                            "resumed_from": progress.resumed_from,
                        }
                    }
                )

            await rebuild(engine, PROJECTIONS[projection_name], progress=report)

    return handle
