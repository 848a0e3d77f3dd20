"""The anchor document: the seal chain's head as written outside the database (docs/audit.md).

Pure: built and parsed here, written and read by the sinks (service/store/audit/sinks.py).
One JSON object, keys sorted, no spaces, UTF-8, one trailing newline:

    {"anchored_at": "2026-12-04T23:50:00.000000Z", "first_position": 1, "format":
     "paxos-events-anchor/1", "key_id": null, "last_position": 11, "seal_hash": "<64 hex>",
     "seal_id": 2, "signature": null, "timestamp_token": null}

`signature` is the seal's Ed25519 signature in hex and `key_id` its key's id (both null for an
unsigned seal); `timestamp_token` is the RFC 3161 TimeStampResp (DER, base64) of a TSA over
the seal hash (the 32 hash bytes are the message imprint, SHA-256), or null.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

ANCHOR_FORMAT = "paxos-events-anchor/1"


@dataclass(frozen=True, slots=True)
class Anchor:
    """One anchored seal head."""

    seal_id: int
    first_position: int
    last_position: int
    seal_hash: str  # lowercase hex
    signature: str | None  # hex
    key_id: str | None
    anchored_at: datetime
    timestamp_token: str | None = None  # base64 DER TimeStampResp

    @property
    def name(self) -> str:
        """The file name / object key of this anchor: one per seal, sorting in seal order."""
        return anchor_name(self.seal_id)


def anchor_name(seal_id: int) -> str:
    """The file name / object key of the anchor of seal `seal_id`."""
    return f"seal-{seal_id:012d}.json"


def encode(anchor: Anchor) -> bytes:
    """The anchor document's exact bytes."""
    doc: dict[str, Any] = asdict(anchor)
    doc["anchored_at"] = anchor.anchored_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    doc["format"] = ANCHOR_FORMAT
    return (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode()


def decode(data: bytes) -> Anchor:
    """An anchor document back; ValueError if it is not one."""
    try:
        doc = json.loads(data)
        if doc.get("format") != ANCHOR_FORMAT:
            raise ValueError(f"not an anchor document (format {doc.get('format')!r})")
        return Anchor(
            seal_id=int(doc["seal_id"]),
            first_position=int(doc["first_position"]),
            last_position=int(doc["last_position"]),
            seal_hash=str(doc["seal_hash"]).lower(),
            signature=doc.get("signature"),
            key_id=doc.get("key_id"),
            anchored_at=datetime.strptime(doc["anchored_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
                tzinfo=UTC
            ),
            timestamp_token=doc.get("timestamp_token"),
        )
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not an anchor document: {exc}") from exc
