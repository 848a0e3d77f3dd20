"""The event-type label of the metrics: Paxos's documented types each, everything else one."""

from __future__ import annotations

import pytest

from service.domain.notification import KNOWN_TYPES
from service.simulator.universe import ALL_TYPES
from service.telemetry.metrics import type_label

# The same on every PostgreSQL: CI runs these on one server only.
pytestmark = pytest.mark.server_independent


def test_the_known_types_are_paxos_s_documented_list() -> None:
    assert len(KNOWN_TYPES) == len(set(KNOWN_TYPES)) == 59
    # The simulator plays every type Paxos documents (PAXOS.md §3), and no other.
    assert set(KNOWN_TYPES) == set(ALL_TYPES)


@pytest.mark.parametrize("event_type", ["identity.approved", "transfer.rtp_deposit.failed"])
def test_a_known_type_is_its_own_label(event_type: str) -> None:
    assert type_label(event_type) == event_type


@pytest.mark.parametrize(
    "event_type",
    ["identity.approved2", "identity.x", "transfer.", "orchestration.done", "account.created"],
)
def test_any_other_type_is_other(event_type: str) -> None:
    assert type_label(event_type) == "other"
