"""Verification: recompute the seal chain from the journal and name every problem precisely.

Kinds of problem, each with the position or seal it is about:

- `changed_row`: a sealed row's canonical hash is not the one sealed (or a pruned row's
  recorded hash is not);
- `deleted_row`: a sealed row is gone, and not through an audited prune;
- `inserted_row`: a row sits at a sealed position the seal does not list (or below the
  first seal);
- `broken_link`: a seal does not chain onto the one before it (prev_hash, ids or position
  ranges), its hash does not match its own contents, or an expected head is not in the chain;
- `unconfirmed_prune`: a pruned row belongs to an event Paxos never confirmed as a test
  event (the journal holds no `test_confirmation` for it): a real event was removed;
- `unsealed_backlog`: rows older than the threshold are still unsealed (the sealer is not
  running, or is stuck);
- `bad_signature`: a signed seal's signature does not verify with the public key of its key
  id (the seal, its hash or its signature was altered), or a seal after a signed one is
  unsigned (its signature was removed, or a process seals without AUDIT_SIGNING_KEY);
- `unknown_key`: a seal is signed by a key that is neither in AUDIT_PUBLIC_KEYS nor the
  signing key's own. Unsigned seals before the first signed one are valid;
- `anchor_mismatch` / `anchor_missing`: the anchors written outside the database
  (AUDIT_ANCHOR_URL, service/store/audit/anchors.py) disagree with the seals, or the chain
  ends before the newest of them.

Deleting the newest seals leaves a consistent, shorter chain: record the head hash outside the
database (`paxos-events verify --head`) and pass it back as `expect_head` to catch that.

Each seal is checked with a statement of its own (no long transaction: it would hold back
pg_snapshot_xmin, which the projector waits on); rows are hashed in SQL, so the bodies never
leave the database.

One verification runs at a time across the deployment: a run takes a transaction-level
advisory lock (VERIFY_LOCK) on a connection of its own, which waits for the run under way and
ends by recording its own run, so a caller that waited can answer that run instead of
recomputing the chain (`reuse_s`). The lock's transaction writes nothing until that last
statement and so holds no transaction id: it holds back no gap-safe reader.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.domain.signing import check_signature, trusted_keys
from service.settings import Settings
from service.store.audit.anchors import check_anchors
from service.store.audit.canonical import GENESIS_HASH, ROW_HASH_SQL, seal_hash, unpack_rows
from service.store.audit.sinks import sink_for
from service.store.tables import TEST_CONFIRMATION

PROBLEM_KINDS = (
    "changed_row",
    "deleted_row",
    "inserted_row",
    "broken_link",
    "unconfirmed_prune",
    "unsealed_backlog",
    "bad_signature",
    "unknown_key",
    "anchor_mismatch",
    "anchor_missing",
)
_SEALS_PER_QUERY = 16
_MAX_LISTED_BELOW_FIRST = 1000
_MAX_LISTED_UNCONFIRMED = 1000
# Any constant unique to this lock: pg_advisory_xact_lock(key) is deployment-wide.
VERIFY_LOCK = 0x7061786F735F7666  # "paxos_vf"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the audit trail."""

    kind: str
    detail: str
    position: int | None = None
    seal_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """The problem as JSON-ready data."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What a verification found. `sealed_through` is the last sealed position (None before
    the first seal); `rows_checked` counts sealed rows whose hash was recomputed or accounted
    for by an audited prune."""

    ok: bool
    sealed_through: int | None
    rows_checked: int
    problems: tuple[Problem, ...]
    head_hash: str | None = None
    verified_at: datetime | None = None  # when the run was recorded (None: not recorded)

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (GET /audit/verify, `verify --json`)."""
        return {
            "ok": self.ok,
            "sealed_through": self.sealed_through,
            "rows_checked": self.rows_checked,
            "head_hash": self.head_hash,
            "problems": [p.as_dict() for p in self.problems],
            "verified_at": self.verified_at.isoformat() if self.verified_at else None,
        }


@dataclass(frozen=True, slots=True)
class VerifyRun:
    """A recorded verification, as the operator console shows it."""

    ran_at: datetime
    ok: bool
    sealed_through: int | None
    rows_checked: int
    problem_count: int


async def verify(
    engine: AsyncEngine,
    threshold: Settings | float,
    *,
    expect_head: str | None = None,
    record: bool = True,
    reuse_s: float | None = None,
    keys: Mapping[str, Ed25519PublicKey] | None = None,
    anchors: Sequence[str] | None = None,
) -> VerifyReport:
    """Check the whole chain against the journal; record the run unless `record` is false.

    `threshold` is the oldest an unsealed row may be, in seconds (or the settings, for their
    AUDIT_MAX_UNSEALED_AGE_S). `expect_head`: a seal hash recorded earlier, which must still
    be in the chain. Waits for a verification under way elsewhere; with `reuse_s`, a run
    recorded less than that many seconds ago is answered instead of a new one.

    `keys`: the trusted public keys by key id; by default, with the settings, those of
    AUDIT_PUBLIC_KEYS and AUDIT_SIGNING_KEY (ValueError naming the setting if a file is bad),
    else none (every signed seal is then `unknown_key`).
    """
    max_age_s = threshold.audit_max_unsealed_age_s if isinstance(threshold, Settings) else threshold
    if keys is None:
        keys = (
            trusted_keys(threshold.audit_signing_key, threshold.audit_public_keys)
            if isinstance(threshold, Settings)
            else {}
        )
    async with engine.connect() as lock, lock.begin():
        await lock.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": VERIFY_LOCK})
        if reuse_s is not None:
            recent = await recent_report(lock, reuse_s)
            if recent is not None:
                return recent
        report = await _check(engine, max_age_s, expect_head, keys)
        report = await _with_anchors(engine, report, threshold, anchors)
        if record:
            # In the lock's transaction: whoever waited for this run sees it recorded.
            ran_at = await lock.scalar(
                text(
                    "INSERT INTO audit_verifications "
                    "(ran_at, ok, sealed_through, rows_checked, problems, head_hash) "
                    "VALUES (clock_timestamp(), :ok, :through, :rows, CAST(:problems AS jsonb), "
                    ":head) RETURNING ran_at"
                ),
                {
                    "ok": report.ok,
                    "through": report.sealed_through,
                    "rows": report.rows_checked,
                    "problems": msgspec.json.encode(
                        [p.as_dict() for p in report.problems]
                    ).decode(),
                    "head": report.head_hash,
                },
            )
            report = replace(report, verified_at=ran_at)
    return report


async def _check(
    engine: AsyncEngine,
    max_age_s: float,
    expect_head: str | None,
    keys: Mapping[str, Ed25519PublicKey],
) -> VerifyReport:
    """The verification itself, in short read transactions of its own."""
    checker = _Checker(keys)
    async with engine.connect() as conn:
        async for seals in _seal_batches(conn):
            for seal in seals:
                await checker.check_seal(conn, seal)
            await conn.commit()  # end the read transaction between batches
        await checker.check_below_first(conn)
        await checker.check_prunes(conn)
        await checker.check_backlog(conn, max_age_s)
        await conn.commit()
    if expect_head is not None and expect_head.lower() not in checker.hashes_seen:
        checker.problems.append(
            Problem(
                "broken_link",
                f"the expected head {expect_head} is not the hash of any seal: seals were "
                "removed or the chain was rewritten",
            )
        )
    return VerifyReport(
        ok=not checker.problems,
        sealed_through=checker.sealed_through,
        rows_checked=checker.rows_checked,
        problems=tuple(checker.problems),
        head_hash=checker.prev_hash.hex() if checker.prev_id is not None else None,
    )


async def recent_report(conn: AsyncConnection, max_age_s: float) -> VerifyReport | None:
    """The newest recorded run as its report, if it was recorded less than `max_age_s`
    seconds ago; else None."""
    row = (
        await conn.execute(
            text(
                "SELECT ran_at, ok, sealed_through, rows_checked, problems, head_hash, "
                "ran_at > clock_timestamp() - make_interval(secs => :age) AS recent "
                "FROM audit_verifications ORDER BY verification_id DESC LIMIT 1"
            ),
            {"age": max_age_s},
        )
    ).first()
    if row is None or not row.recent:
        return None
    return VerifyReport(
        ok=row.ok,
        sealed_through=row.sealed_through,
        rows_checked=row.rows_checked,
        problems=tuple(Problem(**p) for p in row.problems),
        head_hash=row.head_hash,
        verified_at=row.ran_at,
    )


async def last_run(conn: AsyncConnection) -> VerifyRun | None:
    """The most recent recorded verification, or None if verify never ran."""
    row = (
        await conn.execute(
            text(
                "SELECT ran_at, ok, sealed_through, rows_checked, "
                "jsonb_array_length(problems) AS problem_count "
                "FROM audit_verifications ORDER BY verification_id DESC LIMIT 1"
            )
        )
    ).first()
    if row is None:
        return None
    return VerifyRun(row.ran_at, row.ok, row.sealed_through, row.rows_checked, row.problem_count)


@dataclass(frozen=True, slots=True)
class _Seal:
    seal_id: int
    first_position: int
    last_position: int
    row_count: int
    rows_digest: bytes
    prev_hash: bytes
    hash: bytes
    key_id: str | None = None
    signature: bytes | None = None


async def _seal_batches(conn: AsyncConnection) -> Any:
    """The seals in id order, a few at a time (each holds up to 400 KB of row digests)."""
    after = None
    while True:
        rows = (
            await conn.execute(
                text(
                    "SELECT seal_id, first_position, last_position, row_count, rows_digest, "
                    "prev_hash, hash, key_id, signature FROM seals "
                    "WHERE CAST(:after AS bigint) IS NULL OR seal_id > :after "
                    "ORDER BY seal_id LIMIT :n"
                ),
                {"after": after, "n": _SEALS_PER_QUERY},
            )
        ).all()
        if not rows:
            return
        yield [
            _Seal(
                r.seal_id,
                r.first_position,
                r.last_position,
                r.row_count,
                bytes(r.rows_digest),
                bytes(r.prev_hash),
                bytes(r.hash),
                r.key_id,
                bytes(r.signature) if r.signature is not None else None,
            )
            for r in rows
        ]
        after = rows[-1].seal_id


class _Checker:
    def __init__(self, keys: Mapping[str, Ed25519PublicKey]) -> None:
        self.keys = keys
        self.first_signed: int | None = None
        self.problems: list[Problem] = []
        self.rows_checked = 0
        self.prev_id: int | None = None
        self.prev_hash = GENESIS_HASH
        self.prev_last: int | None = None
        self.first_first: int | None = None
        self.sealed_through: int | None = None
        self.hashes_seen: set[str] = set()

    async def check_seal(self, conn: AsyncConnection, seal: _Seal) -> None:
        self._check_link(seal)
        self._check_signature(seal)
        try:
            sealed = list(unpack_rows(seal.rows_digest))
        except ValueError as exc:
            self._broken(seal, str(exc))
            sealed = []
        positions = [p for p, _ in sealed]
        if len(sealed) != seal.row_count:
            self._broken(seal, f"row_count is {seal.row_count} but the digest lists {len(sealed)}")
        if any(b <= a for a, b in zip(positions, positions[1:], strict=False)) or (
            positions and (positions[0] < seal.first_position or positions[-1] > seal.last_position)
        ):
            self._broken(seal, "the digest's positions are out of order or outside the range")
        await self._check_rows(conn, seal, dict(sealed))
        if self.first_first is None:
            self.first_first = seal.first_position
        # Follow the chain as stored, so one altered seal is one problem, not a cascade.
        self.prev_id = seal.seal_id
        self.prev_hash = seal.hash
        self.prev_last = seal.last_position
        if self.sealed_through is None or seal.last_position > self.sealed_through:
            self.sealed_through = seal.last_position
        self.hashes_seen.add(seal.hash.hex())

    def _check_link(self, seal: _Seal) -> None:
        details = []
        expected_id = 1 if self.prev_id is None else self.prev_id + 1
        if seal.seal_id != expected_id:
            details.append(f"seal ids jump from {self.prev_id} to {seal.seal_id}")
        if seal.prev_hash != self.prev_hash:
            before = "the genesis hash" if self.prev_id is None else f"seal {self.prev_id}'s hash"
            details.append(f"its prev_hash {seal.prev_hash.hex()} is not {before}")
        if self.prev_last is not None and seal.first_position != self.prev_last + 1:
            details.append(
                f"it starts at position {seal.first_position}, not right after seal "
                f"{self.prev_id}'s last position {self.prev_last}"
            )
        recomputed = seal_hash(
            seal.prev_hash, seal.first_position, seal.last_position, seal.rows_digest
        )
        if recomputed != seal.hash:
            details.append("its hash does not match its own contents (the seal was altered)")
        if details:
            self._broken(seal, "; ".join(details))

    def _check_signature(self, seal: _Seal) -> None:
        if seal.signature is None or seal.key_id is None:
            if self.first_signed is not None:
                self.problems.append(
                    Problem(
                        "bad_signature",
                        f"seal {seal.seal_id} is unsigned, but seal {self.first_signed} and "
                        "later ones were signed: its signature was removed, or it was sealed "
                        "without AUDIT_SIGNING_KEY",
                        seal_id=seal.seal_id,
                    )
                )
            return
        if self.first_signed is None:
            self.first_signed = seal.seal_id
        kind = check_signature(self.keys, seal.key_id, seal.signature, seal.hash)
        if kind == "unknown_key":
            detail = (
                f"seal {seal.seal_id} is signed by key {seal.key_id}, which is neither in "
                "AUDIT_PUBLIC_KEYS nor the signing key"
            )
        elif kind == "bad_signature":
            detail = (
                f"seal {seal.seal_id}'s signature does not verify with key {seal.key_id}: the "
                "seal or its signature was altered"
            )
        else:
            return
        self.problems.append(Problem(kind, detail, seal_id=seal.seal_id))

    def _broken(self, seal: _Seal, detail: str) -> None:
        self.problems.append(
            Problem("broken_link", f"seal {seal.seal_id}: {detail}", seal_id=seal.seal_id)
        )

    async def _check_rows(
        self, conn: AsyncConnection, seal: _Seal, sealed: dict[int, bytes]
    ) -> None:
        # The journal rows and the audited prunes of the range, read by one statement (one
        # snapshot): a prune commits both at once, so a row is seen in exactly one of them.
        result = await conn.execute(
            text(
                f"SELECT j.position, {ROW_HASH_SQL} AS row_hash, false AS pruned FROM journal j "
                "WHERE j.position BETWEEN :first AND :last "
                "UNION ALL SELECT p.position, p.row_hash, true FROM pruned_journal_rows p "
                "WHERE p.position BETWEEN :first AND :last ORDER BY 1, 3"
            ),
            {"first": seal.first_position, "last": seal.last_position},
        )
        present: set[int] = set()
        for position, digest, pruned in result:
            if position in present:
                continue  # pruned but still in the journal: the journal row counts
            present.add(position)
            expected = sealed.get(position)
            if expected is None:
                if not pruned:
                    self.problems.append(
                        Problem(
                            "inserted_row",
                            f"position {position} is in seal {seal.seal_id}'s range but was "
                            "not there when it was sealed",
                            position=position,
                            seal_id=seal.seal_id,
                        )
                    )
                continue
            if bytes(digest) != expected:
                what = "the recorded hash of pruned row" if pruned else "row"
                self.problems.append(
                    Problem(
                        "changed_row",
                        f"{what} {position} does not hash to what seal {seal.seal_id} holds",
                        position=position,
                        seal_id=seal.seal_id,
                    )
                )
            self.rows_checked += 1
        for position in sealed.keys() - present:
            self.problems.append(
                Problem(
                    "deleted_row",
                    f"row {position}, sealed by seal {seal.seal_id}, is gone from the journal "
                    "and was not pruned",
                    position=position,
                    seal_id=seal.seal_id,
                )
            )

    async def check_below_first(self, conn: AsyncConnection) -> None:
        if self.first_first is None:
            return
        result = await conn.execute(
            text("SELECT position FROM journal WHERE position < :first ORDER BY position LIMIT :n"),
            {"first": self.first_first, "n": _MAX_LISTED_BELOW_FIRST},
        )
        for (position,) in result:
            self.problems.append(
                Problem(
                    "inserted_row",
                    f"position {position} is below the first seal's range, where no row can be",
                    position=position,
                )
            )

    async def check_prunes(self, conn: AsyncConnection) -> None:
        # A prune removes only events whose confirmation by Paxos is in the journal, and never
        # the confirmation; a pruned row without one is a real event's (or a forged prune's).
        result = await conn.execute(
            text(
                "SELECT p.position, p.event_id, (SELECT s.seal_id FROM seals s "
                "  WHERE s.first_position <= p.position "
                "  ORDER BY s.first_position DESC LIMIT 1) AS seal_id "
                "FROM pruned_journal_rows p WHERE NOT EXISTS ("
                "  SELECT 1 FROM journal c "
                f"  WHERE c.event_id = p.event_id AND c.kind = '{TEST_CONFIRMATION}') "
                "ORDER BY p.position LIMIT :n"
            ),
            {"n": _MAX_LISTED_UNCONFIRMED},
        )
        for position, event_id, seal_id in result:
            self.problems.append(
                Problem(
                    "unconfirmed_prune",
                    f"row {position} was pruned with event {event_id} as a test event, but "
                    "Paxos never confirmed it as one (the journal holds no test_confirmation "
                    "for it): a real event was removed",
                    position=position,
                    seal_id=seal_id,
                )
            )

    async def check_backlog(self, conn: AsyncConnection, max_age_s: float) -> None:
        row = (
            await conn.execute(
                text(
                    "SELECT count(*) AS rows, min(position) AS first, "
                    "min(recorded_at) AS oldest, "
                    "min(recorded_at) < now() - make_interval(secs => :age) AS too_old "
                    "FROM journal "
                    "WHERE CAST(:through AS bigint) IS NULL OR position > :through"
                ),
                {"through": self.sealed_through, "age": max_age_s},
            )
        ).one()
        if row.too_old:
            self.problems.append(
                Problem(
                    "unsealed_backlog",
                    f"{row.rows} journal rows are not sealed, the oldest recorded at "
                    f"{row.oldest.isoformat()}: more than {max_age_s:g} s ago "
                    "(is the sealer running?)",
                    position=row.first,
                )
            )


async def _with_anchors(
    engine: AsyncEngine,
    report: VerifyReport,
    settings: Settings | float,
    urls: Sequence[str] | None,
) -> VerifyReport:
    """The report with the anchors' problems added: those of `urls`, by default (with the
    settings) AUDIT_ANCHOR_URL's; none without sinks."""
    configured = settings if isinstance(settings, Settings) else None
    if urls is None:
        urls = configured.audit_anchor_url if configured is not None else ()
    if not urls:
        return report
    sinks = [
        sink_for(
            url,
            s3_endpoint=configured.audit_anchor_s3_endpoint if configured else None,
            retain_days=None,
        )
        for url in urls
    ]
    async with engine.connect() as conn:
        found = await check_anchors(conn, sinks)
        await conn.commit()
    if not found:
        return report
    problems = report.problems + tuple(
        Problem(kind, detail, seal_id=seal_id) for kind, detail, seal_id in found
    )
    return replace(report, ok=False, problems=problems)
