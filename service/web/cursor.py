"""Keyset cursors: opaque, checksummed, and bound to the filters they were issued for.

A cursor is base64url of a small JSON array, `[version, key, fingerprint]`, followed by a
checksum: the key of the last item handed out (whatever a listing orders by), and a digest of
the filters and order it was issued for. A cursor used with other filters would silently skip
or repeat items, so it is refused; so is one that was cut or altered. The checksum is not a
secret: a forged cursor could only choose where a listing starts, among items the caller may
list anyway. Cursors need only be understood by the version of the service that issued them
(version 1 put the events key's fields flat in the array).

`CursorCodec` is that format for any key type; `encode_cursor` and `decode_cursor` are the
/events listing's cursors (its key: the (time, event_id) of the last event).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

import msgspec

from service.domain.stored import EventFilter, Position
from service.web.problems import InvalidParameter

K = TypeVar("K")

_VERSION = 2
_CHECKSUM_BYTES = 8


def fingerprint(value: Any) -> str:
    """A short digest of `value` (JSON-encodable): what a cursor is bound to."""
    return hashlib.blake2b(msgspec.json.encode(value), digest_size=8).hexdigest()


class CursorCodec(Generic[K]):
    """The cursors of one listing, whose keys are of type `key_type`.

    `foreign` and `mismatch` finish the 400's detail for a cursor that is not one of this
    listing's, and for one issued for other filters.
    """

    def __init__(
        self, name: str, key_type: type[K], *, max_chars: int, foreign: str, mismatch: str
    ) -> None:
        self._checksum_key = f"paxos-event-store/{name}-cursor".encode()
        self._key_type = key_type
        self._shape = re.compile(rf"[A-Za-z0-9_-]{{1,{max_chars}}}")
        self._foreign = foreign
        self._mismatch = mismatch

    def _checksum(self, body: bytes) -> bytes:
        return hashlib.blake2b(body, digest_size=_CHECKSUM_BYTES, key=self._checksum_key).digest()

    def encode(self, key: K, bound_to: str) -> str:
        """The opaque cursor after `key`, for the listing whose fingerprint is `bound_to`."""
        body = msgspec.json.encode([_VERSION, key, bound_to])
        return base64.urlsafe_b64encode(body + self._checksum(body)).rstrip(b"=").decode()

    def decode(self, cursor: str, bound_to: str) -> K:
        """The key a cursor from `encode` resumes after; `InvalidParameter` if it is not one of
        this listing's, or was issued for another fingerprint than `bound_to`."""
        if not self._shape.fullmatch(cursor):
            raise InvalidParameter("cursor", "malformed; pass next_cursor back unchanged")
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        except (binascii.Error, ValueError):
            raise InvalidParameter("cursor", "malformed; pass next_cursor back unchanged") from None
        body, checksum = raw[:-_CHECKSUM_BYTES], raw[-_CHECKSUM_BYTES:]
        if len(raw) <= _CHECKSUM_BYTES or not hmac.compare_digest(checksum, self._checksum(body)):
            raise InvalidParameter("cursor", "damaged or altered; pass next_cursor back unchanged")
        try:
            version, key, issued_for = msgspec.json.decode(body, type=tuple[int, msgspec.Raw, str])
            if version != _VERSION:
                raise ValueError("version")
            decoded = msgspec.json.decode(key, type=self._key_type)
        except (msgspec.ValidationError, msgspec.DecodeError, ValueError, OverflowError):
            raise InvalidParameter("cursor", self._foreign) from None
        if issued_for != bound_to:
            raise InvalidParameter("cursor", self._mismatch)
        return decoded


# --- the /events listing --------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class _EventKey(msgspec.Struct, array_like=True, frozen=True):
    time_us: int  # microseconds since the epoch: exact, and no time zone to get wrong
    event_id: uuid.UUID

    def __post_init__(self) -> None:
        self.position()  # OverflowError, a foreign cursor, if it is no time at all

    def position(self) -> Position:
        return Position(time=_EPOCH + self.time_us * _MICROSECOND, event_id=self.event_id)


_EVENTS = CursorCodec(
    "events",
    _EventKey,
    max_chars=400,
    foreign="not a cursor of this service; start again",
    mismatch=(
        "issued for other filters or another order; repeat the query that returned it, "
        "or start again without a cursor"
    ),
)


def _us(t: datetime | None) -> int | None:
    return None if t is None else (t - _EPOCH) // _MICROSECOND


def events_fingerprint(filters: EventFilter) -> str:
    """A digest of everything that decides which events follow a cursor, and in what order
    (not the limit: pages may differ in size)."""
    return fingerprint(
        [
            filters.types,
            filters.type_prefixes,
            _us(filters.since),
            _us(filters.until),
            filters.is_test,
            filters.identity_id,
            filters.status,
            filters.descending,
        ]
    )


def encode_cursor(position: Position, filters: EventFilter) -> str:
    """The opaque `next_cursor` for the listing `filters` after `position`."""
    key = _EventKey(time_us=(position.time - _EPOCH) // _MICROSECOND, event_id=position.event_id)
    return _EVENTS.encode(key, events_fingerprint(filters))


def decode_cursor(cursor: str, filters: EventFilter) -> Position:
    """Where a cursor from `encode_cursor` resumes; `InvalidParameter` if it is not one of
    ours, or was issued for other filters or another order."""
    return _EVENTS.decode(cursor, events_fingerprint(filters)).position()
