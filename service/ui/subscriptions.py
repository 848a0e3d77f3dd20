"""The push subscriptions page: each subscription's state, URL, types, position, lag, what is in
flight, its last error and its deliveries by outcome; and, for admins, pause and resume,
replay, a new secret, and a new subscription.

The same store functions as the admin API, checked by the same rules (service/web/
subscription_rules.py, the SSRF check in service/web/ssrf.py) and signed with secrets made the
same way (service/web/standard_webhooks.py). A secret is shown once, on the page that answers
the form that made it; no page shows it again.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Redirect, Template
from sqlalchemy.ext.asyncio import AsyncEngine

from service.settings import Settings
from service.store import subscriptions as store
from service.ui.errors import ConsoleError
from service.ui.forms import as_rfc3339, split_types
from service.ui.pages import checked_form, page
from service.ui.session import Session
from service.web.ssrf import check_url
from service.web.standard_webhooks import format_secret, new_secret
from service.web.subscription_rules import (
    DEFAULT_MAX_IN_FLIGHT,
    MAX_POSITION,
    MAX_TYPES,
    name_problem,
    parse_time,
    type_problem,
)

NOTICES = {
    "paused": "Paused: events still queue up for it, and nothing is sent until it is resumed.",
    "active": "Resumed: what waited is due now.",
    "replay": "Replay scheduled: the matching events after that point are delivered again.",
}
CREATE_FIELDS = ("name", "url", "types", "include_test", "start", "start_time")


class SubscriptionPages(Controller):
    path = "/subscriptions"

    @get("/")
    async def subscriptions_page(
        self,
        request: Request[Any, Any, State],
        session: NamedDependency[Session],
        engine: NamedDependency[AsyncEngine],
    ) -> Template:
        return await _page(
            engine,
            session,
            notice=NOTICES.get(request.query_params.get("notice") or ""),
            changed=request.query_params.get("name"),
        )

    @post("/", status_code=201)
    async def create(
        self,
        request: Request[Any, Any, State],
        session: NamedDependency[Session],
        engine: NamedDependency[AsyncEngine],
        settings: NamedDependency[Settings],
    ) -> Template:
        form = await checked_form(request, session, admin=True)
        typed = {f: str(form.get(f) or "").strip() for f in CREATE_FIELDS}
        typed["start"] = typed["start"] or "now"
        problem, status = await _create_problem(typed, settings), 400
        if problem is None:
            secret = new_secret()
            async with engine.begin() as conn:
                start: store.Start = "beginning" if typed["start"] == "beginning" else "now"
                if typed["start"] == "time":
                    since = parse_time(as_rfc3339(typed["start_time"]))
                    assert isinstance(since, datetime)  # checked by _create_problem
                    start = await store.position_before(conn, since)
                created = await store.create_subscription(
                    conn,
                    name=typed["name"],
                    url=typed["url"],
                    types=list(dict.fromkeys(split_types(typed["types"]))),
                    include_test=typed["include_test"] == "true",
                    max_in_flight=DEFAULT_MAX_IN_FLIGHT,
                    secret=secret,
                    start=start,
                )
                if created:
                    await store.notify_changed(conn)
            if created:
                return page(
                    "subscription_secret.html",
                    session,
                    status_code=201,
                    nav="subscriptions",
                    subscription=typed["name"],
                    secret=format_secret(secret),
                    created=True,
                    until=None,
                )
            problem, status = f"name: a subscription named {typed['name']!r} exists", 409
        return await _page(engine, session, status_code=status, problem=problem, typed=typed)

    @post("/{name:str}/state", status_code=303)
    async def change_state(
        self,
        request: Request[Any, Any, State],
        session: NamedDependency[Session],
        engine: NamedDependency[AsyncEngine],
        name: FromPath[str],
    ) -> Redirect:
        form = await checked_form(request, session, admin=True)
        state = form.get("state")
        if state not in ("active", "paused"):
            raise ConsoleError(status_code=400, detail="state: must be active (resume) or paused")
        async with engine.begin() as conn:
            if not await store.update_subscription(conn, name, state=state):
                raise _missing(name)
            await store.notify_changed(conn)
        return _back(state, name)

    @post("/{name:str}/replay", status_code=303)
    async def replay(
        self,
        request: Request[Any, Any, State],
        session: NamedDependency[Session],
        engine: NamedDependency[AsyncEngine],
        name: FromPath[str],
    ) -> Redirect:
        form = await checked_form(request, session, admin=True)
        after_value = str(form.get("after") or "").strip()
        since_value = str(form.get("since") or "").strip()
        if bool(after_value) == bool(since_value):
            raise ConsoleError(
                status_code=400,
                detail="Replay: give exactly one of after (a position) or since (a time).",
            )
        since: datetime | None = None
        after = 0
        if after_value:
            if not after_value.isdigit() or int(after_value) > MAX_POSITION:
                raise ConsoleError(
                    status_code=400,
                    detail=f"after: must be a whole number from 0 to {MAX_POSITION}",
                )
            after = int(after_value)
        else:
            parsed = parse_time(as_rfc3339(since_value))
            if isinstance(parsed, str):
                raise ConsoleError(status_code=400, detail=f"since: {parsed}")
            since = parsed
        async with engine.begin() as conn:
            if since is not None:
                after = await store.position_before(conn, since)
            if not await store.replay(conn, name, after):
                raise _missing(name)
            await store.notify_changed(conn)
        return _back("replay", name)

    @post("/{name:str}/rotate-secret", status_code=200)
    async def rotate(
        self,
        request: Request[Any, Any, State],
        session: NamedDependency[Session],
        engine: NamedDependency[AsyncEngine],
        settings: NamedDependency[Settings],
        name: FromPath[str],
    ) -> Template:
        await checked_form(request, session, admin=True)
        secret = new_secret()
        async with engine.begin() as conn:
            until = await store.rotate_secret(
                conn, name, secret, settings.subscription_secret_grace_s
            )
            if until is None:
                raise _missing(name)
            await store.notify_changed(conn)
        return page(
            "subscription_secret.html",
            session,
            nav="subscriptions",
            subscription=name,
            secret=format_secret(secret),
            created=False,
            until=until,
        )


async def _page(
    engine: AsyncEngine, session: Session, status_code: int = 200, **context: Any
) -> Template:
    async with engine.connect() as conn:
        views = await store.list_subscriptions(conn)
    context.setdefault("typed", {"start": "now"})
    return page(
        "subscriptions.html",
        session,
        status_code=status_code,
        subscriptions=views,
        outcomes=store.OUTCOMES,
        **context,
    )


async def _create_problem(typed: dict[str, str], settings: Settings) -> str | None:
    """What is wrong with the create form as typed (the first thing), or None."""
    problem = name_problem(typed["name"])
    if problem:
        return f"name: {problem}"
    types = split_types(typed["types"])
    if len(types) > MAX_TYPES:
        return f"types: at most {MAX_TYPES}"
    for pattern in types:
        problem = type_problem(pattern)
        if problem:
            return f"types: {problem}"
    if typed["start"] not in ("now", "beginning", "time"):
        return "start: must be now, the beginning, or a time"
    if typed["start"] == "time":
        since = parse_time(as_rfc3339(typed["start_time"]))
        if isinstance(since, str):
            return f"start time: {since}"
    if not typed["url"]:
        return "url: required"
    problem = await check_url(typed["url"], allow_private=settings.subscription_allow_private_urls)
    return f"url: {problem}" if problem else None


def _missing(name: str) -> ConsoleError:
    return ConsoleError(status_code=404, detail=f"No subscription named {name!r}.")


def _back(notice: str, name: str) -> Redirect:
    query = urlencode({"notice": notice, "name": name})
    return Redirect(f"/ui/subscriptions?{query}#sub-{name}", status_code=303)
