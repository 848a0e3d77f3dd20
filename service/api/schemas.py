"""Response shapes of the read API (DESIGN.md §3)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import msgspec

from service.domain.stored import Event


class EventPage(msgspec.Struct, frozen=True):
    items: list[Event]
    next_cursor: str | None


class KycRefresh(msgspec.Struct, frozen=True):
    state: str | None  # started | completed | expired, from the newest KYC-refresh event
    last_refresh_at: str | None
    next_refresh_at: str | None


class Control(msgspec.Struct, frozen=True):
    control_id: str
    control_type: str | None
    set_by: str | None
    is_overridable: bool | None
    reason_code: str | None
    created_at: str  # Paxos's created_at of the event that set it, as Paxos wrote it


class Identity(msgspec.Struct, frozen=True):
    identity_id: str
    summary_status: str | None
    required_documents: list[str]
    kyc_refresh: KycRefresh
    controls: list[Control]
    last_event_id: uuid.UUID
    last_event_type: str
    last_event_time: str  # RFC 3339 as Paxos wrote it (nanoseconds kept)
    events_count: int
    updated_at: datetime
    # Only in a time-travelled answer (?as_of=, ?known_at=): the bounds it was folded under.
    as_of: datetime | None | msgspec.UnsetType = msgspec.UNSET
    known_at: datetime | None | msgspec.UnsetType = msgspec.UNSET


class IdentityPage(msgspec.Struct, frozen=True):
    items: list[Identity]
    next_cursor: str | None


class Transfer(msgspec.Struct, frozen=True):
    transfer_id: str
    type: str | None
    status: str | None
    profile_id: str | None
    ref_id: str | None
    crypto_network: str | None
    crypto_tx_hash: str | None
    crypto_tx_index: str | None
    memo: str | None
    last_event_id: uuid.UUID
    last_event_type: str
    last_event_time: str
    events_count: int
    updated_at: datetime
    # Only in a time-travelled answer (?as_of=, ?known_at=): the bounds it was folded under.
    as_of: datetime | None | msgspec.UnsetType = msgspec.UNSET
    known_at: datetime | None | msgspec.UnsetType = msgspec.UNSET


class TransferPage(msgspec.Struct, frozen=True):
    items: list[Transfer]
    next_cursor: str | None


class Orchestration(msgspec.Struct, frozen=True):
    orchestration_id: str
    status: str | None
    ref_id: str | None
    orchestration_rule_id: str | None
    last_event_id: uuid.UUID
    last_event_type: str
    last_event_time: str
    events_count: int
    updated_at: datetime
    # Only in a time-travelled answer (?as_of=, ?known_at=): the bounds it was folded under.
    as_of: datetime | None | msgspec.UnsetType = msgspec.UNSET
    known_at: datetime | None | msgspec.UnsetType = msgspec.UNSET


class RebuildStarted(msgspec.Struct, frozen=True):
    job_id: uuid.UUID


class FeedItem(msgspec.Struct, frozen=True):
    position: int  # the journal row's position: pass the last one back as `after`
    event: Event  # as GET /events/{id} answers it, detail included


class FeedPage(msgspec.Struct, frozen=True):
    items: list[FeedItem]
    next_after: int  # where to read on from (past rows that filters dropped, too)


# --- history: the state after each event (GET /identities/{id}/history, ...) ---------------


class HistoryEvent(msgspec.Struct, frozen=True):
    id: uuid.UUID
    type: str
    time: str  # Paxos's created_at, as Paxos wrote it (nanoseconds kept)
    recorded_at: datetime  # when the store recorded the full event (the journal's)
    via: str  # webhook | list_events


class HistoryChange(msgspec.Struct, frozen=True):
    field: str  # as the state names it (kyc_refresh.state); `controls`: one control
    from_: Any = msgspec.field(name="from")
    to: Any


class IdentityHistoryEntry(msgspec.Struct, frozen=True):
    event: HistoryEvent
    changed: bool
    changes: list[HistoryChange]
    state: Identity


class IdentityHistory(msgspec.Struct, frozen=True):
    items: list[IdentityHistoryEntry]
    next_cursor: str | None


class TransferHistoryEntry(msgspec.Struct, frozen=True):
    event: HistoryEvent
    changed: bool
    changes: list[HistoryChange]
    state: Transfer


class TransferHistory(msgspec.Struct, frozen=True):
    items: list[TransferHistoryEntry]
    next_cursor: str | None


class OrchestrationHistoryEntry(msgspec.Struct, frozen=True):
    event: HistoryEvent
    changed: bool
    changes: list[HistoryChange]
    state: Orchestration


class OrchestrationHistory(msgspec.Struct, frozen=True):
    items: list[OrchestrationHistoryEntry]
    next_cursor: str | None
