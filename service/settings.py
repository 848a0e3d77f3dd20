"""Typed settings, read once from the environment and validated before anything starts.

Every setting of DESIGN.md §4 is a field here. `Settings.from_env` turns the environment into
a `Settings` or raises `SettingsError` with one line that names the offending variable; the CLI
prints that line and exits. Secrets are kept out of `repr` so a stray log of the settings
cannot leak them.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")


class SettingsError(ValueError):
    """A setting is missing or wrong; the message is one line that names it."""


class WebhookAuth(enum.StrEnum):
    API_KEY = "api_key"
    OAUTH = "oauth"
    JWT = "jwt"
    NONE = "none"


class LogFormat(enum.StrEnum):
    CONSOLE = "console"
    JSON = "json"


SANDBOX_API_URL = "https://api.sandbox.paxos.com/v2"
SANDBOX_TOKEN_URL = "https://oauth.sandbox.paxos.com/oauth2/token"  # noqa: S105 - a URL
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
# The shortest key or token we accept for a secret the deployment chooses itself (webhook keys,
# our OAuth client secret, read and admin tokens): 16 characters, e.g. `secrets.token_urlsafe(24)`.
MIN_SECRET_LENGTH = 16


def _secret() -> Any:
    return field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Settings:
    """The service's configuration; tests build it directly, the CLI from the environment."""

    database_url: str | None = field(default=None, repr=False)
    # A streaming replica for the read API, the console's pages, exports and the feed (None:
    # everything reads the primary); see docs/deploying.md "Read replicas".
    database_read_url: str | None = field(default=None, repr=False)
    data_dir: Path = Path(".data")
    host: str = "127.0.0.1"
    port: int = 8000

    webhook_auth: WebhookAuth = WebhookAuth.API_KEY
    webhook_api_key_header: str = "X-Api-Key"
    webhook_api_keys: tuple[str, ...] = field(default=(), repr=False)
    webhook_oauth_client_id: str | None = None
    webhook_oauth_client_secret: str | None = _secret()
    webhook_oauth_token_ttl_s: int = 3600
    webhook_jwt_jwks_url: str | None = None
    webhook_jwt_issuer: str | None = None
    webhook_jwt_audience: str | None = None
    # Pinning the identity provider's client (empty: any): accepted `sub`, `azp`/`client_id`.
    webhook_jwt_subjects: tuple[str, ...] = ()
    webhook_jwt_azp: tuple[str, ...] = ()
    webhook_max_body_bytes: int = 65536

    paxos_api_url: str = SANDBOX_API_URL
    paxos_token_url: str = SANDBOX_TOKEN_URL
    paxos_client_id: str | None = None
    paxos_client_secret: str | None = _secret()
    paxos_scope: str = "events:read_event"
    paxos_api_rps: float = 10.0
    paxos_max_connections: int = 32
    # How long one Get/List Events call may take before it counts as failed (and is retried).
    paxos_timeout_s: float = 10.0
    fetch_retry_horizon_s: int = 7 * 86400
    # The longest wait between two fetch attempts of an event (backoff doubles up to it).
    fetch_retry_max_delay_s: int = 900
    # A claim's lease: an event claimed by a process that dies is fetched again after it.
    fetch_lease_s: int = 60

    api_read_tokens: tuple[str, ...] = field(default=(), repr=False)
    api_admin_tokens: tuple[str, ...] = field(default=(), repr=False)

    reconcile_interval_s: int = 300
    reconcile_lookback_s: int = 86400
    reconcile_include_test: bool = False

    # /health/ready fails when a projection is further behind the journal than this.
    projection_max_lag_s: int = 60

    # The sealer seals the journal this often; verify reports rows unsealed for longer than
    # audit_max_unsealed_age_s.
    seal_interval_s: float = 5.0
    audit_max_unsealed_age_s: int = 3600
    # Signed seals (docs/audit.md): the Ed25519 private key (PEM) the sealer signs each seal's
    # hash with (None: seals unsigned), and a file of trusted public keys (PEM, several) that
    # verify accepts besides the signing key's own (rotated-out keys).
    audit_signing_key: Path | None = None
    audit_public_keys: Path | None = None
    # Anchors outside the database (docs/audit.md): the sinks the seal head is written to
    # (file:///dir, s3://bucket/prefix; empty: none), at most this often; S3 Object Lock
    # retention (None: no lock); the S3 endpoint (None: AWS); an RFC 3161 TSA (None: no token);
    # /health/ready says anchoring is degraded after this long without a successful anchor.
    audit_anchor_url: tuple[str, ...] = ()
    audit_anchor_interval_s: int = 60
    audit_anchor_retain_days: int | None = None
    audit_anchor_s3_endpoint: str | None = None
    audit_tsa_url: str | None = None
    audit_anchor_max_lag_s: int = 900

    # Hardening (docs/security.md): failed-authentication throttle and the HTTP server's limits.
    auth_failure_limit: int = 20
    auth_failure_window_s: int = 60
    trusted_proxies: tuple[str, ...] = ()
    http_request_timeout_s: int = 15
    http_max_header_bytes: int = 32768
    http_max_connections: int = 1000

    # Push subscriptions (service/subscriptions/): whether URLs may lead to loopback, link-local
    # or private addresses (demo, tests); how long a delivery is retried before the
    # subscription becomes `failing`; the longest wait between two attempts (the backoff
    # doubles from 5 s up to it); how long a rotated-out signing secret still signs.
    subscription_allow_private_urls: bool = False
    subscription_retry_horizon_s: int = 3 * 86400
    subscription_retry_max_delay_s: int = 3600
    subscription_secret_grace_s: int = 86400

    log_level: str = "info"
    log_format: LogFormat = LogFormat.CONSOLE

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Read every setting from `env`; raise `SettingsError` naming the first bad one.

        Each value is checked alone here; `check` then checks the ones that go together.
        """
        r = _Reader(env)
        settings = cls(
            database_url=r.get("DATABASE_URL", _database_url, None),
            database_read_url=r.get("DATABASE_READ_URL", _database_url, None),
            data_dir=r.get("DATA_DIR", _path, Path(".data")),
            host=r.get("HOST", _nonempty, "127.0.0.1"),
            port=r.get("PORT", _int_in(1, 65535), 8000),
            webhook_auth=r.get("WEBHOOK_AUTH", _choice(WebhookAuth), WebhookAuth.API_KEY),
            webhook_api_key_header=r.get("WEBHOOK_API_KEY_HEADER", _header_name, "X-Api-Key"),
            webhook_api_keys=r.get("WEBHOOK_API_KEYS", _secrets_csv, ()),
            webhook_oauth_client_id=r.get("WEBHOOK_OAUTH_CLIENT_ID", _nonempty, None),
            webhook_oauth_client_secret=r.get("WEBHOOK_OAUTH_CLIENT_SECRET", _secret_value, None),
            webhook_oauth_token_ttl_s=r.get("WEBHOOK_OAUTH_TOKEN_TTL_S", _int_in(60, 86400), 3600),
            webhook_jwt_jwks_url=r.get("WEBHOOK_JWT_JWKS_URL", _http_url, None),
            webhook_jwt_issuer=r.get("WEBHOOK_JWT_ISSUER", _nonempty, None),
            webhook_jwt_audience=r.get("WEBHOOK_JWT_AUDIENCE", _nonempty, None),
            webhook_jwt_subjects=r.get("WEBHOOK_JWT_SUBJECTS", _csv, ()),
            webhook_jwt_azp=r.get("WEBHOOK_JWT_AZP", _csv, ()),
            webhook_max_body_bytes=r.get("WEBHOOK_MAX_BODY_BYTES", _int_in(256, 10_485_760), 65536),
            paxos_api_url=r.get("PAXOS_API_URL", _http_url, SANDBOX_API_URL),
            paxos_token_url=r.get("PAXOS_TOKEN_URL", _http_url, SANDBOX_TOKEN_URL),
            paxos_client_id=r.get("PAXOS_CLIENT_ID", _nonempty, None),
            paxos_client_secret=r.get("PAXOS_CLIENT_SECRET", _nonempty, None),
            paxos_scope=r.get("PAXOS_SCOPE", _nonempty, "events:read_event"),
            paxos_api_rps=r.get("PAXOS_API_RPS", _float_in(0.1, 10_000.0), 10.0),
            paxos_max_connections=r.get("PAXOS_MAX_CONNECTIONS", _int_in(1, 256), 32),
            paxos_timeout_s=r.get("PAXOS_TIMEOUT_S", _float_in(0.5, 120.0), 10.0),
            fetch_retry_horizon_s=r.get(
                "FETCH_RETRY_HORIZON_S", _int_in(60, 90 * 86400), 7 * 86400
            ),
            fetch_retry_max_delay_s=r.get("FETCH_RETRY_MAX_DELAY_S", _int_in(2, 86400), 900),
            fetch_lease_s=r.get("FETCH_LEASE_S", _int_in(15, 3600), 60),
            api_read_tokens=r.get("API_READ_TOKENS", _secrets_csv, ()),
            api_admin_tokens=r.get("API_ADMIN_TOKENS", _secrets_csv, ()),
            reconcile_interval_s=r.get("RECONCILE_INTERVAL_S", _int_in(1, 86400), 300),
            reconcile_lookback_s=r.get("RECONCILE_LOOKBACK_S", _int_in(0, 30 * 86400), 86400),
            reconcile_include_test=r.get("RECONCILE_INCLUDE_TEST", _bool, False),
            projection_max_lag_s=r.get("PROJECTION_MAX_LAG_S", _int_in(1, 7 * 86400), 60),
            seal_interval_s=r.get("SEAL_INTERVAL_S", _float_in(0.1, 3600.0), 5.0),
            audit_max_unsealed_age_s=r.get(
                "AUDIT_MAX_UNSEALED_AGE_S", _int_in(1, 30 * 86400), 3600
            ),
            audit_signing_key=r.get("AUDIT_SIGNING_KEY", _path, None),
            audit_public_keys=r.get("AUDIT_PUBLIC_KEYS", _path, None),
            audit_anchor_url=r.get("AUDIT_ANCHOR_URL", _anchor_urls, ()),
            audit_anchor_interval_s=r.get("AUDIT_ANCHOR_INTERVAL_S", _int_in(1, 86400), 60),
            audit_anchor_retain_days=r.get("AUDIT_ANCHOR_RETAIN_DAYS", _int_in(1, 100 * 365), None),
            audit_anchor_s3_endpoint=r.get("AUDIT_ANCHOR_S3_ENDPOINT", _http_url, None),
            audit_tsa_url=r.get("AUDIT_TSA_URL", _http_url, None),
            audit_anchor_max_lag_s=r.get("AUDIT_ANCHOR_MAX_LAG_S", _int_in(1, 30 * 86400), 900),
            auth_failure_limit=r.get("AUTH_FAILURE_LIMIT", _int_in(1, 1_000_000), 20),
            auth_failure_window_s=r.get("AUTH_FAILURE_WINDOW_S", _int_in(1, 86400), 60),
            trusted_proxies=r.get("TRUSTED_PROXIES", _networks, ()),
            http_request_timeout_s=r.get("HTTP_REQUEST_TIMEOUT_S", _int_in(1, 3600), 15),
            http_max_header_bytes=r.get("HTTP_MAX_HEADER_BYTES", _int_in(1024, 1_048_576), 32768),
            http_max_connections=r.get("HTTP_MAX_CONNECTIONS", _int_in(1, 1_000_000), 1000),
            subscription_allow_private_urls=r.get("SUBSCRIPTION_ALLOW_PRIVATE_URLS", _bool, False),
            subscription_retry_horizon_s=r.get(
                "SUBSCRIPTION_RETRY_HORIZON_S", _int_in(60, 90 * 86400), 3 * 86400
            ),
            subscription_retry_max_delay_s=r.get(
                "SUBSCRIPTION_RETRY_MAX_DELAY_S", _int_in(1, 86400), 3600
            ),
            subscription_secret_grace_s=r.get(
                "SUBSCRIPTION_SECRET_GRACE_S", _int_in(0, 30 * 86400), 86400
            ),
            log_level=r.get("LOG_LEVEL", _choice_str(LOG_LEVELS), "info"),
            log_format=r.get("LOG_FORMAT", _choice(LogFormat), LogFormat.CONSOLE),
        )
        return settings

    def check(self, *, demo: bool = False) -> None:
        """Check the settings that only make sense together; raise `SettingsError` if not."""
        auth = self.webhook_auth
        if auth is WebhookAuth.API_KEY and not self.webhook_api_keys:
            raise SettingsError(
                "WEBHOOK_API_KEYS: required when WEBHOOK_AUTH=api_key "
                "(comma-separated accepted keys)"
            )
        if auth is WebhookAuth.OAUTH:
            for name, value in (
                ("WEBHOOK_OAUTH_CLIENT_ID", self.webhook_oauth_client_id),
                ("WEBHOOK_OAUTH_CLIENT_SECRET", self.webhook_oauth_client_secret),
            ):
                if not value:
                    raise SettingsError(f"{name}: required when WEBHOOK_AUTH=oauth")
        if auth is WebhookAuth.JWT:
            for name, value in (
                ("WEBHOOK_JWT_JWKS_URL", self.webhook_jwt_jwks_url),
                ("WEBHOOK_JWT_ISSUER", self.webhook_jwt_issuer),
                ("WEBHOOK_JWT_AUDIENCE", self.webhook_jwt_audience),
            ):
                if not value:
                    raise SettingsError(f"{name}: required when WEBHOOK_AUTH=jwt")
        if auth is WebhookAuth.NONE and not demo:
            raise SettingsError(
                "WEBHOOK_AUTH: 'none' accepts webhooks from anyone and is only allowed with --demo"
            )
        if bool(self.paxos_client_id) != bool(self.paxos_client_secret):
            raise SettingsError(
                "PAXOS_CLIENT_SECRET: PAXOS_CLIENT_ID and PAXOS_CLIENT_SECRET go together"
            )
        if overlap := set(self.api_read_tokens) & set(self.api_admin_tokens):
            del overlap  # never echo a token
            raise SettingsError(
                "API_ADMIN_TOKENS: a token is listed in both API_READ_TOKENS and API_ADMIN_TOKENS"
            )

    def replace(self, **changes: Any) -> Settings:
        """A copy with `changes` applied (tests and the demo use it)."""
        return dataclasses.replace(self, **changes)

    @property
    def has_paxos_credentials(self) -> bool:
        return bool(self.paxos_client_id and self.paxos_client_secret)

    @property
    def configures_nothing(self) -> bool:
        """No database, Paxos credentials, API tokens or webhook authentication set: a first
        `make run` on the embedded database, which `serve` answers with the demo."""
        return not (
            self.database_url
            or self.paxos_client_id
            or self.paxos_client_secret
            or self.api_read_tokens
            or self.api_admin_tokens
            or self.webhook_auth is not WebhookAuth.API_KEY
            or self.webhook_api_keys
            or self.webhook_oauth_client_id
            or self.webhook_oauth_client_secret
            or self.webhook_jwt_jwks_url
            or self.webhook_jwt_issuer
            or self.webhook_jwt_audience
            or self.webhook_jwt_subjects
            or self.webhook_jwt_azp
        )


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def get(self, name: str, parse: Callable[[str], T], default: T) -> T:
        raw = self._env.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            return parse(raw.strip())
        except (ValueError, TypeError) as exc:
            raise SettingsError(f"{name}: {exc}") from None


def _nonempty(raw: str) -> str:
    return raw


def _path(raw: str) -> Path:
    return Path(raw).expanduser()


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"must be a whole number from {low} to {high}, got {raw!r}") from None
        if not low <= value <= high:
            raise ValueError(f"must be from {low} to {high}, got {value}")
        return value

    return parse


def _float_in(low: float, high: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"must be a number from {low:g} to {high:g}, got {raw!r}") from None
        if not low <= value <= high:
            raise ValueError(f"must be from {low:g} to {high:g}, got {value:g}")
        return value

    return parse


def _choice(kind: type[enum.StrEnum]) -> Callable[[str], Any]:
    def parse(raw: str) -> Any:
        try:
            return kind(raw.lower())
        except ValueError:
            allowed = ", ".join(m.value for m in kind)
            raise ValueError(f"must be one of {allowed}, got {raw!r}") from None

    return parse


def _choice_str(allowed: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw.lower() not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}, got {raw!r}")
        return raw.lower()

    return parse


def _bool(raw: str) -> bool:
    value = raw.lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"must be true or false, got {raw!r}")


def _csv(raw: str) -> tuple[str, ...]:
    values = tuple(v.strip() for v in raw.split(","))
    if any(not v for v in values):
        raise ValueError("has an empty entry (comma-separated values, none empty)")
    return values


def _secret_value(raw: str) -> str:
    # Never echo the value: it is a secret, however short.
    if len(raw) < MIN_SECRET_LENGTH:
        raise ValueError(
            f"shorter than {MIN_SECRET_LENGTH} characters; choose a longer random value, e.g. "
            "python3 -c 'import secrets; print(secrets.token_urlsafe(24))'"
        )
    return raw


def _secrets_csv(raw: str) -> tuple[str, ...]:
    values = _csv(raw)
    if any(len(v) < MIN_SECRET_LENGTH for v in values):
        raise ValueError(
            f"a value is shorter than {MIN_SECRET_LENGTH} characters; choose longer random "
            "values, e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(24))'"
        )
    return values


_HEADER_CHARS = set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _header_name(raw: str) -> str:
    if not set(raw) <= _HEADER_CHARS:
        raise ValueError(f"is not a valid HTTP header name: {raw!r}")
    return raw


def _http_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"must be an http(s) URL, got {raw!r}")
    if parts.username is not None or parts.password is not None:
        # The URL is shown in logs, errors and the console: a secret in it would leak there.
        raise ValueError("must not carry credentials (user:password@); set them apart")
    return raw.rstrip("/")


def _anchor_urls(raw: str) -> tuple[str, ...]:
    values = _csv(raw)
    for value in values:
        parts = urlsplit(value)
        if parts.scheme == "file" and parts.path not in ("", "/") and not parts.netloc:
            continue
        if parts.scheme == "s3" and parts.netloc:
            continue
        raise ValueError(f"must be file:///dir or s3://bucket/prefix URLs, got {value!r}")
    return values


def _networks(raw: str) -> tuple[str, ...]:
    values = _csv(raw)
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"must be IP addresses or networks (CIDR), got {value!r}") from None
    return values


def _database_url(raw: str) -> str:
    # Never echo the URL: it may carry a password.
    scheme = urlsplit(raw).scheme
    if scheme not in ("postgresql", "postgres", "postgresql+asyncpg"):
        raise ValueError("must be a postgresql:// URL")
    return raw
