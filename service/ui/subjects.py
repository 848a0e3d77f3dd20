"""What the identity and transfer pages share: their list filters, the "as of" form, and the
history as a timeline (time travel: service/store/projections/history.py)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypedDict
from urllib.parse import urlencode

from litestar.datastructures import MultiDict
from litestar.response import Template
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.domain.event import Key
from service.store.projections import history as time_travel
from service.store.projections import read
from service.ui.forms import as_rfc3339
from service.ui.pages import PAGE_SIZE, page
from service.ui.session import Session
from service.ui.timeline import describe
from service.web.subscription_rules import parse_time

TIMELINE_PAGE = 100
AS_OF_FIELDS = ("as_of", "known_at")
CHANGED = ("changed_since", "changed_until")  # the list pages' time range


@dataclass
class Form:
    """A GET form's fields as typed, each problem beside its field, and what they mean."""

    typed: dict[str, str]
    problems: dict[str, str] = field(default_factory=dict)
    times: dict[str, datetime | None] = field(default_factory=dict)

    @property
    def problem(self) -> str | None:
        """All the problems in a line (the page's alert)."""
        return "; ".join(f"{k}: {v}" for k, v in self.problems.items()) or None

    @property
    def filled(self) -> list[tuple[str, str]]:
        """The fields given, as a query string's pairs (for the links that keep them)."""
        return [(k, v) for k, v in self.typed.items() if v]

    def next_page(self, path: str, last_id: str) -> str:
        """The list page after the row `last_id`, with the same filters."""
        return f"{path}?" + urlencode([*self.filled, ("after", last_id)])


def read_form(params: MultiDict[Any], names: tuple[str, ...], times: tuple[str, ...]) -> Form:
    """The fields `names` as typed; those in `times` read as UTC times (datetime-local)."""
    form = Form({n: str(params.get(n) or "").strip() for n in names})
    for name in times:
        value = form.typed.get(name, "")
        if not value:
            form.times[name] = None
            continue
        parsed = parse_time(as_rfc3339(value))
        if isinstance(parsed, str):
            form.problems[name] = parsed
            form.times[name] = None
        else:
            form.times[name] = parsed
    return form


class Window(TypedDict):
    """What every list page asks of its rows besides its own filters: the time range of their
    last change, and the page (after the row `after`)."""

    changed_since: datetime | None
    changed_until: datetime | None
    after: str | None
    limit: int


async def list_page(
    params: MultiDict[Any],
    session: Session,
    reader: AsyncEngine,
    *,
    nav: str,
    fields: tuple[str, ...],
    id_key: str,
    statuses: tuple[str, ...],
    fetch: Callable[[AsyncConnection, Form, Window], Awaitable[read.Page]],
) -> Template:
    """A list page (`/ui/{nav}`, template `{nav}.html`): its filter form (`fields`, the time
    range among them), a page of rows as `fetch` finds them by the form's own filters within
    the `Window`, keyset paged by `id_key`; 400 with the form's problems and no rows."""
    form = read_form(params, fields, CHANGED)
    after = params.get("after") or None
    rows: list[dict[str, Any]] = []
    next_url = None
    if not form.problems:
        window = Window(
            changed_since=form.times["changed_since"],
            changed_until=form.times["changed_until"],
            after=after,
            limit=PAGE_SIZE,
        )
        async with reader.connect() as conn:
            found = await fetch(conn, form, window)
        rows = found.rows
        if found.more:
            next_url = form.next_page(f"/ui/{nav}", rows[-1][id_key])
    return page(
        f"{nav}.html",
        session,
        status_code=400 if form.problems else 200,
        nav=nav,
        form=form,
        rows=rows,
        next_url=next_url,
        first_page=after is None,
        statuses=statuses,
    )


def encode_key(key: Key) -> str:
    """A timeline page's place, for a link (`ns.event_id`)."""
    return f"{key.ns}.{key.event_id}"


def decode_key(value: str) -> Key | None:
    """A place from `encode_key`, or None if it is not one."""
    ns, _, event_id = value.partition(".")
    try:
        return Key(int(ns), uuid.UUID(event_id))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Line:
    """One event on a timeline: the event, what it changed, and whether it came after the
    chosen `as_of` (shown, but not part of that state)."""

    event_id: str
    type: str
    created_at: str
    recorded_at: datetime
    via: str
    changes: list[str]
    after_as_of: bool
    late: bool  # recorded more than a day after it happened (a reconciler or backfill find)


@dataclass(frozen=True, slots=True)
class Timeline:
    lines: list[Line]
    next_url: str | None
    known: bool  # the store holds a real full event of the subject


async def timeline(
    conn: AsyncConnection,
    kind: str,
    subject_id: str,
    *,
    as_of: datetime | None,
    known_at: datetime | None,
    after: Key | None,
    base_url: str,
    query: list[tuple[str, str]],
) -> Timeline:
    """A page of the subject's history (oldest first), said in lines."""
    page = await time_travel.history_page(
        conn, kind, subject_id, known_at=known_at, after=after, limit=TIMELINE_PAGE
    )
    if page is None:
        return Timeline([], None, False)
    as_of_ns = None if as_of is None else time_travel.ns_of(as_of)
    lines = []
    for entry in page.entries:
        r = entry.recorded
        happened_ns = entry.key.ns
        lines.append(
            Line(
                event_id=str(r.event.id),
                type=r.event.type,
                created_at=r.event.created_at,
                recorded_at=r.recorded_at,
                via=r.via,
                changes=[describe(c) for c in entry.changes],
                after_as_of=as_of_ns is not None and happened_ns > as_of_ns,
                late=time_travel.ns_of(r.recorded_at) - happened_ns > 86_400 * 10**9,
            )
        )
    next_url = None
    if page.next_key is not None:
        next_url = f"{base_url}?" + urlencode([*query, ("after", encode_key(page.next_key))])
    return Timeline(lines, next_url, True)


@dataclass(frozen=True, slots=True)
class Travel:
    """A subject page's time travel: its "as of" form, the state asked for (None when no time
    is given: the page shows the current state) and the timeline."""

    form: Form
    then: dict[str, Any] | None
    timeline: Timeline

    @property
    def travelling(self) -> bool:
        return self.form.times["as_of"] is not None or self.form.times["known_at"] is not None

    def shown(self, current: dict[str, Any] | None) -> dict[str, Any] | None:
        """The state the page shows: the one asked for, else `current`."""
        return self.then if self.travelling else current


async def travel(
    conn: AsyncConnection, kind: str, subject_id: str, params: MultiDict[Any], base_url: str
) -> Travel:
    """The "as of" form of a subject's page, read from `params`, and what it asks for."""
    form = read_form(params, AS_OF_FIELDS, AS_OF_FIELDS)
    as_of, known_at = form.times["as_of"], form.times["known_at"]
    then = None
    if as_of is not None or known_at is not None:
        then = await time_travel.state_as_of(conn, kind, subject_id, as_of=as_of, known_at=known_at)
    history = await timeline(
        conn,
        kind,
        subject_id,
        as_of=as_of,
        known_at=known_at,
        after=decode_key(params.get("after") or ""),
        base_url=base_url,
        query=form.filled,
    )
    return Travel(form, then, history)
