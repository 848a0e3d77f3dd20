"""Offline verification of a JSON Lines export: no database, no service settings
(`paxos-events verify-export`; the same procedure as docs/verify_export.py, documented in
docs/audit.md).

Every journal row of every event record is hashed again from the exported text (position,
event_id, kind, recorded_at, body) and must match both its `row_hash` and the entry for its
position in the `rows_digest` of the trailer's covering seal; every covering seal's hash is
recomputed from its contents, consecutive seals must chain, and each seal must carry a valid
Ed25519 signature by one of the given public keys. With anchors (documents of seal heads kept
outside the database, read back by service/audit/offline_anchors.py through the sinks
`verify` reads), every covering seal that was anchored must match each of its anchors,
and at least one must have been. Each problem names the line (and the row's position) it is
about.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from service.audit.exported_fields import field_problems
from service.domain.anchor import Anchor
from service.domain.signing import check_signature

ROW_KINDS = ("notification", "event", "test_confirmation")
_ROW_FIELDS = {"position", "recorded_at", "row_hash", "body"}
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_HEX = re.compile(r"(?:[0-9a-f]{2})*")


@dataclass(frozen=True, slots=True)
class OfflineProblem:
    kind: str
    line: int | None
    detail: str
    position: int | None = None
    seal_id: int | None = None

    def __str__(self) -> str:
        where = f" line {self.line}" if self.line is not None else ""
        where += f" position {self.position}" if self.position is not None else ""
        where += f" seal {self.seal_id}" if self.seal_id is not None else ""
        return f"{self.kind}{where}: {self.detail}"


@dataclass(frozen=True, slots=True)
class OfflineReport:
    problems: tuple[OfflineProblem, ...]
    rows_checked: int
    seals_checked: int

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True, slots=True)
class _Row:
    line: int
    position: int
    digest: bytes


@dataclass(frozen=True, slots=True)
class _Seal:
    seal_id: int
    first: int
    last: int
    rows: dict[int, bytes]
    hash_hex: str = ""
    signature: str | None = None
    key_id: str | None = None


def row_hash_text(position: int, event_id: str, kind: str, recorded_at: str, body: str) -> bytes:
    """The canonical row hash over the exported text (docs/audit.md)."""
    text = f"{position}\n{event_id}\n{kind}\n{recorded_at}\n{body}"
    return hashlib.sha256(text.encode("utf-8")).digest()


def verify_export(
    lines: Iterable[bytes],
    keys: Mapping[str, Ed25519PublicKey],
    anchors: Sequence[Anchor] | None = None,
) -> OfflineReport:
    """Check an export (its lines, in order) alone against the trusted public keys, and its
    covering seals against `anchors` if given."""
    problems: list[OfflineProblem] = []
    rows: list[_Row] = []
    events = 0
    trailer: dict[str, Any] | None = None
    trailer_line = 0
    for number, raw in enumerate(lines, start=1):
        if trailer is not None:
            problems.append(OfflineProblem("malformed", number, "a line after the trailer"))
            continue
        try:
            record = json.loads(raw)
        except ValueError as exc:  # UnicodeDecodeError included
            problems.append(OfflineProblem("malformed", number, f"not a JSON record ({exc})"))
            continue
        kind = record.get("record") if isinstance(record, dict) else None
        if kind == "event":
            events += 1
            rows.extend(_event_rows(number, record, problems))
        elif kind == "trailer":
            trailer, trailer_line = record, number
        else:
            problems.append(OfflineProblem("malformed", number, "neither an event nor a trailer"))
    if trailer is None:
        problems.append(OfflineProblem("malformed", None, "no trailer: the export was cut short"))
        return OfflineReport(tuple(problems), 0, 0)
    if trailer.get("events") != events:
        problems.append(
            OfflineProblem(
                "malformed",
                trailer_line,
                f"the trailer counts {trailer.get('events')} events, the export holds {events}",
            )
        )
    seals = _check_seals(trailer_line, trailer.get("covering_seals"), keys, problems)
    checked = _check_rows(rows, seals, problems)
    if anchors is not None:
        _check_anchors(trailer_line, seals, anchors, problems)
    return OfflineReport(tuple(problems), checked, len(seals))


def _check_anchors(
    line: int,
    seals: list[_Seal],
    anchors: Sequence[Anchor],
    problems: list[OfflineProblem],
) -> None:
    by_id: dict[int, list[Anchor]] = {}
    for a in anchors:
        by_id.setdefault(a.seal_id, []).append(a)
    anchored = 0
    for seal in seals:
        held = by_id.get(seal.seal_id)
        if not held:
            continue
        anchored += 1
        # Every sink's anchor of the seal must agree with it (several sinks: each is checked).
        differs = [
            name
            for name, ours, theirs in (
                ("seal_hash", seal.hash_hex, {a.seal_hash for a in held}),
                ("first_position", seal.first, {a.first_position for a in held}),
                ("last_position", seal.last, {a.last_position for a in held}),
                ("signature", seal.signature, {a.signature for a in held}),
                ("key_id", seal.key_id, {a.key_id for a in held}),
            )
            if theirs != {ours}
        ]
        if differs:
            problems.append(
                OfflineProblem(
                    "anchor_mismatch",
                    line,
                    f"the seal's {', '.join(differs)} differ from its anchor's: the chain was "
                    "rewritten after it was anchored",
                    seal_id=seal.seal_id,
                )
            )
    if seals and not anchored:
        newest = max(a.seal_id for a in anchors) if anchors else None
        problems.append(
            OfflineProblem(
                "not_anchored",
                line,
                f"none of the export's covering seals {seals[0].seal_id}..{seals[-1].seal_id} "
                f"has an anchor (newest anchored seal: {newest})",
                seal_id=seals[-1].seal_id,
            )
        )


def _event_rows(number: int, record: dict[str, Any], problems: list[OfflineProblem]) -> list[_Row]:
    event_id = record.get("event_id")
    if not isinstance(event_id, str) or not _UUID.fullmatch(event_id):
        problems.append(
            OfflineProblem("changed_row", number, f"event_id {event_id!r} is not canonical")
        )
        return []
    found: list[_Row] = []
    for kind in ROW_KINDS:
        if kind not in record:
            problems.append(OfflineProblem("malformed", number, f"the record has no {kind!r}"))
            continue
        row = record[kind]
        if row is None:
            continue
        if (
            not isinstance(row, dict)
            or set(row) != _ROW_FIELDS
            or type(row["position"]) is not int
            or not all(isinstance(row[f], str) for f in ("recorded_at", "row_hash", "body"))
        ):
            problems.append(
                OfflineProblem(
                    "malformed", number, f"event {event_id}: its {kind} row is malformed"
                )
            )
            continue
        position = row["position"]
        digest = row_hash_text(position, event_id, kind, row["recorded_at"], row["body"])
        if digest.hex() != row["row_hash"]:
            problems.append(
                OfflineProblem(
                    "changed_row",
                    number,
                    f"event {event_id}'s {kind} row does not hash to its row_hash",
                    position=position,
                )
            )
        found.append(_Row(number, position, digest))
    problems += [
        OfflineProblem("changed_field", number, f"event {event_id}: {detail}")
        for detail in field_problems(record)
    ]
    return found


def _check_seals(
    line: int,
    listed: Any,
    keys: Mapping[str, Ed25519PublicKey],
    problems: list[OfflineProblem],
) -> list[_Seal]:
    if not isinstance(listed, list):
        problems.append(
            OfflineProblem("malformed", line, "the trailer has no covering_seals (a CSV export?)")
        )
        return []
    seals: list[_Seal] = []
    previous: tuple[int, bytes] | None = None
    for entry in listed:
        seal = _one_seal(line, entry, keys, previous, problems)
        if seal is None:
            previous = None
            continue
        seals.append(seal[0])
        previous = (seal[0].seal_id, seal[1])
    return seals


def _one_seal(
    line: int,
    entry: Any,
    keys: Mapping[str, Ed25519PublicKey],
    previous: tuple[int, bytes] | None,
    problems: list[OfflineProblem],
) -> tuple[_Seal, bytes] | None:
    try:
        seal_id = int(entry["seal_id"])
        first, last = int(entry["first_position"]), int(entry["last_position"])
        fields = {name: entry[name] for name in ("prev_hash", "rows_digest", "hash")}
        if not all(isinstance(v, str) and _HEX.fullmatch(v) for v in fields.values()):
            raise ValueError("a hash or digest is not lowercase hex")
        prev_hash, digest, sealed = (bytes.fromhex(v) for v in fields.values())
        key, signature_hex = entry["key_id"], entry["signature"]
        if not isinstance(signature_hex, str | None) or not isinstance(key, str | None):
            raise ValueError("key_id and signature must be strings or null")
        if signature_hex is not None and not _HEX.fullmatch(signature_hex):
            raise ValueError("the signature is not lowercase hex")
        if len(digest) % 40:
            raise ValueError("rows_digest is not a whole number of entries")
    except (KeyError, TypeError, ValueError) as exc:
        seal_id_text = entry.get("seal_id") if isinstance(entry, dict) else None
        problems.append(OfflineProblem("malformed", line, f"covering seal {seal_id_text!r}: {exc}"))
        return None
    header = prev_hash + struct.pack(">qq", first, last)
    if hashlib.sha256(header + digest).digest() != sealed:
        problems.append(
            OfflineProblem(
                "broken_link", line, "its hash does not match its contents", seal_id=seal_id
            )
        )
    if previous is not None and previous[0] + 1 == seal_id and previous[1] != prev_hash:
        problems.append(
            OfflineProblem(
                "broken_link",
                line,
                f"its prev_hash is not seal {previous[0]}'s hash",
                seal_id=seal_id,
            )
        )
    if key is None or signature_hex is None:
        problems.append(
            OfflineProblem("bad_signature", line, "the seal is unsigned", seal_id=seal_id)
        )
        kind = None
    else:
        kind = check_signature(keys, key, bytes.fromhex(signature_hex), sealed)
    if kind is not None:
        detail = (
            f"signed by key {key}, which is not among the given public keys"
            if kind == "unknown_key"
            else f"its signature does not verify with key {key}"
        )
        problems.append(OfflineProblem(kind, line, detail, seal_id=seal_id))
    rows = {
        struct.unpack_from(">q", digest, at)[0]: digest[at + 8 : at + 40]
        for at in range(0, len(digest), 40)
    }
    return _Seal(seal_id, first, last, rows, sealed.hex(), signature_hex, key), sealed


def _check_rows(rows: list[_Row], seals: list[_Seal], problems: list[OfflineProblem]) -> int:
    ordered = sorted(seals, key=lambda s: s.first)
    firsts = [s.first for s in ordered]
    seen: dict[int, int] = {}
    checked = 0
    for row in rows:
        if row.position in seen:
            problems.append(
                OfflineProblem(
                    "changed_row",
                    row.line,
                    f"the position is also line {seen[row.position]}'s",
                    position=row.position,
                )
            )
            continue
        seen[row.position] = row.line
        at = bisect.bisect_right(firsts, row.position) - 1
        seal = ordered[at] if at >= 0 else None
        if seal is None or row.position > seal.last:
            problems.append(
                OfflineProblem(
                    "unsealed_row",
                    row.line,
                    "no covering seal in the trailer holds this position",
                    position=row.position,
                )
            )
            continue
        expected = seal.rows.get(row.position)
        if expected is None:
            problems.append(
                OfflineProblem(
                    "inserted_row",
                    row.line,
                    f"seal {seal.seal_id} does not list this position",
                    position=row.position,
                    seal_id=seal.seal_id,
                )
            )
        elif expected != row.digest:
            problems.append(
                OfflineProblem(
                    "changed_row",
                    row.line,
                    f"the row does not hash to what seal {seal.seal_id} holds",
                    position=row.position,
                    seal_id=seal.seal_id,
                )
            )
        checked += 1
    return checked
