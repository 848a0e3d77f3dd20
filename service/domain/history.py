"""Time travel, as pure folds (no I/O): a subject's state from any subset of its events, and
the state after each of them with what it changed.

The folds are the projections' own (`identity.apply`, `latest.apply` through `transfer` and
`orchestration`), fed in the documented order: Paxos `created_at` to the nanosecond, ties
broken by event id (`event.Key`). Folded in that order, each event is the newest so far, so
the state after it is what the projection held once it had applied that event and those before
it; a property test holds `fold` over all of a subject's events to the projection's row.

A state is shown as the store's rows are (`store/projections/read.py`: `get_identity`,
`get_transfer`, `get_orchestration`), so the API and the console map both alike. `updated_at`,
which in a projection row says when it was last written, is here when the store recorded the
latest-recorded of the events folded: when it could first have known that state.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from service.domain import identity, latest, orchestration, transfer
from service.domain.event import Key, ProjectedEvent
from service.domain.identity import IdentityState
from service.domain.latest import LatestState

KINDS = ("identities", "transfers", "orchestrations")
# The object fields the folds read, by the events they read them of (a pattern ending in "."
# is a type prefix, any other an exact type; an event's fields are those of every pattern it
# matches): the subject's `id` (transfers, orchestrations) and each fold's own.
FOLDED_FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    *identity.FIELDS_READ,
    (transfer.PREFIX, ("id", *transfer.FIELDS)),
    (orchestration.PREFIX, ("id", *orchestration.FIELDS)),
)
# Of a full event, the journal keeps parsed (its `doc`) only what the folds read, as a JSON
# array: `[type, created_at, *values]`, the values those of the fields of the layout of the
# event's family, in order, each the object's value where a fold reads that field of an event
# of its type (FOLDED_FIELDS) and null otherwise, trailing nulls dropped. No keys: they were
# a third of it. A test holds every fold over full events to the same fold over these.
LAYOUTS: dict[str, tuple[str, ...]] = {
    identity.PREFIX: tuple(dict.fromkeys(f for _, names in identity.FIELDS_READ for f in names)),
    transfer.PREFIX: ("id", *transfer.FIELDS),
    orchestration.PREFIX: ("id", *orchestration.FIELDS),
}
DOC_VALUES = 2  # the first value's index in a doc (after type and created_at)


def layout_of(event_type: str) -> tuple[str, ...]:
    """The fields a doc of an event of `event_type` holds values of, in order."""
    return next((f for prefix, f in LAYOUTS.items() if event_type.startswith(prefix)), ())


def unpack(doc: Any) -> tuple[Any, Any, Any]:
    """A journal doc's type, created_at and object (the fields it holds; any type and time,
    unchecked); None for all three when it is not a doc."""
    if not isinstance(doc, list) or len(doc) < DOC_VALUES:
        return None, None, None
    type_, created_at, values = doc[0], doc[1], doc[DOC_VALUES:]
    fields = layout_of(type_) if isinstance(type_, str) else ()
    obj = {name: v for name, v in zip(fields, values, strict=False) if v is not None}
    return type_, created_at, obj


State = IdentityState | LatestState


class Recorded(msgspec.Struct, frozen=True):
    """A full event as the store holds it: the event, when the store recorded it (the
    journal's `recorded_at`), how it learned of it (`webhook` or `list_events`), and its
    place in the order (`event.key`, read once: `of`)."""

    event: ProjectedEvent
    recorded_at: datetime
    via: str
    key: Key | None

    @classmethod
    def of(cls, event: ProjectedEvent, recorded_at: datetime, via: str) -> Recorded:
        return cls.parsed(event.id, event.type, event.created_at, event.object, recorded_at, via)

    @classmethod
    def parsed(
        cls,
        event_id: uuid.UUID,
        type_: str,
        created_at: str,
        obj: Any,
        recorded_at: datetime,
        via: str,
    ) -> Recorded:
        """A recorded event from its parts (the store's rows), its key read once."""
        key = ProjectedEvent(event_id, type_, created_at).key
        return cls(
            _KeyedEvent(event_id, type_, created_at, obj, known_key=key), recorded_at, via, key
        )


class _KeyedEvent(ProjectedEvent, frozen=True):
    """A `ProjectedEvent` whose key was read once: the folds ask for it again (reading
    `created_at` was a third of a 200-event history's time)."""

    known_key: Key | None = None

    @property
    def key(self) -> Key | None:
        return self.known_key


class Change(msgspec.Struct, frozen=True):
    """One field an event changed, named as the API shows it (`kyc_refresh.state`); for
    `controls`, one control (`before` None: added; `after` None: removed)."""

    field: str
    before: Any
    after: Any


class Entry(msgspec.Struct, frozen=True):
    """A subject's state after one event, and what that event changed."""

    recorded: Recorded
    key: Key
    state: dict[str, Any]
    changes: tuple[Change, ...]

    @property
    def changed(self) -> bool:
        return bool(self.changes)


@dataclass(frozen=True, slots=True)
class _Kind:
    subject_key: str  # the row's id column
    subject_of: Callable[[ProjectedEvent], str | None]
    apply: Callable[[Any, ProjectedEvent], Any]
    fields: Sequence[str]  # for transfers and orchestrations: the object's fields kept


_KINDS = {
    "identities": _Kind("identity_id", identity.identity_of, identity.apply, ()),
    "transfers": _Kind(
        "transfer_id",
        lambda e: latest.subject_of(e, transfer.PREFIX),
        transfer.apply,
        transfer.FIELDS,
    ),
    "orchestrations": _Kind(
        "orchestration_id",
        lambda e: latest.subject_of(e, orchestration.PREFIX),
        orchestration.apply,
        orchestration.FIELDS,
    ),
}


def _kind(kind: str) -> _Kind:
    try:
        return _KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown kind {kind!r}; known are {', '.join(KINDS)}") from None


def subject_of(kind: str, event: ProjectedEvent) -> str | None:
    """The subject of `kind` an event is about (its identity, transfer or orchestration)."""
    return _kind(kind).subject_of(event)


def ordered(events: Iterable[Recorded]) -> list[Recorded]:
    """The events the projections fold, in the documented order: each id once, readable
    `created_at` only (the projections ignore the others), by `created_at`, then id."""
    distinct: dict[uuid.UUID, tuple[Key, Recorded]] = {}
    for r in events:
        if r.key is not None:
            distinct.setdefault(r.event.id, (r.key, r))
    return [r for _, r in sorted(distinct.values(), key=_first)]


def _first(pair: tuple[Key, Recorded]) -> Key:
    return pair[0]


def row(kind: str, state: State, updated_at: datetime | None) -> dict[str, Any]:
    """A folded state in the shape of the store's row of it (`read.py`)."""
    last = {
        "last_event_id": state.last.event_id,
        "last_event_type": state.last_event_type,
        "last_event_time": state.last_event_time,
        "events_count": state.events_count,
        "updated_at": updated_at,
    }
    if isinstance(state, IdentityState):
        controls = [
            {
                "control_id": c.control_id,
                "control_type": c.control_type,
                "set_by": c.set_by,
                "is_overridable": c.is_overridable,
                "reason_code": c.reason_code,
                "created_at": c.created_at,
            }
            for c in state.active_controls
        ]
        return {
            "identity_id": state.identity_id,
            "summary_status": state.summary_status,
            "required_documents": (
                None if state.required_documents is None else list(state.required_documents)
            ),
            "kyc_state": state.kyc_state,
            "kyc_last_refresh_at": state.kyc_last_refresh_at,
            "kyc_next_refresh_at": state.kyc_next_refresh_at,
            **last,
            "controls": controls,
        }
    return {_kind(kind).subject_key: state.subject_id, **state.fields, **last}


def fold(events: Iterable[Recorded], kind: str, subject_id: str) -> dict[str, Any] | None:
    """The row of `subject_id` folded from `events` (any of them; others' are skipped), or
    None when none of them makes one."""
    spec = _kind(kind)
    state: State | None = None
    updated_at: datetime | None = None
    for r in ordered(events):
        if spec.subject_of(r.event) != subject_id:
            continue
        state = spec.apply(state, r.event)
        if state is not None:
            updated_at = r.recorded_at if updated_at is None else max(updated_at, r.recorded_at)
    return None if state is None else row(kind, state, updated_at)


# The fields an event can change, as the API names them, and where each is in a row.
_IDENTITY_FIELDS = {
    "summary_status": "summary_status",
    "required_documents": "required_documents",
    "kyc_refresh.state": "kyc_state",
    "kyc_refresh.last_refresh_at": "kyc_last_refresh_at",
    "kyc_refresh.next_refresh_at": "kyc_next_refresh_at",
}


def _shown(kind: str, state: dict[str, Any] | None) -> dict[str, Any]:
    """What the API shows of a row's fields that events change (bookkeeping aside: the
    last event and the count change with every event)."""
    state = state or {}  # before the first event: nothing set
    if kind == "identities":
        shown = {name: state.get(column) for name, column in _IDENTITY_FIELDS.items()}
        # The API shows "never required" and "none required" alike: [].
        shown["required_documents"] = list(shown["required_documents"] or [])
        return shown
    return {name: state.get(name) for name in _kind(kind).fields}


def changes(kind: str, before: dict[str, Any] | None, after: dict[str, Any]) -> list[Change]:
    """What differs between two rows of a subject, field by field in the API's order (and
    control by control, in control id order). `before` None: the subject's first event."""
    old, new = _shown(kind, before), _shown(kind, after)
    out = [Change(name, old[name], value) for name, value in new.items() if old[name] != value]
    if kind == "identities" and (before or {}).get("controls", []) != after.get("controls", []):
        was = {c["control_id"]: c for c in (before or {}).get("controls", [])}
        now = {c["control_id"]: c for c in after.get("controls", [])}
        for control_id in sorted(was.keys() | now.keys()):
            if was.get(control_id) != now.get(control_id):
                out.append(Change("controls", was.get(control_id), now.get(control_id)))
    return out


def history(events: Iterable[Recorded], kind: str, subject_id: str) -> list[Entry]:
    """The state of `subject_id` after each of its events, oldest first (the documented order),
    with what each changed; events of other subjects are skipped."""
    spec = _kind(kind)
    entries: list[Entry] = []
    state: State | None = None
    before: dict[str, Any] | None = None
    updated_at: datetime | None = None
    for r in ordered(events):
        if spec.subject_of(r.event) != subject_id:
            continue
        state = spec.apply(state, r.event)
        key = r.key
        if state is None or key is None:  # neither happens after `ordered`; kept total
            continue
        updated_at = r.recorded_at if updated_at is None else max(updated_at, r.recorded_at)
        after = row(kind, state, updated_at)
        entries.append(Entry(r, key, after, tuple(changes(kind, before, after))))
        before = after
    return entries
