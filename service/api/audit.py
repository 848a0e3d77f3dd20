"""GET /audit/verify and GET /audit/export (DESIGN.md §3): the audit trail over HTTP.

Both are read-API routes. The export streams (constant memory, however large the window);
its parameters are all checked before the first byte goes out, so a bad one is a 400 problem.
An export cut short (the database went away mid-way) lacks its trailer record: a reader that
finds no trailer knows the export is incomplete.

Verification reads the whole journal, so a caller does not get a run of its own: a run
recorded less than REUSE_S ago (by anyone, the CLI included) is answered again; otherwise
callers in this process share one run, and a run under way in another process is waited for
and its result answered (the store's VERIFY_LOCK). At most one run per REUSE_S, one at a time.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass
from typing import Any

from litestar import Controller, Request, get
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.openapi.spec import (
    OpenAPIFormat,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    Schema,
)
from litestar.response import Stream
from sqlalchemy.ext.asyncio import AsyncEngine

from service.settings import Settings
from service.store.audit.export import FORMATS, ExportQuery, export
from service.store.audit.verify import VerifyReport, recent_report, verify
from service.web.auth import require_read
from service.web.problems import PROBLEM_JSON, InvalidParameter
from service.web.query import MAX_VALUE_LENGTH, parse_identity_id, parse_time

EXPORT_PARAMETERS = ("since", "until", "identity_id", "format")
MEDIA_TYPES = {"jsonl": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}
REUSE_S = 60.0  # a verification recorded this recently is answered again

# The run under way in this process, per engine: concurrent callers await the same one.
_runs: weakref.WeakKeyDictionary[AsyncEngine, asyncio.Task[VerifyReport]] = (
    weakref.WeakKeyDictionary()
)


async def shared_verification(engine: AsyncEngine, settings: Settings) -> VerifyReport:
    """A recent recorded run, else the run under way in this process, else a new one (which
    waits for one under way elsewhere and then answers it, see the module doc)."""
    async with engine.connect() as conn:
        recent = await recent_report(conn, REUSE_S)
    if recent is not None:
        return recent
    task = _runs.get(engine)
    if task is None:
        task = asyncio.create_task(verify(engine, settings, reuse_s=REUSE_S))
        _runs[engine] = task
        task.add_done_callback(lambda done: _finished(engine, done))
    # Shielded: a caller that goes away does not cancel the run the others wait for.
    return await asyncio.shield(task)


def _finished(engine: AsyncEngine, task: asyncio.Task[VerifyReport]) -> None:
    if _runs.get(engine) is task:
        del _runs[engine]
    if not task.cancelled():
        task.exception()  # retrieved: every caller may have gone before it ended


@dataclass
class ExportOperation(Operation):
    """The export's OpenAPI description: its parameters (parsed by hand) and its two formats."""

    def __post_init__(self) -> None:
        time = Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.DATE_TIME)
        self.parameters = [
            *(self.parameters or []),
            Parameter(
                name="since",
                param_in="query",
                schema=time,
                description="Events at or after this event time (RFC 3339 with offset).",
            ),
            Parameter(
                name="until",
                param_in="query",
                schema=time,
                description="Events before this event time (exclusive; RFC 3339 with offset).",
            ),
            Parameter(
                name="identity_id",
                param_in="query",
                schema=Schema(type=OpenAPIType.STRING, min_length=1, max_length=MAX_VALUE_LENGTH),
                description="Only this identity's events.",
            ),
            Parameter(
                name="format",
                param_in="query",
                schema=Schema(type=OpenAPIType.STRING, enum=list(FORMATS), default="jsonl"),
                description="`jsonl` (JSON Lines, one record per line) or `csv`.",
            ),
        ]
        text = OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING))
        self.responses = {
            **(self.responses or {}),
            "200": OpenAPIResponse(
                description=(
                    "The records, streamed: one per event, then a trailer record "
                    "(see docs/audit.md in the project)."
                ),
                content={"application/x-ndjson": text, "text/csv": text},
            ),
            "400": OpenAPIResponse(
                description="A bad query parameter; the problem's `parameter` member names it.",
                content={PROBLEM_JSON: OpenAPIMediaType(schema=Schema(type=OpenAPIType.OBJECT))},
            ),
        }


def parse_export_query(request: Request[Any, Any, State]) -> ExportQuery:
    """The export the query string asks for; an `InvalidParameter` naming the first bad one."""
    params = request.query_params
    for name in dict.fromkeys(params.keys()):
        if name not in EXPORT_PARAMETERS:
            shown = name if len(name) <= 60 else name[:57] + "..."
            raise InvalidParameter(
                shown, f"unknown parameter; known are {', '.join(EXPORT_PARAMETERS)}"
            )

    def single(name: str) -> str | None:
        values: list[str] = params.getall(name, [])
        if len(values) > 1:
            raise InvalidParameter(name, "given more than once")
        return values[0] if values else None

    since = parse_time("since", single("since"))
    until = parse_time("until", single("until"))
    if since is not None and until is not None and until <= since:
        raise InvalidParameter("until", "must be later than since")
    form = single("format")
    if form is None:
        form = "jsonl"
    if form not in FORMATS:
        raise InvalidParameter("format", f"{form!r}: must be one of {', '.join(FORMATS)}")
    return ExportQuery(
        since=since,
        until=until,
        identity_id=parse_identity_id(single("identity_id")),
        format=form,
    )


class AuditController(Controller):
    path = "/audit"
    tags = ["audit"]
    guards = [require_read]

    @get(
        "/verify",
        summary="Verify the seal chain against the journal",
        description=(
            "Recomputes every seal from the journal; `problems` names each changed, deleted "
            "or inserted row, broken chain link, prune of an event Paxos never confirmed as a "
            "test event, and an unsealed backlog older than AUDIT_MAX_UNSEALED_AGE_S; with "
            "AUDIT_ANCHOR_URL, anchors outside the database that disagree with the seals "
            "(`anchor_mismatch`) or lie beyond the chain's end (`anchor_missing`). The run "
            "is recorded. One run at a time: a run recorded in the last 60 s is answered "
            "again (`verified_at` says when it ran), and concurrent callers share one run."
        ),
    )
    async def verify_chain(
        self,
        request: Request[Any, Any, State],
        engine: NamedDependency[AsyncEngine],
        settings: NamedDependency[Settings],
    ) -> dict[str, Any]:
        if request.query_params:
            raise InvalidParameter(next(iter(request.query_params)), "takes no parameters")
        report = await shared_verification(engine, settings)
        return report.as_dict()

    @get(
        "/export",
        summary="Export events with their evidence (JSON Lines or CSV, streamed)",
        description=(
            "Events with event time in [since, until), optionally one identity's: the "
            "notification as received, every receipt time, the fetch time, the delivery count, "
            "`via`, and the full event, each journal row with its position and canonical hash. "
            "The last record is a trailer naming the seals that cover the exported rows."
        ),
        operation_class=ExportOperation,
    )
    async def export_events(
        self, request: Request[Any, Any, State], reader: NamedDependency[AsyncEngine]
    ) -> Stream:
        query = parse_export_query(request)
        return Stream(
            export(reader, query),
            media_type=MEDIA_TYPES[query.format],
            headers={
                "Content-Disposition": f'attachment; filename="paxos-events-export.{query.format}"'
            },
        )
