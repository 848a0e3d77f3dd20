"""`paxos-events show`: an identity, transfer or orchestration on a terminal, now or as of a
time, as known at a time, and its history; straight from the store (no HTTP), through the
same functions and shapes as GET /identities/{id}[?as_of=&known_at=] and .../history."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from litestar.datastructures import MultiDict
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.api.projections import (
    Bounds,
    history_changes,
    history_event,
    identity_view,
    parse_bounds,
    state_at,
)
from service.api.schemas import HistoryChange, Orchestration, Transfer
from service.domain.history import Entry
from service.store.projections import history, read

KINDS = {"identity": "identities", "transfer": "transfers", "orchestration": "orchestrations"}
PAGE = 1000


def bounds(as_of: str | None, known_at: str | None) -> Bounds | None:
    """The times as the API reads them; `InvalidParameter` naming a bad one."""
    given = {name: v for name, v in (("as_of", as_of), ("known_at", known_at)) if v is not None}
    return parse_bounds(MultiDict(given))


def _view(kind: str, row: dict[str, Any]) -> Any:
    if kind == "identities":
        return identity_view(row)
    return Transfer(**row) if kind == "transfers" else Orchestration(**row)


async def _state(
    conn: AsyncConnection, kind: str, subject_id: str, when: Bounds | None
) -> dict[str, Any] | None:
    if when is not None:
        return await state_at(conn, kind, subject_id, when)
    current = {
        "identities": read.get_identity,
        "transfers": read.get_transfer,
        "orchestrations": read.get_orchestration,
    }[kind]
    return await current(conn, subject_id)


def _value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list | dict):
        return msgspec.json.encode(value).decode()
    return str(value)


def change_text(change: HistoryChange) -> str:
    """One change in words: `summary_status PENDING → APPROVED`, `control CLOSED added`."""
    if change.field == "controls":
        control = change.to or change.from_
        what = f"control {control.get('control_type') or control.get('control_id')}"
        if change.from_ is None:
            return f"{what} added"
        return f"{what} removed" if change.to is None else f"{what} changed"
    return f"{change.field} {_value(change.from_)} → {_value(change.to)}"


def history_line(entry: Entry) -> str:
    """An entry as a line: event time, type, id, how and when recorded, what changed."""
    event = history_event(entry)
    recorded = event.recorded_at.isoformat().replace("+00:00", "Z")
    changes = "; ".join(change_text(c) for c in history_changes(entry)) or "(no change)"
    return f"{event.time}  {event.type}  {event.id}  {event.via} {recorded}  {changes}"


async def _entries(
    conn: AsyncConnection, kind: str, subject_id: str, when: Bounds | None
) -> list[Entry]:
    known_at = when.known_at if when else None
    entries: list[Entry] = []
    after = None
    while True:
        page = await history.history_page(
            conn, kind, subject_id, known_at=known_at, after=after, limit=PAGE
        )
        if page is None:
            return entries
        entries += page.entries
        if page.next_key is None:
            return entries
        after = page.next_key


async def show(
    engine: AsyncEngine,
    noun: str,
    subject_id: str,
    when: Bounds | None,
    *,
    with_history: bool,
    as_json: bool,
    write: Callable[[str], None],
) -> bool:
    """Write the subject's state (and history); False, writing nothing, when it is unknown
    (or, with times, when no event of it qualifies)."""
    kind = KINDS[noun]
    async with engine.connect() as conn:
        row = await _state(conn, kind, subject_id, when)
        entries = await _entries(conn, kind, subject_id, when) if with_history else []
    if row is None:
        return False
    state = msgspec.to_builtins(_view(kind, row))
    if as_json:
        out: dict[str, Any] = {"state": state}
        if with_history:
            out["history"] = [
                {
                    "event": history_event(e),
                    "changed": e.changed,
                    "changes": history_changes(e),
                    "state": _view(kind, e.state),
                }
                for e in entries
            ]
        write(msgspec.json.encode(out).decode())
        return True
    at = [f"{n} {state[n]}" for n in ("as_of", "known_at") if state.get(n)]
    write(f"{noun} {subject_id}" + (f"  ({', '.join(at)})" if at else ""))
    for name, value in state.items():
        if name not in ("as_of", "known_at") and name != f"{noun}_id":
            write(f"  {name}: {_value(value)}")
    if with_history:
        write(f"history ({len(entries)} events, oldest first):")
        for entry in entries:
            write("  " + history_line(entry))
    return True
