"""The pipeline page (backlog, statuses, lag, rate limits, passes, jobs, seals) and its actions:
a new Get Event for failed events, a projection rebuild, a backfill, and a job's progress."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

from litestar import Controller, Request, get, post
from litestar.datastructures import MultiDict, State
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.plugins.htmx import HTMXRequest
from litestar.response import Redirect, Template
from sqlalchemy.ext.asyncio import AsyncEngine

from service.domain.stored import EventFilter
from service.settings import Settings
from service.store.audit.anchors import TSA_SINK, sink_status
from service.store.audit.seals import head as seal_head
from service.store.audit.verify import last_run as last_verify
from service.store.console import rate_limits, recent_jobs, status_counts, stored_events
from service.store.events import list_events
from service.store.fetch_queue import fetch_backlog, make_due
from service.store.jobs import create_job, get_job
from service.store.paxos_connection import read_connection
from service.store.projections.checkpoints import lag as projection_lag
from service.store.projections.registry import PROJECTIONS
from service.store.reconcile import recent_passes
from service.store.subscriptions import list_subscriptions
from service.telemetry import metrics
from service.ui.errors import ConsoleError
from service.ui.forms import as_rfc3339, split_types
from service.ui.pages import NOTICES, PAGE_SIZE, checked_form, page
from service.ui.session import Session
from service.web.problems import InvalidParameter
from service.web.query import parse_query

JOB_POLL_S = 1
BACKFILL_FIELDS = ("since", "until", "types", "include_test")


class PipelinePages(Controller):
    path = "/"

    @get("/pipeline")
    async def pipeline_page(
        self,
        request: Request[Any, Any, State],
        session: NamedDependency[Session],
        engine: NamedDependency[AsyncEngine],
        settings: NamedDependency[Settings],
    ) -> Template:
        async with engine.connect() as conn:
            backlog = await fetch_backlog(conn)
            counts = await status_counts(conn)
            total, total_exact = await stored_events(conn)
            lags = await projection_lag(conn)
            limits = await rate_limits(conn)
            passes = await recent_passes(conn, 10)
            jobs = await recent_jobs(conn)
            failed = await list_events(conn, EventFilter(status="failed"), limit=PAGE_SIZE)
            head = await seal_head(conn)
            verified = await last_verify(conn)
            anchors = await sink_status(conn, settings.audit_anchor_url)
            tsa = (await sink_status(conn, [TSA_SINK]))[0] if settings.audit_tsa_url else None
            subscriptions = await list_subscriptions(conn)
            paxos = await read_connection(conn)  # as every process that calls Paxos left it
        return page(
            "pipeline.html",
            session,
            backlog=backlog,
            counts=counts,
            total=total,
            total_exact=total_exact,
            outcomes=_fetch_outcomes(),
            lags=lags,
            max_lag_s=settings.projection_max_lag_s,
            limits=limits,
            api_rps=settings.paxos_api_rps,
            paxos=paxos,
            passes=passes,
            jobs=jobs,
            failed=failed.items,
            failed_more=failed.more,
            head=head,
            verified=verified,
            anchors=anchors,
            tsa=tsa,
            subscriptions=subscriptions,
            projections=list(PROJECTIONS),
            notice=NOTICES.get(request.query_params.get("notice") or ""),
            now=datetime.now(UTC),
        )

    @post("/pipeline/refetch", status_code=303)
    async def bulk_refetch(
        self,
        request: Request[Any, Any, State],
        session: NamedDependency[Session],
        engine: NamedDependency[AsyncEngine],
    ) -> Redirect:
        form = await checked_form(request, session, admin=True)
        ids: list[uuid.UUID] = []
        for value in form.getall("event_id", []):
            try:
                ids.append(uuid.UUID(str(value)))
            except ValueError:
                raise ConsoleError(status_code=400, detail="event_id: not an event id") from None
        if not ids:
            return Redirect("/ui/pipeline?notice=none", status_code=303)
        async with engine.begin() as conn:
            for event_id in sorted(ids):  # one lock order for concurrent writers
                await make_due(conn, event_id)
        return Redirect("/ui/pipeline?notice=bulk", status_code=303)

    @post("/pipeline/rebuild", status_code=303)
    async def rebuild(
        self,
        request: Request[Any, Any, State],
        session: NamedDependency[Session],
        engine: NamedDependency[AsyncEngine],
    ) -> Redirect:
        form = await checked_form(request, session, admin=True)
        name = str(form.get("name") or "")
        if name != "all" and name not in PROJECTIONS:
            raise ConsoleError(status_code=400, detail=f"No projection named {name!r}.")
        async with engine.begin() as conn:
            job_id = await create_job(conn, "rebuild", {"name": name})
        return Redirect(f"/ui/jobs/{job_id}", status_code=303)

    @post("/pipeline/backfill", status_code=303)
    async def backfill(
        self,
        request: Request[Any, Any, State],
        session: NamedDependency[Session],
        engine: NamedDependency[AsyncEngine],
        settings: NamedDependency[Settings],
    ) -> Redirect | Template:
        form = await checked_form(request, session, admin=True)
        typed = {n: str(form.get(n) or "").strip() for n in BACKFILL_FIELDS}
        problems = {n: "required" for n in ("since", "until") if not typed[n]}
        pairs = [(n, as_rfc3339(typed[n])) for n in ("since", "until") if typed[n]]
        types = split_types(typed["types"])
        window = None
        if not problems:
            try:
                window = parse_query(MultiDict(pairs)).filters
            except InvalidParameter as exc:
                field = str(exc.extensions.get("parameter") or "since")
                problems[field] = exc.detail.removeprefix(f"{field}: ")
        if any(not re.fullmatch(r"[\x21-\x7e]{1,200}", t) or "*" in t for t in types):
            problems["types"] = "exact event types only (Paxos lists one type at a time)"
        if problems or window is None or window.since is None or window.until is None:
            # The pipeline page again, the form as typed and each problem beside its field.
            template: Template = await PipelinePages.pipeline_page.fn(
                self, request, session=session, engine=engine, settings=settings
            )
            template.context.update(backfill=typed, backfill_problems=problems)
            template.status_code = 400
            return template
        async with engine.begin() as conn:
            job_id = await create_job(
                conn,
                "backfill",
                {
                    "since": window.since.isoformat(),
                    "until": window.until.isoformat(),
                    "types": list(dict.fromkeys(types)),
                    "include_test": form.get("include_test") == "true",
                },
            )
        return Redirect(f"/ui/jobs/{job_id}", status_code=303)

    @get("/jobs/{job_id:uuid}")
    async def job_page(
        self,
        request: HTMXRequest,
        session: NamedDependency[Session],
        engine: NamedDependency[AsyncEngine],
        job_id: FromPath[uuid.UUID],
    ) -> Template:
        async with engine.connect() as conn:
            job = await get_job(conn, job_id)
        if job is None:
            raise ConsoleError(status_code=404, detail=f"No job with id {job_id}.")
        context: dict[str, Any] = {"job": job, "poll_s": JOB_POLL_S}
        if request.htmx and request.htmx.target == "job":
            return page("job_status.html", session, **context)
        return page("job.html", session, **context)


def _fetch_outcomes() -> dict[str, float]:
    """This process's Get Event outcomes since it started (the Prometheus counter)."""
    outcomes: dict[str, float] = {}
    for family in metrics.FETCHES.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                outcomes[sample.labels["outcome"]] = sample.value
    waits = sum(
        s.value
        for f in metrics.RATE_LIMIT_WAITS.collect()
        for s in f.samples
        if s.name.endswith("_total")
    )
    outcomes["rate_limit_waits"] = waits
    return outcomes
