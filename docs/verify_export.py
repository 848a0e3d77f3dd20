#!/usr/bin/env python3
"""Verify a Paxos Event Store export offline: the standard library and `cryptography` only.

    python3 verify_export.py EXPORT.jsonl --public-key KEYS.pem [--anchors file:///dir]

The procedure of docs/audit.md ("Verifying an export offline"), written independently of the
service's code: exit 0 if every check passes, else 1 with one line per problem naming the line
of the export (and the journal position) it is about; 2 on a usage error. Anchors are read
from a directory (`seal-*.json`); anchors kept in S3 are copied out first (docs/audit.md).
"""

from __future__ import annotations

import argparse
import bisect
import calendar
import datetime
import hashlib
import json
import pathlib
import re
import struct
import sys
import urllib.parse

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

KINDS = ("notification", "event", "test_confirmation")
ROW_FIELDS = {"position", "recorded_at", "row_hash", "body"}
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
HEX = re.compile(r"(?:[0-9a-f]{2})*")
PEM = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.DOTALL)


def load_keys(path):
    """Public keys by key id: hex SHA-256 of the raw 32-byte Ed25519 public key."""
    keys = {}
    with open(path, "rb") as f:
        for block in PEM.findall(f.read()):
            key = serialization.load_pem_public_key(block)
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError("not an Ed25519 public key")
            raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            keys[hashlib.sha256(raw).hexdigest()] = key
    if not keys:
        raise ValueError("no PEM public key in the file")
    return keys


def row_hash(position, event_id, kind, recorded_at, body):
    text = f"{position}\n{event_id}\n{kind}\n{recorded_at}\n{body}"
    return hashlib.sha256(text.encode("utf-8")).digest()


TIME = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(?:([Zz])|([+-])(\d\d):(\d\d))"
)


def nanoseconds(value):
    """An RFC 3339 time as nanoseconds since 1970 (digits past the ninth dropped), or None."""
    m = TIME.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        return None
    y, mo, d, h, mi, s, fraction, z, sign, oh, om = m.groups()
    try:
        seconds = calendar.timegm((int(y), int(mo), int(d), int(h), int(mi), int(s)))
        datetime.date(int(y), int(mo), int(d))  # refuses February 30th
    except ValueError:
        return None
    if not z:
        shift = (int(oh) * 60 + int(om)) * 60
        seconds -= shift if sign == "+" else -shift
    return seconds * 10**9 + int((fraction or "0")[:9].ljust(9, "0"))


def field_mismatches(record):
    """docs/audit.md step 6: the event's fields against its journal rows' bodies."""
    out = []

    def parsed(kind):
        row = record.get(kind)
        if not isinstance(row, dict) or not isinstance(row.get("body"), str):
            return None
        try:
            body = json.loads(row["body"])
        except ValueError:
            out.append(f"the {kind} body is not JSON")
            return None
        if not isinstance(body, dict):
            out.append(f"the {kind} body is not a JSON object")
            return None
        return body

    def same_time(a, b):
        x, y = nanoseconds(a), nanoseconds(b)
        return x is not None and y is not None and abs(x - y) < 1000

    def same_id(said):
        return isinstance(said, str) and said.lower().replace("-", "") == event_id.replace("-", "")

    event_id = record["event_id"]  # canonical: checked before
    note, full = parsed("notification"), parsed("event")
    for kind, body in (("notification", note), ("event", full)):
        if body is not None and not same_id(body.get("id")):
            out.append(f"event_id {event_id}: the {kind} says {body.get('id')!r}")
    # type: the full event's once fetched, else the notification's.
    said_by = ("event", full) if full is not None else ("notification", note)
    if said_by[1] is not None and record.get("type") != said_by[1].get("type"):
        out.append(f"type {record.get('type')!r}: the {said_by[0]} says {said_by[1].get('type')!r}")
    for field, fixed in (("source", "com.paxos"), ("object", "event")):
        value = note.get(field) if note is not None else fixed
        if record.get(field) != value:
            out.append(f"{field} {record.get(field)!r}: expected {value!r}")
    # time: the notification's time or the full event's created_at.
    times = ([note.get("time")] if note is not None else []) + (
        [full.get("created_at")] if full is not None else []
    )
    if times and not any(same_time(record.get("time"), t) for t in times):
        out.append(f"time {record.get('time')!r}: the rows say {times!r}")
    # is_test: the notification's (absent: false) or, once fetched, Paxos's word.
    confirmed = record.get("test_confirmation") is not None
    flags = ([note.get("is_test", False)] if note is not None else []) + (
        [confirmed] if full is not None else []
    )
    if flags and not any(record.get("is_test") is flag for flag in flags):
        out.append(f"is_test {record.get('is_test')!r}: the rows say {flags!r}")
    if (record.get("confirmed_is_test") is True) != confirmed:
        out.append(
            f"confirmed_is_test {record.get('confirmed_is_test')!r}: "
            "the test_confirmation row disagrees"
        )
    return out


def check_anchors(url, heads, line, problem):
    parts = urllib.parse.urlsplit(url)
    directory = pathlib.Path(urllib.parse.unquote(parts.path))
    if parts.scheme != "file" or parts.netloc or not directory.is_dir():
        problem("malformed", None, f"--anchors {url}: not file:///dir of an existing directory")
        return
    anchored = []
    for path in sorted(directory.glob("seal-*.json")):
        try:
            doc = json.loads(path.read_bytes())
            seal_id = int(doc["seal_id"])
            fields = ("seal_hash", "first_position", "last_position", "signature", "key_id")
            anchor = tuple(doc[k] for k in fields)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            problem("malformed", None, f"anchor {path.name}: {exc}")
            continue
        anchored.append(seal_id)
        if seal_id in heads and heads[seal_id] != anchor:
            differs = [k for k, a, b in zip(fields, heads[seal_id], anchor, strict=True) if a != b]
            problem("anchor_mismatch", line, f"seal {seal_id}: {', '.join(differs)} differ")
    if heads and not set(heads) & set(anchored):
        problem(
            "not_anchored",
            line,
            f"no covering seal is anchored (newest: {max(anchored, default=None)})",
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export")
    parser.add_argument("--public-key", required=True)
    parser.add_argument("--anchors", help="file:///dir of anchor documents")
    args = parser.parse_args(argv)
    try:
        keys = load_keys(args.public_key)
    except (OSError, ValueError) as exc:
        print(f"--public-key: {exc}", file=sys.stderr)
        return 2
    problems = []

    def problem(kind, line, detail, position=None):
        where = f"line {line}" if line is not None else "export"
        if position is not None:
            where += f" position {position}"
        problems.append(f"{kind} {where}: {detail}")

    # 1. Every event record's journal rows, hashed from the exported text.
    rows = []  # (line, position, hash)
    events, trailer, trailer_line = 0, None, None
    with open(args.export, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if trailer is not None:
                problem("malformed", number, "a line after the trailer")
                continue
            try:
                record = json.loads(raw)
            except ValueError as exc:
                problem("malformed", number, f"not a JSON record ({exc})")
                continue
            kind = record.get("record") if isinstance(record, dict) else None
            if kind == "trailer":
                trailer, trailer_line = record, number
                continue
            if kind != "event":
                problem("malformed", number, "neither an event nor a trailer")
                continue
            events += 1
            event_id = record.get("event_id")
            if not isinstance(event_id, str) or not UUID.fullmatch(event_id):
                problem("changed_row", number, f"event_id {event_id!r} is not canonical")
                continue
            for row_kind in KINDS:
                if row_kind not in record:
                    problem("malformed", number, f"no {row_kind!r}")
                    continue
                row = record[row_kind]
                if row is None:
                    continue
                if (
                    not isinstance(row, dict)
                    or set(row) != ROW_FIELDS
                    or type(row["position"]) is not int
                    or not all(isinstance(row[k], str) for k in ("recorded_at", "row_hash", "body"))
                ):
                    problem("malformed", number, f"its {row_kind} row is malformed")
                    continue
                digest = row_hash(
                    row["position"], event_id, row_kind, row["recorded_at"], row["body"]
                )
                if digest.hex() != row["row_hash"]:
                    problem(
                        "changed_row",
                        number,
                        f"the {row_kind} row does not hash to its row_hash",
                        row["position"],
                    )
                rows.append((number, row["position"], digest))
            for detail in field_mismatches(record):
                problem("changed_field", number, detail)
    if trailer is None:
        problem("malformed", None, "no trailer: the export was cut short")
    else:
        if trailer.get("events") != events:
            problem("malformed", trailer_line, f"the trailer counts {trailer.get('events')} events")
        # 2. The covering seals: hash, chain, signature.
        seals = []  # (first, last, seal_id, {position: hash})
        heads = {}  # seal_id: (seal_hash, first, last, signature, key_id)
        previous = None  # (seal_id, hash)
        covering = trailer.get("covering_seals")
        if not isinstance(covering, list):
            problem("malformed", trailer_line, "no covering_seals in the trailer")
            covering = []
        for seal in covering:
            try:
                seal_id = int(seal["seal_id"])
                first, last = int(seal["first_position"]), int(seal["last_position"])
                hexes = [seal[k] for k in ("prev_hash", "rows_digest", "hash")]
                if not all(isinstance(h, str) and HEX.fullmatch(h) for h in hexes):
                    raise ValueError("a hash or digest is not lowercase hex")
                prev_hash, digest, sealed = (bytes.fromhex(h) for h in hexes)
                if len(digest) % 40:
                    raise ValueError("rows_digest is not a whole number of 40-byte entries")
                key_id, signature = seal["key_id"], seal["signature"]
            except (KeyError, TypeError, ValueError) as exc:
                problem("malformed", trailer_line, f"a covering seal: {exc}")
                previous = None
                continue
            where = f"seal {seal_id}"
            header = prev_hash + struct.pack(">qq", first, last)
            if hashlib.sha256(header + digest).digest() != sealed:
                problem(
                    "broken_link", trailer_line, f"{where}: its hash does not match its contents"
                )
            if previous is not None and previous[0] + 1 == seal_id and previous[1] != prev_hash:
                problem(
                    "broken_link", trailer_line, f"{where}: prev_hash is not seal {previous[0]}'s"
                )
            if key_id is None or signature is None:
                problem("bad_signature", trailer_line, f"{where} is unsigned")
            elif key_id not in keys:
                problem("unknown_key", trailer_line, f"{where}: key {key_id} is not given")
            else:
                try:
                    if not isinstance(signature, str) or not HEX.fullmatch(signature):
                        raise InvalidSignature
                    keys[key_id].verify(bytes.fromhex(signature), sealed)
                except InvalidSignature:
                    problem("bad_signature", trailer_line, f"{where}: the signature is invalid")
            listed = {
                struct.unpack_from(">q", digest, at)[0]: digest[at + 8 : at + 40]
                for at in range(0, len(digest), 40)
            }
            seals.append((first, last, seal_id, listed))
            heads[seal_id] = (sealed.hex(), first, last, signature, key_id)
            previous = (seal_id, sealed)
        # 3. Each row against its covering seal's rows_digest.
        seals.sort()
        firsts = [s[0] for s in seals]
        seen = {}
        for number, position, digest in rows:
            if position in seen:
                problem(
                    "changed_row", number, f"the position is also line {seen[position]}'s", position
                )
                continue
            seen[position] = number
            at = bisect.bisect_right(firsts, position) - 1
            if at < 0 or position > seals[at][1]:
                problem("unsealed_row", number, "no covering seal holds this position", position)
                continue
            expected = seals[at][3].get(position)
            if expected is None:
                problem("inserted_row", number, f"seal {seals[at][2]} does not list it", position)
            elif expected != digest:
                problem("changed_row", number, f"not what seal {seals[at][2]} holds", position)
        # 4. With --anchors: each anchored covering seal as anchored; at least one anchored.
        if args.anchors is not None:
            check_anchors(args.anchors, heads, trailer_line, problem)
    for line in problems:
        print(line)
    print(f"{len(problems)} problems" if problems else f"ok: {len(rows)} rows checked")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
