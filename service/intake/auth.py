"""Who may deliver webhooks: one `Authenticator` per `WEBHOOK_AUTH` mode.

Every mode answers the same question, "may this request deliver?", from the request headers
alone, and raises `Unauthenticated` (401) when the answer is no. Secrets are compared in
constant time and never logged or echoed.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from typing import Protocol

from service.web.problems import Unauthenticated


class Authenticator(Protocol):
    async def authenticate(self, headers: Mapping[str, str]) -> None:
        """Return if the sender is authentic; raise `Unauthenticated` otherwise."""


def matches_any(candidate: str, secrets: Iterable[str]) -> bool:
    """True if `candidate` equals one of `secrets`, in time independent of where they differ.

    Every secret is compared (no early exit), so timing does not tell which one matched.
    """
    given = candidate.encode()
    found = False
    for secret in secrets:
        found |= hmac.compare_digest(given, secret.encode())
    return found


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    value = headers.get("authorization")
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class ApiKeyAuthenticator:
    """Paxos's API-key option: a header of the consumer's choosing carries one of the keys.

    Several keys are accepted at once so a key can be rotated without dropping deliveries.
    """

    def __init__(self, header: str, keys: Iterable[str]) -> None:
        self._header = header.lower()
        self._keys = tuple(keys)

    async def authenticate(self, headers: Mapping[str, str]) -> None:
        value = headers.get(self._header)
        if value is None:
            raise Unauthenticated(f"missing API key header {self._header}", scheme="ApiKey")
        if not matches_any(value, self._keys):
            raise Unauthenticated("invalid API key", scheme="ApiKey")


class OpenAuthenticator:
    """WEBHOOK_AUTH=none: anyone may deliver (refused outside --demo by the settings)."""

    async def authenticate(self, headers: Mapping[str, str]) -> None:
        return None
