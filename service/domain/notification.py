"""The thin webhook notification Paxos POSTs, and its strict decoding."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec

# Paxos types are dotted lower-case words (`identity.kyc_refresh.started`); new ones appear
# without notice, so accept any printable ASCII name rather than a fixed list.
EventType = Annotated[str, msgspec.Meta(pattern=r"^[\x21-\x7e]{1,200}$")]
# RFC 3339 requires an offset; a naive time would be guesswork.
AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]

# The event types Paxos documents (PAXOS.md §3, shared/paxos/webhooks.openapi.json). Any other
# type is still accepted and stored; this list only bounds what is worth a series of its own
# (a metric label), where a sender inventing types must not grow the output without bound.
# Transfer kinds that go pending -> completed | failed.
TRANSFER_KINDS = (
    "crypto_deposit",
    "crypto_withdrawal",
    "act_deposit",
    "act_withdrawal",
    "wire_deposit",
    "wire_withdrawal",
    "cubix_deposit",
    "cubix_withdrawal",
    "scb_intrabank_deposit",
    "scb_intrabank_withdrawal",
    "banking_circle_intrabank_deposit",
    "banking_circle_intrabank_withdrawal",
    "bny_intrabank_deposit",
    "bny_intrabank_withdrawal",
    "rtp_deposit",
)
# Transfer kinds that only ever announce their completion.
INTERNAL_TRANSFER_KINDS = ("internal_transfer_debit", "internal_transfer_credit")
KNOWN_TYPES: tuple[str, ...] = (
    "identity.approved",
    "identity.denied",
    "identity.disabled",
    "identity.documents_required",
    "identity.kyc_refresh.started",
    "identity.kyc_refresh.completed",
    "identity.kyc_refresh.expired",
    "identity.control.created",
    "identity.control.deleted",
    "orchestration.processing",
    "orchestration.completed",
    "orchestration.failed",
    *(f"transfer.{k}.{s}" for k in TRANSFER_KINDS for s in ("pending", "completed", "failed")),
    *(f"transfer.{k}.completed" for k in INTERNAL_TRANSFER_KINDS),
)


class Notification(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """A Paxos webhook body: six fields, unsigned, a pointer to the real event."""

    id: uuid.UUID
    type: EventType
    source: Literal["com.paxos"]
    time: AwareDatetime
    object: Literal["event"]
    # Older deliveries have no is_test: Paxos says to read it as false.
    is_test: bool = False


class NotJSON(ValueError):
    """The body is not JSON at all (HTTP 400)."""


class NotANotification(ValueError):
    """The body is JSON but not a notification (HTTP 422); the message names the field."""


_decoder = msgspec.json.Decoder(Notification)


def decode_notification(body: bytes) -> Notification:
    """Decode and validate a webhook body, or raise `NotJSON` / `NotANotification`."""
    try:
        # msgspec skips unknown members without checking their UTF-8, and the body is stored
        # as text: check it all.
        body.decode()
    except UnicodeDecodeError as exc:
        raise NotJSON(f"body is not valid JSON: invalid UTF-8 at byte {exc.start}") from None
    try:
        notification = _decoder.decode(body)
    except msgspec.ValidationError as exc:
        # Validation stops at the first wrong field, before the end of the body: make sure the
        # body is JSON at all before calling it a bad notification.
        try:
            msgspec.json.decode(body)
        except msgspec.DecodeError as syntax:
            raise NotJSON(f"body is not valid JSON: {syntax}") from None
        except RecursionError:
            raise NotJSON(_TOO_DEEP) from None
        raise NotANotification(_describe(str(exc))) from None
    except msgspec.DecodeError as exc:
        raise NotJSON(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        # msgspec's own depth limit (it does not use the Python stack), not a crash.
        raise NotJSON(_TOO_DEEP) from None
    _check_time(notification.time)
    return notification


_TOO_DEEP = "body is not valid JSON: nested too deeply"


def _check_time(time: datetime) -> None:
    # RFC 3339 allows years 0001-9999 with any offset, so `0001-01-01T00:00:00+14:00` decodes
    # but is in year 0 once in UTC: no datetime can hold it, and the database driver fails on
    # it inside the batch. Every time that converts lies within PostgreSQL's range.
    try:
        time.astimezone(UTC)
    except (OverflowError, ValueError):
        raise NotANotification(
            "time: out of range: in UTC it must fall between 0001-01-01 and 9999-12-31"
        ) from None


def _describe(message: str) -> str:
    # msgspec says "Expected `str`, got `int` - at `$.type`"; put the field first.
    if " - at `$." in message:
        what, _, where = message.partition(" - at `$.")
        return f"{where.rstrip('`')}: {what}"
    return message
