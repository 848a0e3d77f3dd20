"""WEBHOOK_AUTH=oauth: our own RFC 6749 client-credentials endpoint and the tokens it issues.

Paxos's OAuth option POSTs `grant_type=client_credentials` to `/oauth/token` with the client
id and secret we gave it, then sends the token it got as `Authorization: Bearer <token>` on
every webhook. The tokens are self-contained JWTs (HS256), so a token issued by one `serve`
process is valid on every other one and survives restarts; nothing about issued tokens lives
only in memory.

They are signed with a key derived from a random key kept in the database (`service_keys`)
AND the client id and secret (`WEBHOOK_OAUTH_CLIENT_*`), and carry `sub` = the client id,
checked on every request. So read access to the database alone cannot mint a token, changing
the client secret (or id) revokes every token issued under the old one, and
`paxos-events rotate-webhook-key` (a new database key) revokes them all.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

import jwt
import msgspec
import structlog
from litestar import Controller, Request, Response, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.exceptions import InternalServerException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIType, Schema
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db.outages import STORE_ERRORS
from service.settings import Settings, WebhookAuth
from service.store.keys import load_service_key, read_service_key, replace_service_key
from service.web.auth import bearer_token, matches_any
from service.web.openapi import problem, request_body_operation
from service.web.problems import Problem, Unauthenticated

log = structlog.get_logger(__name__)

# The database row of the random key our token keys are derived from.
SIGNING_KEY_NAME = "oauth_token_signing"
ISSUER = "paxos-event-store"
AUDIENCE = "paxos-webhooks"
REALM = "paxos-webhooks"
# A token request is a few short form fields; anything near this size is not one.
TOKEN_REQUEST_MAX_BYTES = 8192
# Processes of one deployment may run on machines whose clocks differ by a little.
CLOCK_LEEWAY_S = 30
# A running process rereads the database key this often, so a key replaced by
# `rotate-webhook-key` stops being accepted everywhere within this time.
KEY_MAX_AGE_S = 5.0
# A token naming a key id we do not hold (one issued by another process after a rotation)
# rereads the key at once, but at most this often, so a stream of forged ids cannot make every
# request a database read.
KEY_REFETCH_INTERVAL_S = 1.0

_FORM = "application/x-www-form-urlencoded"
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_encoder = msgspec.json.Encoder()
_KDF_LABEL = b"paxos-event-store oauth token key v1"
_KID_LABEL = b"paxos-event-store oauth key id v1"


@dataclass(frozen=True, slots=True)
class SigningKey:
    """The HS256 key of our tokens, and the id (`kid`) of the database key it comes from."""

    kid: str
    secret: bytes


def signing_key(database_key: bytes, client_id: str, client_secret: str) -> SigningKey:
    """The key tokens for `client_id` are signed with: HMAC-SHA256 over the client's id and
    secret, keyed by the database key.

    Neither the database key alone nor the client secret alone gives it. The key id depends on
    the database key only (a one-way hash of 32 random bytes): it tells a process that a token
    comes from a key it has not loaded yet, and says nothing about the secret.
    """
    material = b"".join(
        len(part).to_bytes(4, "big") + part
        for part in (_KDF_LABEL, client_id.encode(), client_secret.encode())
    )
    secret = hmac.new(database_key, material, hashlib.sha256).digest()
    kid = hashlib.sha256(_KID_LABEL + database_key).hexdigest()[:16]
    return SigningKey(kid=kid, secret=secret)


async def rotate_signing_key(engine: AsyncEngine) -> None:
    """Replace the database key: every token issued before is refused from now on."""
    await replace_service_key(engine, SIGNING_KEY_NAME)


class OAuthTokenAuthenticator:
    """Bearer tokens that our `/oauth/token` issued: HS256 JWTs signed with the key derived
    from the database key and the client's credentials.

    Issuing and verifying live together so the claims checked are always the claims written.
    Issuing always reads the database key, so new tokens use the current one; verifying uses
    a copy at most `KEY_MAX_AGE_S` old (reread sooner for a token of an unknown key id).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        client_id: str,
        client_secret: str,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._client_id = client_id
        self._client_secret = client_secret
        self._clock = clock
        self._key: SigningKey | None = None
        self._loaded_at = 0.0
        self._attempted_at: float | None = None
        # One reread at a time: requests that find the key stale wait for it and use its result.
        self._lock = asyncio.Lock()

    @classmethod
    async def load(
        cls,
        engine: AsyncEngine,
        client_id: str,
        client_secret: str,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> OAuthTokenAuthenticator:
        """An authenticator with the database key loaded (created on the first start)."""
        authenticator = cls(engine, client_id, client_secret, clock=clock)
        authenticator._use(await load_service_key(engine, SIGNING_KEY_NAME))
        return authenticator

    def _use(self, database_key: bytes) -> SigningKey:
        key = signing_key(database_key, self._client_id, self._client_secret)
        self._key = key
        self._loaded_at = self._clock()
        return key

    async def issue(self, ttl_s: int) -> str:
        """A new access token for the client, valid for `ttl_s` seconds."""
        key = self._use(await load_service_key(self._engine, SIGNING_KEY_NAME))
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": self._client_id,
            "iat": now,
            "exp": now + ttl_s,
            "jti": secrets.token_urlsafe(16),
        }
        return jwt.encode(claims, key.secret, algorithm="HS256", headers={"kid": key.kid})

    async def authenticate(self, headers: Mapping[str, str]) -> None:
        token = bearer_token(headers)
        if token is None:
            raise Unauthenticated("missing bearer token", scheme=f'Bearer realm="{REALM}"')
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            raise _invalid_token("invalid token") from None
        # Every token we issue names its key (the id is public: a hash of the database key).
        if not isinstance(kid, str):
            raise _invalid_token("invalid token")
        key = await self._key_for(kid)
        if kid != key.kid:
            raise _invalid_token("invalid token")
        try:
            # Only HS256: the algorithm comes from us, never from the token's header.
            claims = jwt.decode(
                token,
                key.secret,
                algorithms=["HS256"],
                issuer=ISSUER,
                audience=AUDIENCE,
                leeway=CLOCK_LEEWAY_S,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise _invalid_token("token expired") from None
        except jwt.InvalidTokenError:
            raise _invalid_token("invalid token") from None
        # The key already binds the client; the subject is checked too, so a token is only
        # ever accepted for the client it names.
        subject = claims.get("sub")
        if not isinstance(subject, str) or not matches_any(subject, (self._client_id,)):
            raise _invalid_token("invalid token")

    async def _key_for(self, kid: str) -> SigningKey:
        key = self._key
        if key is None or self._clock() - self._loaded_at >= KEY_MAX_AGE_S:
            return await self._reread(key)
        if kid != key.kid:
            # Perhaps another process issued it after a rotation: look again (rate-limited).
            return await self._reread(key)
        return key

    async def _reread(self, seen: SigningKey | None) -> SigningKey:
        """The key after at most one database read; `seen` is the key the caller found wanting.

        A failed read keeps the key in use (the database is down: nobody rotates it now) and
        is tried again after `KEY_REFETCH_INTERVAL_S`.
        """
        async with self._lock:
            if self._key is not None and self._key is not seen:
                return self._key  # another task reread it while we waited
            now = self._clock()
            recent = (
                self._attempted_at is not None and now - self._attempted_at < KEY_REFETCH_INTERVAL_S
            )
            if self._key is None or not recent:
                self._attempted_at = now
                try:
                    database_key = await read_service_key(self._engine, SIGNING_KEY_NAME)
                    if database_key is None:  # the row was deleted: start a new key
                        database_key = await load_service_key(self._engine, SIGNING_KEY_NAME)
                    return self._use(database_key)
                except STORE_ERRORS as exc:
                    if self._key is None:
                        raise
                    log.warning("oauth signing key reread failed", error=type(exc).__name__)
            return self._key


def _invalid_token(detail: str) -> Unauthenticated:
    # RFC 6750 §3: a rejected token is `error="invalid_token"`; the token itself is never echoed.
    return Unauthenticated(detail, scheme=f'Bearer realm="{REALM}", error="invalid_token"')


class TokenAnswer(msgspec.Struct, frozen=True):
    access_token: str
    token_type: str
    expires_in: int


class OAuthErrorBody(msgspec.Struct, frozen=True):
    error: str
    error_description: str


def _oauth_error(description: str) -> ResponseSpec:
    return ResponseSpec(OAuthErrorBody, description=description, generate_examples=False)


_TOKEN_REQUEST_SCHEMA = Schema(
    type=OpenAPIType.OBJECT,
    required=["grant_type"],
    properties={
        "grant_type": Schema(type=OpenAPIType.STRING, enum=["client_credentials"]),
        "client_id": Schema(type=OpenAPIType.STRING),
        "client_secret": Schema(type=OpenAPIType.STRING),
        "scope": Schema(type=OpenAPIType.STRING),
    },
)


class _OAuthError(Exception):
    """An RFC 6749 §5.2 error answer."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description

    def response(self) -> Response[bytes]:
        headers = dict(_NO_STORE)
        if self.error == "invalid_client":
            headers["WWW-Authenticate"] = f'Basic realm="{REALM}"'
        body = {"error": self.error, "error_description": self.description}
        return Response(
            _encoder.encode(body),
            status_code=self.status,
            media_type="application/json",
            headers=headers,
        )


def _invalid_request(description: str, status: int = 400) -> _OAuthError:
    return _OAuthError(status, "invalid_request", description)


def _invalid_client(description: str) -> _OAuthError:
    return _OAuthError(401, "invalid_client", description)


def _form_fields(body: bytes) -> dict[str, str]:
    """The form's parameters; RFC 6749 §3.1-3.2: empty ones count as absent, none may repeat."""
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise _invalid_request("body is not valid UTF-8 form data") from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        if name in fields:
            raise _invalid_request(f"parameter {name} is given more than once")
        if value:
            fields[name] = value
    return fields


def _basic_credentials(authorization: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The client ids and secrets an `Authorization: Basic` header may mean.

    RFC 6749 §2.3.1 form-urlencodes id and secret before Basic encoding them, and Go's oauth2
    package does so; many other clients do not. Both readings are candidates: a secret without
    `%` or `+` reads the same either way, and either reading still has to match in full.
    """
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        raise _invalid_client("client authentication must use HTTP Basic or form fields")
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise _invalid_client("malformed HTTP Basic credentials") from None
    raw_id, colon, raw_secret = decoded.partition(":")
    if not colon:
        raise _invalid_client("malformed HTTP Basic credentials")
    ids = tuple(dict.fromkeys((unquote_plus(raw_id), raw_id)))
    client_secrets = tuple(dict.fromkeys((unquote_plus(raw_secret), raw_secret)))
    return ids, client_secrets


def _client_credentials(
    authorization: str | None, fields: Mapping[str, str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Candidate ids and secrets from Basic, the form, or both (as Paxos sends them)."""
    form_id = fields.get("client_id")
    form_secret = fields.get("client_secret")
    if authorization is not None:
        ids, client_secrets = _basic_credentials(authorization)
        # Paxos sends both methods at once; RFC 6749 §2.3 forbids mixing them, so accept it only
        # when the two say the same thing. `&`, not `and`: both comparisons always run.
        agree = (form_id is None or matches_any(form_id, ids)) & (
            form_secret is None or matches_any(form_secret, client_secrets)
        )
        if not agree:
            raise _invalid_client("HTTP Basic and form credentials disagree")
        # Form fields have one reading only; where given, they settle which Basic reading counts.
        return (
            (form_id,) if form_id is not None else ids,
            (form_secret,) if form_secret is not None else client_secrets,
        )
    if form_id is None and form_secret is None:
        raise _invalid_request(
            "client credentials are missing: send HTTP Basic or client_id and client_secret"
        )
    if form_id is None or form_secret is None:
        raise _invalid_request("client_id and client_secret go together")
    return (form_id,), (form_secret,)


def _is_form(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == _FORM


class OAuthTokenController(Controller):
    """`POST /oauth/token`: RFC 6749 client credentials for Paxos's OAuth option."""

    path = "/oauth/token"
    tags = ["paxos"]
    request_max_body_size = TOKEN_REQUEST_MAX_BYTES

    @post(
        "/",
        summary="Issue an access token for webhook delivery (client credentials)",
        description=(
            "RFC 6749 client credentials: `application/x-www-form-urlencoded` with "
            "`grant_type=client_credentials`; the client authenticates by HTTP Basic, by "
            "`client_id`/`client_secret` form fields, or both at once if they agree. Errors are "
            "RFC 6749 §5.2 JSON. Served only when WEBHOOK_AUTH=oauth."
        ),
        status_code=200,
        responses={
            200: ResponseSpec(TokenAnswer, description="A token.", generate_examples=False),
            400: _oauth_error("An invalid request or an unsupported grant type (RFC 6749 §5.2)."),
            401: _oauth_error("Unknown client or wrong secret (`invalid_client`)."),
            404: problem("WEBHOOK_AUTH is not oauth: the endpoint is not served."),
            413: _oauth_error("The body is larger than a token request can be."),
        },
        operation_class=request_body_operation(_FORM, _TOKEN_REQUEST_SCHEMA, "RFC 6749 §4.4.2."),
    )
    async def issue_token(
        self, request: Request[Any, Any, State], settings: NamedDependency[Settings]
    ) -> Response[bytes]:
        """Check the client and answer a token, or an RFC 6749 error; never echo a secret."""
        authenticator = request.app.state.get("authenticator")
        if settings.webhook_auth is not WebhookAuth.OAUTH or not isinstance(
            authenticator, OAuthTokenAuthenticator
        ):
            raise Problem(
                "the OAuth token endpoint is served only when WEBHOOK_AUTH=oauth",
                status_code=404,
                type_slug="not-found",
            )
        try:
            await self._authenticated_client(request, settings)
        except _OAuthError as exc:
            log.info("oauth token refused", error=exc.error, reason=exc.description)
            return exc.response()
        ttl = settings.webhook_oauth_token_ttl_s
        token = await authenticator.issue(ttl)
        body = {"access_token": token, "token_type": "Bearer", "expires_in": ttl}
        return Response(
            _encoder.encode(body), status_code=200, media_type="application/json", headers=_NO_STORE
        )

    async def _authenticated_client(
        self, request: Request[Any, Any, State], settings: Settings
    ) -> str:
        if not _is_form(request.headers.get("content-type", "")):
            raise _invalid_request(f"Content-Type must be {_FORM}")
        try:
            body = await request.body()
        except RequestEntityTooLarge:
            raise _invalid_request(
                f"body is larger than {TOKEN_REQUEST_MAX_BYTES} bytes", status=413
            ) from None
        except InternalServerException:
            raise _invalid_request("request body was cut short") from None
        fields = _form_fields(body)
        grant_type = fields.get("grant_type")
        if grant_type is None:
            raise _invalid_request("grant_type is missing")
        if grant_type != "client_credentials":
            raise _OAuthError(
                400, "unsupported_grant_type", "only grant_type=client_credentials is supported"
            )
        # `scope` is accepted and ignored: Paxos documents none, and a token grants one thing.
        ids, client_secrets = _client_credentials(request.headers.get("authorization"), fields)
        expected_id = settings.webhook_oauth_client_id or ""
        expected_secret = settings.webhook_oauth_client_secret or ""
        # `&`, not `and`: the secret is compared even when the id is wrong, so timing does not
        # tell a caller which of the two it got right.
        valid = matches_any(expected_id, ids) & matches_any(expected_secret, client_secrets)
        if not (valid and expected_id and expected_secret):
            raise _invalid_client("unknown client or wrong secret")
        return expected_id
