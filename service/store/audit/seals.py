"""Sealing: hash-chain the journal, in position order, into seals of contiguous positions.

Only positions that can no longer change are sealed. Positions come from a sequence, so they
have gaps (values burned by ON CONFLICT and rollbacks), and rows become visible at COMMIT,
out of position order: sealing up to the highest position seen would leave behind a row that
commits a moment later with a lower position. `horizon` finds a position L below which
nothing can appear any more (see the comment at its lock); seals only cover positions <= L.

One sealer at a time across every process (a transaction advisory lock), each seal in a short
transaction of its own (a long one would hold back pg_snapshot_xmin, which the projector waits
on), at most `max_rows` rows per seal.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.domain.signing import Signer
from service.store.audit.canonical import GENESIS_HASH, ROW_HASH_SQL, pack_rows, seal_hash

SEALER_LOCK = 0x7061786F735F736C  # "paxos_sl"
MAX_ROWS_PER_SEAL = 10_000
_LOCK_NOT_AVAILABLE = "55P03"


@dataclass(frozen=True, slots=True)
class SealInfo:
    """A seal, without its row digest."""

    seal_id: int
    first_position: int
    last_position: int
    row_count: int
    hash_hex: str
    sealed_at: datetime
    # The signing key's id and the Ed25519 signature of the hash (hex); None when unsigned.
    key_id: str | None = None
    signature_hex: str | None = None


_COLUMNS = "seal_id, first_position, last_position, row_count, hash, sealed_at, key_id, signature"


def _info(row: Any) -> SealInfo:
    return SealInfo(
        seal_id=row.seal_id,
        first_position=row.first_position,
        last_position=row.last_position,
        row_count=row.row_count,
        hash_hex=bytes(row.hash).hex(),
        sealed_at=row.sealed_at,
        key_id=row.key_id,
        signature_hex=bytes(row.signature).hex() if row.signature is not None else None,
    )


async def head(conn: AsyncConnection) -> SealInfo | None:
    """The newest seal, or None before the first one."""
    row = (
        await conn.execute(text(f"SELECT {_COLUMNS} FROM seals ORDER BY seal_id DESC LIMIT 1"))
    ).first()
    return None if row is None else _info(row)


async def covering(conn: AsyncConnection, position: int) -> SealInfo | None:
    """The seal whose range holds `position`, or None if it is not sealed (yet)."""
    row = (
        await conn.execute(
            text(
                f"SELECT {_COLUMNS} FROM seals WHERE first_position <= :p "
                "ORDER BY first_position DESC LIMIT 1"
            ),
            {"p": position},
        )
    ).first()
    if row is None or row.last_position < position:
        return None
    return _info(row)


async def horizon(engine: AsyncEngine, *, lock_timeout_ms: int = 100) -> int | None:
    """A position L such that every position <= L is final: its row committed, or the value
    burned for good. None if the journal is busy right now (try again later)."""
    async with engine.connect() as conn:
        try:
            async with conn.begin():
                await conn.execute(text(f"SET LOCAL lock_timeout = '{int(lock_timeout_ms)}ms'"))
                # Every transaction that inserts into the journal holds ROW EXCLUSIVE on it
                # from the start of its INSERT (taken before the identity's nextval runs) to
                # its COMMIT or ROLLBACK. SHARE conflicts with ROW EXCLUSIVE, so once it is
                # granted no insert is in flight: every position handed out so far (<= the
                # sequence's last value) belongs to a committed row or was burned forever.
                # The lock is released at once (end of this transaction). Inserters queue
                # behind it while it waits, hence the short lock_timeout: on timeout this round
                # is skipped rather than stalling the intake.
                await conn.execute(text("LOCK TABLE journal IN SHARE MODE"))
                last_value = await conn.scalar(
                    text(
                        "SELECT pg_sequence_last_value("
                        "pg_get_serial_sequence('journal', 'position')::regclass)"
                    )
                )
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) == _LOCK_NOT_AVAILABLE:
                return None
            raise
    # Null until the sequence is first used.
    return 0 if last_value is None else int(last_value)


async def seal_next(
    engine: AsyncEngine,
    through: int,
    *,
    max_rows: int = MAX_ROWS_PER_SEAL,
    signer: Signer | None = None,
) -> SealInfo | None:
    """Seal the next rows after the head seal, up to position `through` (which must be a
    horizon) and at most `max_rows` of them, signed by `signer` if given. None if another
    process is sealing, or there is nothing to seal."""
    async with engine.begin() as conn:
        # One sealer at a time: two would chain two seals onto the same head (the unique
        # prev_hash would refuse the second, but only after it did the work).
        if not await conn.scalar(
            text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": SEALER_LOCK}
        ):
            return None
        prev = (
            await conn.execute(
                text("SELECT seal_id, last_position, hash FROM seals ORDER BY seal_id DESC LIMIT 1")
            )
        ).first()
        after = prev.last_position if prev is not None else None
        rows = (
            await conn.execute(
                text(
                    f"SELECT j.position, {ROW_HASH_SQL} AS row_hash FROM journal j "
                    "WHERE (CAST(:after AS bigint) IS NULL OR j.position > :after) "
                    "AND j.position <= :through ORDER BY j.position LIMIT :n"
                ),
                {"after": after, "through": through, "n": max_rows},
            )
        ).all()
        if not rows:
            return None
        # Ranges are contiguous (each starts right after the previous one), so a row slipped
        # into any gap of a sealed range is caught. The first seal starts at position 1,
        # where the journal's identity starts.
        first = prev.last_position + 1 if prev is not None else min(1, rows[0].position)
        # A full batch ends at its last row; otherwise the seal takes in the burned positions
        # up to the horizon too.
        last = rows[-1].position if len(rows) == max_rows else through
        prev_hash = bytes(prev.hash) if prev is not None else GENESIS_HASH
        digest = pack_rows((r.position, bytes(r.row_hash)) for r in rows)
        sealed = seal_hash(prev_hash, first, last, digest)
        row = (
            await conn.execute(
                text(
                    "INSERT INTO seals (seal_id, first_position, last_position, row_count, "
                    "rows_digest, prev_hash, hash, key_id, signature) VALUES (:id, :first, "
                    f":last, :count, :digest, :prev, :hash, :key_id, :signature) "
                    f"RETURNING {_COLUMNS}"
                ),
                {
                    "id": prev.seal_id + 1 if prev is not None else 1,
                    "first": first,
                    "last": last,
                    "count": len(rows),
                    "digest": digest,
                    "prev": prev_hash,
                    "hash": sealed,
                    "key_id": signer.key_id if signer is not None else None,
                    "signature": signer.sign(sealed) if signer is not None else None,
                },
            )
        ).one()
        return _info(row)


async def seal_pending(
    engine: AsyncEngine,
    *,
    max_rows: int = MAX_ROWS_PER_SEAL,
    lock_timeout_ms: int = 100,
    signer: Signer | None = None,
) -> list[SealInfo]:
    """Seal everything below the current horizon, in seals of at most `max_rows` rows.
    Empty if there was nothing to seal, the journal was busy, or another process is sealing."""
    through = await horizon(engine, lock_timeout_ms=lock_timeout_ms)
    sealed: list[SealInfo] = []
    if through is None:
        return sealed
    while (seal := await seal_next(engine, through, max_rows=max_rows, signer=signer)) is not None:
        sealed.append(seal)
        if seal.last_position >= through:
            break
    return sealed
