"""The identities projection, as a pure fold: `apply(state, event) -> state` (no I/O).

This is the specification `store/projections/fold.py` implements set-based; a property test
checks that the two agree for any events in any order and batching. DESIGN.md §3:
`summary_status` is the `new_summary_status` of the newest status change;
`required_documents` comes from the newest `identity.documents_required`; `kyc_refresh.state`
is `started`, `completed` or `expired` from the newest KYC-refresh event (its dates too);
`controls` are those whose newest event is a `created`; "newest" is by Paxos `created_at`,
ties broken by event id. Each field group keeps the key of the event that set it, so an older
event arriving late changes nothing.
"""

from __future__ import annotations

from typing import Any

import msgspec

from service.domain.event import Key, ProjectedEvent, newer

PREFIX = "identity."
KYC_PREFIX = "identity.kyc_refresh."
CONTROL_CREATED = "identity.control.created"
CONTROL_DELETED = "identity.control.deleted"
DOCUMENTS_REQUIRED = "identity.documents_required"
# The object fields this fold reads, by the events it reads them of (`ProjectedEvent.text` /
# `flag`, `documents_of`): a pattern ending in "." is a type prefix, any other an exact type.
# What the journal keeps parsed of full events (`domain.history.FOLDED_FIELDS`).
FIELDS_READ: tuple[tuple[str, tuple[str, ...]], ...] = (
    (PREFIX, ("identity_id", "new_summary_status")),
    (DOCUMENTS_REQUIRED, ("required_documents",)),
    (KYC_PREFIX, ("last_kyc_refresh_date", "next_kyc_refresh_date")),
    *(
        (control, ("control_id", "control_type", "set_by", "is_overridable", "reason_code"))
        for control in (CONTROL_CREATED, CONTROL_DELETED)
    ),
)


class Control(msgspec.Struct, frozen=True):
    """A control's state from its newest event; active unless that event is a deletion."""

    control_id: str
    deleted: bool
    control_type: str | None
    set_by: str | None
    is_overridable: bool | None
    reason_code: str | None
    created_at: str  # the newest event's created_at: when the control was (re)set
    key: Key


class IdentityState(msgspec.Struct, frozen=True):
    """Everything the projection knows about one identity."""

    identity_id: str
    last: Key
    last_event_type: str
    last_event_time: str
    events_count: int = 0
    summary_status: str | None = None
    status_key: Key | None = None
    required_documents: tuple[str, ...] | None = None
    documents_key: Key | None = None
    kyc_state: str | None = None
    kyc_last_refresh_at: str | None = None
    kyc_next_refresh_at: str | None = None
    kyc_key: Key | None = None
    controls: tuple[Control, ...] = ()  # every control ever seen, sorted by control_id

    @property
    def active_controls(self) -> tuple[Control, ...]:
        """The controls created and not since deleted."""
        return tuple(c for c in self.controls if not c.deleted)


def identity_of(event: ProjectedEvent) -> str | None:
    """The identity an event changes: identity events whose object names one."""
    if not event.type.startswith(PREFIX):
        return None
    return event.text("identity_id")


def documents_of(event: ProjectedEvent) -> tuple[str, ...]:
    """The required documents an event lists (strings only; anything else is ignored)."""
    value = event.object.get("required_documents") if isinstance(event.object, dict) else None
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


def apply(state: IdentityState | None, event: ProjectedEvent) -> IdentityState | None:
    """`state` after `event` (None: no identity yet, and the event does not make one).

    Events that are not about an identity, or whose time cannot be read, change nothing.
    """
    identity_id = identity_of(event)
    key = event.key
    if identity_id is None or key is None or (state and state.identity_id != identity_id):
        return state
    if state is None:
        state = IdentityState(identity_id, key, event.type, event.created_at)
    changes: dict[str, Any] = {"events_count": state.events_count + 1}
    if newer(key, state.last):
        changes.update(last=key, last_event_type=event.type, last_event_time=event.created_at)
    if event.text("new_summary_status") is not None and newer(key, state.status_key):
        changes.update(summary_status=event.text("new_summary_status"), status_key=key)
    if event.type == DOCUMENTS_REQUIRED and newer(key, state.documents_key):
        changes.update(required_documents=documents_of(event), documents_key=key)
    if event.type.startswith(KYC_PREFIX) and newer(key, state.kyc_key):
        changes.update(
            kyc_state=event.type.removeprefix(KYC_PREFIX),
            kyc_last_refresh_at=event.text("last_kyc_refresh_date"),
            kyc_next_refresh_at=event.text("next_kyc_refresh_date"),
            kyc_key=key,
        )
    control_id = event.text("control_id")
    if event.type in (CONTROL_CREATED, CONTROL_DELETED) and control_id is not None:
        controls = {c.control_id: c for c in state.controls}
        known = controls.get(control_id)
        if newer(key, known.key if known else None):
            controls[control_id] = Control(
                control_id=control_id,
                deleted=event.type == CONTROL_DELETED,
                control_type=event.text("control_type"),
                set_by=event.text("set_by"),
                is_overridable=event.flag("is_overridable"),
                reason_code=event.text("reason_code"),
                created_at=event.created_at,
                key=key,
            )
            changes["controls"] = tuple(controls[c] for c in sorted(controls))
    return msgspec.structs.replace(state, **changes)
