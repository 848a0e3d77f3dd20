"""The transfers projection, as a pure fold (no I/O): a transfer is its newest event.

Every field comes from the newest `transfer.*` event by `created_at`, then id (`latest.py`).
"""

from __future__ import annotations

from service.domain import latest
from service.domain.event import ProjectedEvent
from service.domain.latest import LatestState

PREFIX = "transfer."
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


def apply(state: LatestState | None, event: ProjectedEvent) -> LatestState | None:
    """`state` after `event`; events of other transfers or other kinds change nothing."""
    return latest.apply(state, event, prefix=PREFIX, fields=FIELDS)
