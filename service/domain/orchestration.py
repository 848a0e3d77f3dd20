"""The orchestrations projection, as a pure fold (no I/O): its newest event's state.

Every field comes from the newest `orchestration.*` event by `created_at`, then id
(`latest.py`).
"""

from __future__ import annotations

from service.domain import latest
from service.domain.event import ProjectedEvent
from service.domain.latest import LatestState

PREFIX = "orchestration."
FIELDS = ("status", "ref_id", "orchestration_rule_id")


def apply(state: LatestState | None, event: ProjectedEvent) -> LatestState | None:
    """`state` after `event`; events of other orchestrations or other kinds change nothing."""
    return latest.apply(state, event, prefix=PREFIX, fields=FIELDS)
