"""Anchors' statements: the head to anchor, what each sink holds, its failures; and the check
of the anchors read back from the sinks against the seals (verify's `anchor_mismatch` and
`anchor_missing`).

One anchorer at a time across every process (ANCHOR_LOCK, a transaction advisory lock held
while the sinks are written: the transaction writes nothing before its last statements, so it
holds no transaction id and holds back no gap-safe reader).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from service.domain.anchor import Anchor
from service.store.audit.sinks import Sink

ANCHOR_LOCK = 0x7061786F735F616E  # "paxos_an"
# The RFC 3161 timestamp authority (AUDIT_TSA_URL) among the sinks: its failures, and each
# seal it timestamped (as an anchor "written" to it: the console's last success).
TSA_SINK = "tsa"


@dataclass(frozen=True, slots=True)
class HeadSeal:
    """The newest seal, as an anchor states it."""

    seal_id: int
    first_position: int
    last_position: int
    hash_hex: str
    signature_hex: str | None
    key_id: str | None
    sealed_at: datetime


@dataclass(frozen=True, slots=True)
class SinkStatus:
    """A sink's newest anchor and latest failure, for the console and /health/ready."""

    sink: str
    seal_id: int | None
    anchored_at: datetime | None
    age_s: float | None
    failures: int
    last_error: str | None
    failed_at: datetime | None
    # Seconds since the oldest seal not yet anchored to this sink was made (0: none).
    behind_s: float


async def try_lock(conn: AsyncConnection) -> bool:
    """Take the anchorer's lock for this transaction; False if another process holds it."""
    return bool(await conn.scalar(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": ANCHOR_LOCK}))


async def head_seal(conn: AsyncConnection) -> HeadSeal | None:
    """The newest seal with its signature, or None before the first."""
    row = (
        await conn.execute(
            text(
                "SELECT seal_id, first_position, last_position, hash, signature, key_id, "
                "sealed_at FROM seals ORDER BY seal_id DESC LIMIT 1"
            )
        )
    ).first()
    if row is None:
        return None
    return HeadSeal(
        row.seal_id,
        row.first_position,
        row.last_position,
        bytes(row.hash).hex(),
        bytes(row.signature).hex() if row.signature is not None else None,
        row.key_id,
        row.sealed_at,
    )


async def last_anchored(conn: AsyncConnection) -> dict[str, tuple[int, datetime]]:
    """Each sink's newest anchored seal id and when it was written."""
    rows = await conn.execute(
        text(
            "SELECT DISTINCT ON (sink) sink, seal_id, anchored_at FROM audit_anchors "
            "ORDER BY sink, seal_id DESC"
        )
    )
    return {r.sink: (r.seal_id, r.anchored_at) for r in rows}


async def record_anchor(conn: AsyncConnection, sink: str, anchor: Anchor) -> None:
    """Record `anchor` as written to `sink` (or, for TSA_SINK, its seal as timestamped), and
    clear the sink's failures. A seal recorded before keeps its first time."""
    await conn.execute(
        text(
            "INSERT INTO audit_anchors (sink, seal_id, seal_hash, name) "
            "VALUES (:sink, :id, :hash, :name) ON CONFLICT (sink, seal_id) DO NOTHING"
        ),
        {"sink": sink, "id": anchor.seal_id, "hash": anchor.seal_hash, "name": anchor.name},
    )
    await conn.execute(
        text(
            "INSERT INTO audit_anchor_sinks (sink, failures) VALUES (:sink, 0) "
            "ON CONFLICT (sink) DO UPDATE SET failures = 0"
        ),
        {"sink": sink},
    )


async def record_failure(conn: AsyncConnection, sink: str, error: str) -> None:
    """Count a failed write to `sink`."""
    await conn.execute(
        text(
            "INSERT INTO audit_anchor_sinks (sink, failures, last_error, failed_at) "
            "VALUES (:sink, 1, :error, clock_timestamp()) ON CONFLICT (sink) DO UPDATE SET "
            "failures = audit_anchor_sinks.failures + 1, last_error = :error, "
            "failed_at = clock_timestamp()"
        ),
        {"sink": sink, "error": error[:1000]},
    )


async def sink_status(conn: AsyncConnection, sinks: Sequence[str]) -> list[SinkStatus]:
    """Each configured sink's newest anchor, failures and lag behind the seals."""
    rows = await conn.execute(
        text(
            "SELECT s.sink, a.seal_id, a.anchored_at, "
            "extract(epoch FROM clock_timestamp() - a.anchored_at) AS age_s, "
            "coalesce(f.failures, 0) AS failures, f.last_error, f.failed_at, "
            "coalesce(extract(epoch FROM clock_timestamp() - ("
            "  SELECT min(sealed_at) FROM seals "
            "  WHERE seal_id > coalesce(a.seal_id, 0))), 0) AS behind_s "
            "FROM unnest(CAST(:sinks AS text[])) WITH ORDINALITY AS s(sink, n) "
            "LEFT JOIN LATERAL (SELECT seal_id, anchored_at FROM audit_anchors x "
            "  WHERE x.sink = s.sink ORDER BY seal_id DESC LIMIT 1) a ON true "
            "LEFT JOIN audit_anchor_sinks f ON f.sink = s.sink ORDER BY s.n"
        ),
        {"sinks": list(sinks)},
    )
    return [
        SinkStatus(
            r.sink,
            r.seal_id,
            r.anchored_at,
            float(r.age_s) if r.age_s is not None else None,
            r.failures,
            r.last_error,
            r.failed_at,
            float(r.behind_s),
        )
        for r in rows
    ]


async def recorded_anchors(conn: AsyncConnection, sink: str) -> list[tuple[int, str]]:
    """The (seal id, name) of every anchor recorded as written to `sink`."""
    rows = await conn.execute(
        text("SELECT seal_id, name FROM audit_anchors WHERE sink = :sink ORDER BY seal_id"),
        {"sink": sink},
    )
    return [(r.seal_id, r.name) for r in rows]


async def seals_by_id(conn: AsyncConnection, ids: Sequence[int]) -> dict[int, HeadSeal]:
    """The seals of these ids (those that exist)."""
    rows = await conn.execute(
        text(
            "SELECT seal_id, first_position, last_position, hash, signature, key_id, sealed_at "
            "FROM seals WHERE seal_id = ANY(CAST(:ids AS bigint[]))"
        ),
        {"ids": list(ids)},
    )
    return {
        r.seal_id: HeadSeal(
            r.seal_id,
            r.first_position,
            r.last_position,
            bytes(r.hash).hex(),
            bytes(r.signature).hex() if r.signature is not None else None,
            r.key_id,
            r.sealed_at,
        )
        for r in rows
    }


async def check_anchors(
    conn: AsyncConnection, sinks: Sequence[Sink]
) -> list[tuple[str, str, int | None]]:
    """Read every sink's anchors back and hold them against the seals: (kind, detail,
    seal id) for each problem. `anchor_mismatch`: the first anchored seal whose hash, range or
    signature differs from the database's (the chain was rewritten), or an anchor that cannot
    be read; `anchor_missing`: the chain ends before the newest anchor (a tail was deleted),
    an anchor recorded as written is gone from its sink, or a sink cannot be read."""
    problems: list[tuple[str, str, int | None]] = []
    held: list[tuple[str, Anchor]] = []
    for sink in sinks:
        try:
            back = await sink.read()
        except Exception as exc:  # noqa: BLE001 - any failure to read is reported
            problems.append(
                ("anchor_missing", f"the anchors of {sink.url} cannot be read: {exc}", None)
            )
            continue
        for name, error in sorted(back.unreadable.items()):
            problems.append(
                ("anchor_mismatch", f"{sink.url}: anchor {name} is unreadable: {error}", None)
            )
        for name, anchor in sorted(back.anchors.items()):
            if name != anchor.name:
                problems.append(
                    (
                        "anchor_mismatch",
                        f"{sink.url}: anchor {name} holds seal {anchor.seal_id}",
                        anchor.seal_id,
                    )
                )
            held.append((sink.url, anchor))
        for seal_id, name in await recorded_anchors(conn, sink.url):
            if name not in back.anchors and name not in back.unreadable:
                problems.append(
                    (
                        "anchor_missing",
                        f"{sink.url}: the anchor of seal {seal_id} ({name}), written there, is "
                        "gone",
                        seal_id,
                    )
                )
    if not held:
        return problems
    seals = await seals_by_id(conn, sorted({a.seal_id for _, a in held}))
    newest_db = await conn.scalar(text("SELECT max(seal_id) FROM seals"))
    mismatches: list[tuple[int, str, str]] = []
    for url, anchor in held:
        seal = seals.get(anchor.seal_id)
        if seal is None:
            continue
        differs = [
            what
            for what, ours, theirs in (
                ("hash", seal.hash_hex, anchor.seal_hash),
                ("first position", seal.first_position, anchor.first_position),
                ("last position", seal.last_position, anchor.last_position),
                ("signature", seal.signature_hex, anchor.signature),
                ("key id", seal.key_id, anchor.key_id),
            )
            if ours != theirs
        ]
        if differs:
            mismatches.append((anchor.seal_id, url, ", ".join(differs)))
    if mismatches:
        mismatches.sort()
        seal_id, url, what = mismatches[0]
        others = len({m[0] for m in mismatches}) - 1
        more = f"; {others} later anchored seal(s) differ too" if others else ""
        problems.append(
            (
                "anchor_mismatch",
                f"seal {seal_id}'s {what} differ(s) from its anchor in {url}: the chain was "
                f"rewritten from seal {seal_id} on{more}",
                seal_id,
            )
        )
    newest_url, newest = max(held, key=lambda h: h[1].seal_id)
    if newest_db is None or newest.seal_id > newest_db:
        ends = "has no seals" if newest_db is None else f"ends at seal {newest_db}"
        problems.append(
            (
                "anchor_missing",
                f"the chain {ends}, before the newest anchor (seal {newest.seal_id}, through "
                f"position {newest.last_position}, in {newest_url}): seals were deleted",
                newest.seal_id,
            )
        )
    return problems
