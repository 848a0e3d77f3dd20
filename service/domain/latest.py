"""The fold of projections whose subject is its newest event (transfers, orchestrations).

Pure (no I/O). Every listed field comes from the subject's newest event of the kind, by
`created_at`, then id; older events only add to the count. The store's set-based fold
(`store/projections/fold.py`, `_latest_state`) implements the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from service.domain.event import Key, ProjectedEvent, newer


class LatestState(msgspec.Struct, frozen=True):
    """A subject's latest state: its newest event's fields, that event, and the count."""

    subject_id: str
    fields: dict[str, str | None]
    last: Key
    last_event_type: str
    last_event_time: str
    events_count: int


def subject_of(event: ProjectedEvent, prefix: str) -> str | None:
    """The object's `id` for events of `prefix` (the transfer or orchestration id)."""
    return event.text("id") if event.type.startswith(prefix) else None


def apply(
    state: LatestState | None, event: ProjectedEvent, *, prefix: str, fields: Sequence[str]
) -> LatestState | None:
    """`state` after `event`; events of other subjects or other kinds change nothing."""
    subject_id = subject_of(event, prefix)
    key = event.key
    if subject_id is None or key is None or (state and state.subject_id != subject_id):
        return state
    count = (state.events_count if state else 0) + 1
    if state is not None and not newer(key, state.last):
        return msgspec.structs.replace(state, events_count=count)
    values = {name: event.text(name) for name in fields}
    return LatestState(subject_id, values, key, event.type, event.created_at, count)
