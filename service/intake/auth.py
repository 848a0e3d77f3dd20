"""Who may deliver webhooks: one `Authenticator` per `WEBHOOK_AUTH` mode.

Every mode answers the same question, "may this request deliver?", from the request headers
alone, and raises `Unauthenticated` (401) when the answer is no. Secrets are compared in
constant time and never logged or echoed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

import httpx
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from service.settings import Settings, WebhookAuth
from service.web.auth import matches_any
from service.web.problems import Unauthenticated

log = structlog.get_logger(__name__)


class Authenticator(Protocol):
    async def authenticate(self, headers: Mapping[str, str]) -> None:
        """Return if the sender is authentic; raise `Unauthenticated` otherwise."""


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


async def build_authenticator(
    settings: Settings, engine: AsyncEngine, client: httpx.AsyncClient
) -> Authenticator:
    """The webhook authenticator that `WEBHOOK_AUTH` names."""
    match settings.webhook_auth:
        case WebhookAuth.API_KEY:
            return ApiKeyAuthenticator(settings.webhook_api_key_header, settings.webhook_api_keys)
        case WebhookAuth.OAUTH:
            from service.intake.oauth import OAuthTokenAuthenticator

            return await OAuthTokenAuthenticator.load(
                engine,
                settings.webhook_oauth_client_id or "",
                settings.webhook_oauth_client_secret or "",
            )
        case WebhookAuth.JWT:
            from service.intake.jwt import JwtAuthenticator

            if not (settings.webhook_jwt_subjects or settings.webhook_jwt_azp):
                log.warning(
                    "webhook JWTs are not pinned to a client: any client of the identity "
                    "provider with a token for WEBHOOK_JWT_AUDIENCE may deliver; set "
                    "WEBHOOK_JWT_SUBJECTS or WEBHOOK_JWT_AZP"
                )
            return JwtAuthenticator(
                jwks_url=settings.webhook_jwt_jwks_url or "",
                issuer=settings.webhook_jwt_issuer or "",
                audience=settings.webhook_jwt_audience or "",
                client=client,
                subjects=settings.webhook_jwt_subjects,
                authorized_parties=settings.webhook_jwt_azp,
            )
        case WebhookAuth.NONE:
            return OpenAuthenticator()
