"""The orchestrations projection, as a pure fold (no I/O): its newest event's state."""

from __future__ import annotations

import msgspec

from service.domain.event import Key, ProjectedEvent, newer
from service.domain.transfer import subject_of

FIELDS = ("status", "ref_id", "orchestration_rule_id")


class OrchestrationState(msgspec.Struct, frozen=True):
    """An orchestration's latest state."""

    orchestration_id: str
    fields: dict[str, str | None]
    last: Key
    last_event_type: str
    last_event_time: str
    events_count: int


def apply(state: OrchestrationState | None, event: ProjectedEvent) -> OrchestrationState | None:
    """`state` after `event`; events of other orchestrations or other kinds change nothing."""
    orchestration_id = subject_of(event, "orchestration.")
    key = event.key
    if orchestration_id is None or key is None:
        return state
    if state is not None and state.orchestration_id != orchestration_id:
        return state
    count = (state.events_count if state else 0) + 1
    if state is not None and not newer(key, state.last):
        return msgspec.structs.replace(state, events_count=count)
    fields = {name: event.text(name) for name in FIELDS}
    return OrchestrationState(orchestration_id, fields, key, event.type, event.created_at, count)
