"""Standard Webhooks (standardwebhooks.com): signing secrets and the headers of a signed delivery.

A secret is `whsec_` + base64 of random bytes; the key is those bytes. A message is signed as
`v1,` + base64(HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}")); several signatures
(a rotation's old and new secret) are space-separated in one `webhook-signature` header.
Here, not in the delivery feature, because the admin API makes the secrets it hands out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Iterable

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret
SECRET_BYTES = 32  # the specification asks for 24 to 64


def new_secret() -> bytes:
    """A fresh signing key."""
    return secrets.token_bytes(SECRET_BYTES)


def format_secret(key: bytes) -> str:
    """The key as the receiver configures it: `whsec_<base64>`."""
    return SECRET_PREFIX + base64.b64encode(key).decode("ascii")


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """One `v1,<base64>` signature of `body` sent as message `msg_id` at `timestamp`."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signed_headers(
    keys: Iterable[bytes], msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The headers of a delivery of `body` signed with every key in `keys`."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(k, msg_id, timestamp, body) for k in keys),
        "content-type": "application/json",
    }
