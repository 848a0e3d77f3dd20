"""The operator console under /ui: server-rendered pages, htmx only for live parts.

Every page works without JavaScript: filters are GET forms, actions are POST forms that
redirect (303) to the page showing their effect. htmx, when present, refreshes the events
list and polls job progress. Reads go through the same store functions as the API; actions
through the same ones as the admin API (`make_due`, `create_job`).
"""

from __future__ import annotations

import re
import secrets
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import structlog
from litestar import Controller, Request, Response, Router, get, post
from litestar.datastructures import MultiDict, State
from litestar.exceptions import HTTPException
from litestar.params import FromPath
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.template.config import TemplateConfig
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine

from service.api.events import encode_cursor, parse_query
from service.audit import seals
from service.audit.verify import last_run as last_verify
from service.jobs.runner import create_job, get_job
from service.projections import read
from service.projections.runner import PROJECTIONS
from service.projections.runner import lag as projection_lag
from service.reconciling.reconciler import recent_passes
from service.settings import Settings
from service.store.events import EventFilter, Position, get_event, list_events
from service.store.fetch_queue import fetch_backlog, make_due
from service.store.tables import EVENT_STATUSES, events
from service.telemetry import metrics
from service.ui import queries
from service.ui.session import (
    LOGIN_CSRF_COOKIE,
    LOGIN_FORM_TTL_S,
    SESSION_COOKIE,
    SESSION_TTL_S,
    Session,
    cookie,
    csrf_ok,
    expire,
    issue,
    role_of,
    session_key,
)
from service.ui.session import read as read_session
from service.web.problems import InvalidParameter

log = structlog.get_logger(__name__)

HERE = Path(__file__).resolve().parent
PAGE_SIZE = 50
REFRESH_S = 5
JOB_POLL_S = 1

NOTICES = {
    "refetch": "A new Get Event is scheduled; the fetcher takes it up within seconds.",
    "bulk": "The selected events are scheduled for a new Get Event.",
    "none": "Nothing was selected.",
}


# --- errors -------------------------------------------------------------------------------


class SignInRequired(HTTPException):
    status_code = 401


class ConsoleError(HTTPException):
    """An error shown as a console page (not a problem document): status and a plain message."""


def _error_page(request: Request[Any, Any, State], exc: Exception) -> Response[Any]:
    if isinstance(exc, SignInRequired):
        target = "/ui/login"
        if request.method == "GET" and request.url.path != "/ui/login":
            target += "?" + urlencode({"next": _path_and_query(request)})
        if request.headers.get("hx-request"):
            # htmx does not swap a 401; this tells it to load the sign-in page instead.
            return Response(b"", status_code=401, headers={"HX-Redirect": target})
        return Redirect(target, status_code=303)
    if isinstance(exc, HTTPException):
        status, message = exc.status_code, exc.detail
    elif isinstance(exc, STORE_ERRORS) and not _is_bug(exc):
        log.warning("console: store unavailable", error=type(exc).__name__)
        status, message = 503, "The database cannot be reached just now; try again shortly."
    else:
        log.exception("console: unexpected error", path=request.url.path)
        status, message = HTTP_500_INTERNAL_SERVER_ERROR, "Something went wrong on our side."
    return Template(
        "error.html",
        context={"status": status, "message": message, "session": None},
        status_code=status,
        headers=dict(_SECURITY_HEADERS),
    )


STORE_ERRORS = (DBAPIError, SQLAlchemyTimeoutError, OSError, TimeoutError)


def _is_bug(exc: Exception) -> bool:
    """A database error from a bad statement, not an outage (as service.web.problems tells)."""
    return isinstance(exc, DBAPIError) and not (
        exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)
    )


def _path_and_query(request: Request[Any, Any, State]) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


def _safe_next(value: str | None) -> str:
    """Where to go after signing in: a console path only (never another site)."""
    if value and value.startswith("/ui/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/ui/events"


# --- sessions -----------------------------------------------------------------------------


async def _session(request: Request[Any, Any, State]) -> Session | None:
    key = await session_key(request)
    return read_session(key, request.app.state.settings, request.cookies.get(SESSION_COOKIE))


async def _require(request: Request[Any, Any, State]) -> Session:
    session = await _session(request)
    if session is None:
        raise SignInRequired()
    return session


async def _form(request: Request[Any, Any, State]) -> MultiDict[Any]:
    return MultiDict((await request.form()).multi_items())


async def _require_form(
    request: Request[Any, Any, State], *, admin: bool
) -> tuple[Session, MultiDict[Any]]:
    """The session and form of a POST that changes something: CSRF checked, then the role."""
    session = await _require(request)
    form = await _form(request)
    if not csrf_ok(session.csrf, form.get("csrf")):
        raise ConsoleError(
            status_code=403,
            detail="This form has expired or did not come from this console. Reload the page "
            "and try again.",
        )
    if admin and not session.is_admin:
        raise ConsoleError(status_code=403, detail="This action needs an admin token.")
    return session, form


def _engine(request: Request[Any, Any, State]) -> AsyncEngine:
    engine: AsyncEngine = request.app.state.engine
    return engine


def _page(name: str, session: Session | None, status_code: int = 200, **context: Any) -> Template:
    return Template(name, context={"session": session, **context}, status_code=status_code)


# --- form values ----------------------------------------------------------------------------

_LOCAL_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?")


def _as_rfc3339(value: str) -> str:
    """A datetime-local form value (no offset) read as UTC; anything else as typed."""
    value = value.strip()
    if _LOCAL_TIME.fullmatch(value):
        return value + (":00Z" if value.count(":") == 1 else "Z")
    return value


EVENT_FORM_FIELDS = ("type", "since", "until", "is_test", "status", "identity_id", "order")


def _event_query(params: MultiDict[Any]) -> list[tuple[str, str]]:
    """The /events query the form asks for: empty fields dropped, types split, times in UTC."""
    pairs: list[tuple[str, str]] = []
    for name in EVENT_FORM_FIELDS:
        for value in params.getall(name, []):
            value = str(value).strip()
            if not value:
                continue
            if name == "type":
                pairs += [("type", t) for t in re.split(r"[\s,]+", value) if t]
            elif name in ("since", "until"):
                pairs.append((name, _as_rfc3339(value)))
            else:
                pairs.append((name, value))
    return pairs


def _form_values(params: MultiDict[Any]) -> dict[str, str]:
    """The filter form's fields as the person typed them, to show the form filled in."""
    return {name: " ".join(str(v) for v in params.getall(name, [])) for name in EVENT_FORM_FIELDS}


_SECURITY_HEADERS = {
    # Everything the console loads comes from the service itself: no CDN, no inline script.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


async def _security_headers(response: Response[Any]) -> Response[Any]:
    for name, value in _SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


async def _static_headers(response: Response[Any]) -> Response[Any]:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


# --- the pages ------------------------------------------------------------------------------


class ConsoleController(Controller):
    path = "/ui"
    include_in_schema = False
    # The same keys as the app's handlers (service.web.problems), so these win on /ui.
    exception_handlers = dict.fromkeys((HTTPException, *STORE_ERRORS, Exception), _error_page)

    @get("/", name="ui-home")
    async def home(self) -> Redirect:
        return Redirect("/ui/events", status_code=303)

    # -- signing in and out

    @get("/login")
    async def login_form(self, request: Request[Any, Any, State]) -> Template:
        csrf = secrets.token_urlsafe(24)
        template = _page(
            "login.html",
            await _session(request),
            csrf=csrf,
            next=_safe_next(request.query_params.get("next")),
            problem=None,
        )
        template.cookies.append(cookie(request, LOGIN_CSRF_COOKIE, csrf, LOGIN_FORM_TTL_S))
        return template

    @post("/login", status_code=303)
    async def login(self, request: Request[Any, Any, State]) -> Response[Any]:
        form = await _form(request)
        if not csrf_ok(request.cookies.get(LOGIN_CSRF_COOKIE), form.get("csrf")):
            raise ConsoleError(
                status_code=403,
                detail="The sign-in form has expired or did not come from this console. "
                "Open the sign-in page again.",
            )
        settings: Settings = request.app.state.settings
        token = str(form.get("token") or "").strip()
        role = role_of(settings, token) if token else None
        if role is None:
            csrf = secrets.token_urlsafe(24)
            template = _page(
                "login.html",
                None,
                status_code=401,
                csrf=csrf,
                next=_safe_next(form.get("next")),
                problem="That is not a valid read or admin token.",
            )
            template.cookies.append(cookie(request, LOGIN_CSRF_COOKIE, csrf, LOGIN_FORM_TTL_S))
            return template
        value, _ = issue(await session_key(request), role, token)
        response = Redirect(_safe_next(form.get("next")), status_code=303)
        response.set_cookie(cookie(request, SESSION_COOKIE, value, SESSION_TTL_S))
        expire(response, request, LOGIN_CSRF_COOKIE)
        return response

    @post("/logout", status_code=303)
    async def logout(self, request: Request[Any, Any, State]) -> Redirect:
        await _require_form(request, admin=False)
        response = Redirect("/ui/login", status_code=303)
        expire(response, request, SESSION_COOKIE)
        return response

    # -- events

    @get("/events")
    async def events_page(self, request: Request[Any, Any, State]) -> Template:
        session = await _require(request)
        params = request.query_params
        pairs = _event_query(params)
        cursor = params.get("cursor")
        problem = None
        items: list[Any] = []
        next_url = None
        try:
            query = parse_query(MultiDict([*pairs, *([("cursor", cursor)] if cursor else [])]))
        except InvalidParameter as exc:
            problem = exc.detail
        else:
            async with _engine(request).connect() as conn:
                page = await list_events(conn, query.filters, limit=PAGE_SIZE, after=query.after)
            items = page.items
            if page.more:
                last = items[-1]
                next_cursor = encode_cursor(
                    Position(time=last.time, event_id=last.id), query.filters
                )
                next_url = "/ui/events?" + urlencode(
                    [*_raw_filter_pairs(params), ("cursor", next_cursor)]
                )
        refresh_url = "/ui/events?" + urlencode(_raw_filter_pairs(params))
        context: dict[str, Any] = {
            "items": items,
            "form": _form_values(params),
            "statuses": EVENT_STATUSES,
            "problem": problem,
            "next_url": next_url,
            "first_page": cursor is None,
            "refresh_url": refresh_url,
            "refresh_s": REFRESH_S,
        }
        if request.headers.get("hx-request") and request.headers.get("hx-target") == "event-rows":
            return _page("event_rows.html", session, **context)
        return _page("events.html", session, status_code=400 if problem else 200, **context)

    @get("/events/{event_id:uuid}")
    async def event_page(
        self, request: Request[Any, Any, State], event_id: FromPath[uuid.UUID]
    ) -> Template:
        session = await _require(request)
        async with _engine(request).connect() as conn:
            event = await get_event(conn, event_id)
            if event is None:
                raise ConsoleError(status_code=404, detail=f"No event with id {event_id}.")
            journal = await queries.journal_rows(conn, event_id)
            covering = {row.position: await seals.covering(conn, row.position) for row in journal}
        notification = next((r for r in journal if r.kind == "notification"), None)
        full = next((r for r in journal if r.kind == "event"), None)
        return _page(
            "event.html",
            session,
            event=event,
            journal=journal,
            covering=covering,
            notification=notification,
            full=full,
            notice=NOTICES.get(request.query_params.get("notice") or ""),
        )

    @post("/events/{event_id:uuid}/refetch", status_code=303)
    async def refetch(
        self, request: Request[Any, Any, State], event_id: FromPath[uuid.UUID]
    ) -> Redirect:
        await _require_form(request, admin=True)
        async with _engine(request).begin() as conn:
            status = await conn.scalar(select(events.c.status).where(events.c.event_id == event_id))
            if status is None:
                raise ConsoleError(status_code=404, detail=f"No event with id {event_id}.")
            if status == "fetched":
                raise ConsoleError(status_code=409, detail=f"Event {event_id} is already fetched.")
            await make_due(conn, event_id)
        return Redirect(f"/ui/events/{event_id}?notice=refetch", status_code=303)

    # -- identities and transfers

    @get("/identities/{identity_id:str}")
    async def identity_page(
        self, request: Request[Any, Any, State], identity_id: FromPath[str]
    ) -> Template:
        session = await _require(request)
        cursor = request.query_params.get("cursor")
        try:
            query = parse_query(
                MultiDict([("cursor", cursor)] if cursor else []), identity_id=identity_id
            )
        except InvalidParameter as exc:
            raise ConsoleError(status_code=400, detail=exc.detail) from None
        async with _engine(request).connect() as conn:
            identity = await read.get_identity(conn, identity_id)
            page = await list_events(conn, query.filters, limit=PAGE_SIZE, after=query.after)
        if identity is None and not page.items:
            raise ConsoleError(status_code=404, detail=f"No identity with id {identity_id}.")
        next_url = None
        if page.more:
            last = page.items[-1]
            next_url = f"/ui/identities/{identity_id}?" + urlencode(
                {"cursor": encode_cursor(Position(last.time, last.id), query.filters)}
            )
        return _page(
            "identity.html",
            session,
            identity_id=identity_id,
            identity=identity,
            items=page.items,
            next_url=next_url,
        )

    @get("/transfers/{transfer_id:str}")
    async def transfer_page(
        self, request: Request[Any, Any, State], transfer_id: FromPath[str]
    ) -> Template:
        session = await _require(request)
        async with _engine(request).connect() as conn:
            transfer = await read.get_transfer(conn, transfer_id)
            if transfer is None:
                raise ConsoleError(status_code=404, detail=f"No transfer with id {transfer_id}.")
            items = await queries.transfer_events(conn, transfer_id)
        return _page("transfer.html", session, transfer=transfer, items=items)

    # -- the pipeline

    @get("/pipeline")
    async def pipeline_page(self, request: Request[Any, Any, State]) -> Template:
        session = await _require(request)
        settings: Settings = request.app.state.settings
        async with _engine(request).connect() as conn:
            backlog = await fetch_backlog(conn)
            counts = await queries.status_counts(conn)
            total, total_exact = await queries.stored_events(conn)
            lags = await projection_lag(conn)
            limits = await queries.rate_limits(conn)
            passes = await recent_passes(conn, 10)
            jobs = await queries.recent_jobs(conn)
            failed = await list_events(conn, EventFilter(status="failed"), limit=PAGE_SIZE)
            head = await seals.head(conn)
            verified = await last_verify(conn)
        return _page(
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
            passes=passes,
            jobs=jobs,
            failed=failed.items,
            failed_more=failed.more,
            head=head,
            verified=verified,
            projections=list(PROJECTIONS),
            notice=NOTICES.get(request.query_params.get("notice") or ""),
            now=datetime.now(UTC),
        )

    @post("/pipeline/refetch", status_code=303)
    async def bulk_refetch(self, request: Request[Any, Any, State]) -> Redirect:
        _, form = await _require_form(request, admin=True)
        ids: list[uuid.UUID] = []
        for value in form.getall("event_id", []):
            try:
                ids.append(uuid.UUID(str(value)))
            except ValueError:
                raise ConsoleError(status_code=400, detail="event_id: not an event id") from None
        if not ids:
            return Redirect("/ui/pipeline?notice=none", status_code=303)
        async with _engine(request).begin() as conn:
            for event_id in sorted(ids):  # one lock order for concurrent writers
                await make_due(conn, event_id)
        return Redirect("/ui/pipeline?notice=bulk", status_code=303)

    @post("/pipeline/rebuild", status_code=303)
    async def rebuild(self, request: Request[Any, Any, State]) -> Redirect:
        _, form = await _require_form(request, admin=True)
        name = str(form.get("name") or "")
        if name != "all" and name not in PROJECTIONS:
            raise ConsoleError(status_code=400, detail=f"No projection named {name!r}.")
        async with _engine(request).begin() as conn:
            job_id = await create_job(conn, "rebuild", {"name": name})
        return Redirect(f"/ui/jobs/{job_id}", status_code=303)

    @post("/pipeline/backfill", status_code=303)
    async def backfill(self, request: Request[Any, Any, State]) -> Redirect:
        _, form = await _require_form(request, admin=True)
        pairs = [
            (n, _as_rfc3339(str(form.get(n) or ""))) for n in ("since", "until") if form.get(n)
        ]
        if len(pairs) < 2:
            raise ConsoleError(status_code=400, detail="A backfill needs both since and until.")
        types = [t for t in re.split(r"[\s,]+", str(form.get("types") or "")) if t]
        try:
            window = parse_query(MultiDict(pairs)).filters
        except InvalidParameter as exc:
            raise ConsoleError(status_code=400, detail=exc.detail) from None
        bad = [t for t in types if not re.fullmatch(r"[\x21-\x7e]{1,200}", t) or "*" in t]
        if bad:
            raise ConsoleError(
                status_code=400,
                detail="types: exact event types only (Paxos lists one type at a time)",
            )
        assert window.since is not None and window.until is not None
        async with _engine(request).begin() as conn:
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
        self, request: Request[Any, Any, State], job_id: FromPath[uuid.UUID]
    ) -> Template:
        session = await _require(request)
        async with _engine(request).connect() as conn:
            job = await get_job(conn, job_id)
        if job is None:
            raise ConsoleError(status_code=404, detail=f"No job with id {job_id}.")
        context: dict[str, Any] = {"job": job, "poll_s": JOB_POLL_S}
        if request.headers.get("hx-request") and request.headers.get("hx-target") == "job":
            return _page("job_status.html", session, **context)
        return _page("job.html", session, **context)


def _raw_filter_pairs(params: MultiDict[Any]) -> list[tuple[str, str]]:
    """The filter form's fields as received (for links that keep the filters)."""
    return [
        (name, str(value))
        for name in EVENT_FORM_FIELDS
        for value in params.getall(name, [])
        if str(value).strip()
    ]


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


# --- assembly -------------------------------------------------------------------------------


_PAXOS_UTC = re.compile(r"(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(?:\.\d+)?Z")


def _utc(value: datetime | str | None) -> Any:
    """A time as `<time>`, in UTC; console.js puts the reader's local time in its title."""
    from markupsafe import Markup, escape

    if value is None:
        return Markup('<span class="none">—</span>')
    if isinstance(value, str):
        # As Paxos wrote it (nanoseconds kept in the attribute); shown like the others.
        match = _PAXOS_UTC.fullmatch(value)
        shown = f"{match.group(1)} {match.group(2)} UTC" if match else value
        return Markup('<time datetime="{}" title="{}">{}</time>').format(
            escape(value), escape(value), escape(shown)
        )
    utc = value.astimezone(UTC)
    iso = utc.isoformat().replace("+00:00", "Z")
    shown = utc.strftime("%Y-%m-%d %H:%M:%S") + " UTC"
    return Markup('<time datetime="{}" title="{}">{}</time>').format(iso, shown, shown)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _configure(engine: Any) -> None:
    env = engine.engine
    env.filters["utc"] = _utc
    env.filters["age"] = _age
    env.globals["page_size"] = PAGE_SIZE


def template_config() -> TemplateConfig[Any]:
    """Jinja templates of the console (autoescaped)."""
    from litestar.plugins.jinja import JinjaTemplateEngine

    return TemplateConfig(
        directory=HERE / "templates", engine=JinjaTemplateEngine, engine_callback=_configure
    )


def console_handlers() -> list[Any]:
    """The console's routes and its static files (htmx, CSS, a few lines of JS)."""
    return [
        Router("/", route_handlers=[ConsoleController], after_request=_security_headers),
        create_static_files_router(
            path="/ui/static",
            directories=[HERE / "static"],
            name="ui-static",
            include_in_schema=False,
            after_request=_static_headers,
        ),
    ]
