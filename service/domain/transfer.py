"""The transfers projection, as a pure fold (no I/O): a transfer is its newest event.

Every field comes from the newest `transfer.*` event by `created_at`, then id; `sql.py`
implements the same set-based.
"""

from __future__ import annotations

import msgspec

from service.domain.event import Key, ProjectedEvent, newer

FIELDS = (
    "type",
    "status",
    "profile_id",
    "ref_id",
    "crypto_network",
    "crypto_tx_hash",
    "crypto_tx_index",
    "memo",
)


class TransferState(msgspec.Struct, frozen=True):
    """A transfer's latest state."""

    transfer_id: str
    fields: dict[str, str | None]
    last: Key
    last_event_type: str
    last_event_time: str
    events_count: int


def subject_of(event: ProjectedEvent, prefix: str) -> str | None:
    """The object's `id` for events of `prefix` (the transfer or orchestration id)."""
    return event.text("id") if event.type.startswith(prefix) else None


def apply(state: TransferState | None, event: ProjectedEvent) -> TransferState | None:
    """`state` after `event`; events of other transfers or other kinds change nothing."""
    transfer_id = subject_of(event, "transfer.")
    key = event.key
    if transfer_id is None or key is None or (state and state.transfer_id != transfer_id):
        return state
    count = (state.events_count if state else 0) + 1
    if state is not None and not newer(key, state.last):
        return msgspec.structs.replace(state, events_count=count)
    fields = {name: event.text(name) for name in FIELDS}
    return TransferState(transfer_id, fields, key, event.type, event.created_at, count)
