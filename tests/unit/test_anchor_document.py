"""The anchor document's exact bytes (docs/audit.md), and its parsing back."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from service.domain.anchor import Anchor, anchor_name, decode, encode

ANCHOR = Anchor(
    seal_id=3,
    first_position=9,
    last_position=11,
    seal_hash="ab" * 32,
    signature="cd" * 64,
    key_id="ef" * 32,
    anchored_at=datetime(2026, 12, 4, 23, 50, 0, 1, tzinfo=UTC),
)


def test_the_document_is_sorted_compact_json_with_one_newline() -> None:
    assert (
        encode(ANCHOR)
        == (
            '{"anchored_at":"2026-12-04T23:50:00.000001Z","first_position":9,'
            '"format":"paxos-events-anchor/1","key_id":"' + "ef" * 32 + '","last_position":11,'
            '"seal_hash":"' + "ab" * 32 + '","seal_id":3,"signature":"' + "cd" * 64 + '",'
            '"timestamp_token":null}\n'
        ).encode()
    )
    assert decode(encode(ANCHOR)) == ANCHOR
    assert ANCHOR.name == anchor_name(3) == "seal-000000000003.json"


@pytest.mark.parametrize(
    "data",
    [b"", b"[]", b'{"format":"something-else/1"}', b'{"format":"paxos-events-anchor/1"}'],
)
def test_anything_else_is_not_an_anchor(data: bytes) -> None:
    with pytest.raises(ValueError, match="not an anchor document"):
        decode(data)
