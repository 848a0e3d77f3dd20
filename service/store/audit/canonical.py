"""The canonical forms an auditor re-implements (docs/audit.md): a journal row's hash
and a seal's hash.

Row hash: SHA-256 over the UTF-8 bytes of

    position "\\n" event_id "\\n" kind "\\n" recorded_at "\\n" body

with `position` in decimal, `event_id` as lowercase hyphenated hex, `recorded_at` in UTC as
`YYYY-MM-DDTHH:MM:SS.ffffffZ` (always six fraction digits), and `body` the JSON text exactly as
stored (`body::text`: the bytes received, never re-serialised).

Seal hash: SHA-256 over `prev_hash (32 bytes) || first_position || last_position ||
rows_digest`, positions as 8-byte big-endian signed integers, `rows_digest` the concatenation
in position order of `position (8 bytes) || row hash (32 bytes)` for every row in the range.
The first seal's prev_hash is 32 zero bytes.

The service hashes rows in SQL (`ROW_HASH_SQL`, so the bodies never leave the database when
sealing or verifying); `row_hash` here is the same definition in Python, and a test checks
that the two agree on awkward rows (non-ASCII, escapes, odd spacing).
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

GENESIS_HASH = bytes(32)
HASH_BYTES = 32
ENTRY_BYTES = 8 + HASH_BYTES


def row_hash_sql(alias: str) -> str:
    """The row hash in SQL, for the journal row aliased `alias`."""
    a = alias
    return (
        "sha256(convert_to("
        f"{a}.position::text || E'\\n' || {a}.event_id::text || E'\\n' || {a}.kind || E'\\n' || "
        f"to_char({a}.recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') || "
        f"E'\\n' || {a}.body::text, 'UTF8'))"
    )


ROW_HASH_SQL = row_hash_sql("j")


def canonical_time(moment: datetime) -> str:
    """`recorded_at` as the row hash spells it: UTC, six fraction digits, `Z`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def row_hash(
    position: int, event_id: uuid.UUID, kind: str, recorded_at: datetime, body: str
) -> bytes:
    """The canonical hash of one journal row (see the module docstring)."""
    text = f"{position}\n{event_id}\n{kind}\n{canonical_time(recorded_at)}\n{body}"
    return hashlib.sha256(text.encode("utf-8")).digest()


def pack_rows(rows: Iterable[tuple[int, bytes]]) -> bytes:
    """`rows_digest`: (position, row hash) pairs, in position order."""
    return b"".join(struct.pack(">q", position) + digest for position, digest in rows)


def unpack_rows(digest: bytes) -> Iterator[tuple[int, bytes]]:
    """The (position, row hash) pairs of a `rows_digest`; ValueError if it is malformed."""
    if len(digest) % ENTRY_BYTES:
        raise ValueError(f"rows_digest is {len(digest)} bytes, not a multiple of {ENTRY_BYTES}")
    for offset in range(0, len(digest), ENTRY_BYTES):
        (position,) = struct.unpack_from(">q", digest, offset)
        yield position, digest[offset + 8 : offset + ENTRY_BYTES]


def seal_hash(
    prev_hash: bytes, first_position: int, last_position: int, rows_digest: bytes
) -> bytes:
    """The canonical hash of a seal (see the module docstring)."""
    header = prev_hash + struct.pack(">qq", first_position, last_position)
    return hashlib.sha256(header + rows_digest).digest()
