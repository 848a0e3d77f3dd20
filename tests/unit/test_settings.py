"""Settings: every variable of DESIGN.md §4, validated, and a bad one named in one line."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from service.settings import MIN_SECRET_LENGTH, Settings, SettingsError, WebhookAuth
from tests.support.paths import ROOT

# The same on every PostgreSQL: CI runs these on one server only.
pytestmark = pytest.mark.server_independent

KEY = "webhook-key-00001"  # keys and tokens are at least 16 characters
VALID = {"WEBHOOK_API_KEYS": KEY}


def env_names() -> list[str]:
    return [f.name.upper() for f in dataclasses.fields(Settings)]


def test_defaults_match_the_design() -> None:
    s = Settings.from_env(VALID)
    assert s.database_url is None
    assert s.data_dir == Path(".data")
    assert (s.host, s.port) == ("127.0.0.1", 8000)
    assert s.webhook_auth is WebhookAuth.API_KEY
    assert s.webhook_api_key_header == "X-Api-Key"
    assert s.webhook_oauth_token_ttl_s == 3600
    assert s.webhook_max_body_bytes == 65536
    assert s.paxos_api_url == "https://api.sandbox.paxos.com/v2"
    assert s.paxos_token_url == "https://oauth.sandbox.paxos.com/oauth2/token"
    assert s.paxos_scope == "events:read_event"
    assert s.paxos_api_rps == 10
    assert s.fetch_retry_horizon_s == 7 * 86400
    assert (s.reconcile_interval_s, s.reconcile_lookback_s) == (300, 86400)
    assert (s.log_level, s.log_format.value) == ("info", "console")
    s.check()


def test_every_variable_is_read() -> None:
    env = {
        "DATABASE_URL": "postgresql://u:p@db:5432/x",
        "DATABASE_READ_URL": "postgresql://u:p@replica:5432/x",
        "DATA_DIR": "/srv/paxos",
        "HOST": "10.1.2.3",
        "PORT": "9000",
        "WEBHOOK_AUTH": "oauth",
        "WEBHOOK_API_KEY_HEADER": "X-Paxos-Key",
        "WEBHOOK_API_KEYS": "key-a-0000000001, key-b-0000000002 ,key-c-0000000003",
        "WEBHOOK_OAUTH_CLIENT_ID": "cid",
        "WEBHOOK_OAUTH_CLIENT_SECRET": "oauth-secret-0001",
        "WEBHOOK_OAUTH_TOKEN_TTL_S": "600",
        "WEBHOOK_JWT_JWKS_URL": "https://idp.example/jwks.json",
        "WEBHOOK_JWT_ISSUER": "https://idp.example/",
        "WEBHOOK_JWT_AUDIENCE": "paxos",
        "WEBHOOK_JWT_SUBJECTS": "paxos-a, paxos-b",
        "WEBHOOK_JWT_AZP": "paxos-client",
        "WEBHOOK_MAX_BODY_BYTES": "1024",
        "PAXOS_API_URL": "https://api.paxos.com/v2/",
        "PAXOS_TOKEN_URL": "https://oauth.paxos.com/oauth2/token",
        "PAXOS_CLIENT_ID": "pid",
        "PAXOS_CLIENT_SECRET": "psecret",
        "PAXOS_SCOPE": "events:read_event other",
        "PAXOS_API_RPS": "50",
        "PAXOS_MAX_CONNECTIONS": "16",
        "PAXOS_TIMEOUT_S": "2.5",
        "FETCH_RETRY_HORIZON_S": "86400",
        "FETCH_RETRY_MAX_DELAY_S": "60",
        "FETCH_LEASE_S": "30",
        "API_READ_TOKENS": "read-token-000001,read-token-000002",
        "API_ADMIN_TOKENS": "admin-token-00001",
        "RECONCILE_INTERVAL_S": "60",
        "RECONCILE_LOOKBACK_S": "3600",
        "RECONCILE_INCLUDE_TEST": "true",
        "PROJECTION_MAX_LAG_S": "120",
        "SEAL_INTERVAL_S": "2.5",
        "AUDIT_MAX_UNSEALED_AGE_S": "600",
        "AUDIT_SIGNING_KEY": "/etc/paxos/seal-key.pem",
        "AUDIT_PUBLIC_KEYS": "/etc/paxos/trusted-keys.pem",
        "AUDIT_ANCHOR_URL": "file:///srv/anchors, s3://bucket/prefix",
        "AUDIT_ANCHOR_INTERVAL_S": "30",
        "AUDIT_ANCHOR_RETAIN_DAYS": "2555",
        "AUDIT_ANCHOR_S3_ENDPOINT": "http://127.0.0.1:9000",
        "AUDIT_TSA_URL": "http://127.0.0.1:3180/tsa",
        "AUDIT_ANCHOR_MAX_LAG_S": "300",
        "AUTH_FAILURE_LIMIT": "5",
        "AUTH_FAILURE_WINDOW_S": "30",
        "TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1",
        "HTTP_REQUEST_TIMEOUT_S": "20",
        "HTTP_MAX_HEADER_BYTES": "16384",
        "HTTP_MAX_CONNECTIONS": "500",
        "SUBSCRIPTION_ALLOW_PRIVATE_URLS": "true",
        "SUBSCRIPTION_RETRY_HORIZON_S": "3600",
        "SUBSCRIPTION_RETRY_MAX_DELAY_S": "60",
        "SUBSCRIPTION_SECRET_GRACE_S": "600",
        "LOG_LEVEL": "DEBUG",
        "LOG_FORMAT": "json",
    }
    assert sorted(env) == sorted(env_names())
    s = Settings.from_env(env)
    s.check()
    assert s.port == 9000
    assert s.database_read_url == "postgresql://u:p@replica:5432/x"
    assert s.webhook_api_keys == ("key-a-0000000001", "key-b-0000000002", "key-c-0000000003")
    assert s.paxos_api_url == "https://api.paxos.com/v2"
    assert s.paxos_api_rps == 50.0
    assert s.paxos_max_connections == 16
    assert s.paxos_timeout_s == 2.5
    assert s.fetch_retry_horizon_s == 86400
    assert s.fetch_retry_max_delay_s == 60
    assert s.fetch_lease_s == 30
    assert s.reconcile_include_test is True
    assert s.projection_max_lag_s == 120
    assert s.seal_interval_s == 2.5
    assert s.audit_max_unsealed_age_s == 600
    assert s.audit_signing_key == Path("/etc/paxos/seal-key.pem")
    assert s.audit_public_keys == Path("/etc/paxos/trusted-keys.pem")
    assert s.audit_anchor_url == ("file:///srv/anchors", "s3://bucket/prefix")
    assert (s.audit_anchor_interval_s, s.audit_anchor_retain_days) == (30, 2555)
    assert s.audit_anchor_s3_endpoint == "http://127.0.0.1:9000"
    assert s.audit_tsa_url == "http://127.0.0.1:3180/tsa"
    assert s.audit_anchor_max_lag_s == 300
    assert s.api_read_tokens == ("read-token-000001", "read-token-000002")
    assert s.log_level == "debug"
    assert s.data_dir == Path("/srv/paxos")
    assert (s.auth_failure_limit, s.auth_failure_window_s) == (5, 30)
    assert s.trusted_proxies == ("10.0.0.0/8", "127.0.0.1")
    assert (s.http_request_timeout_s, s.http_max_header_bytes) == (20, 16384)
    assert s.http_max_connections == 500
    assert s.webhook_jwt_subjects == ("paxos-a", "paxos-b")
    assert s.webhook_jwt_azp == ("paxos-client",)
    assert s.subscription_allow_private_urls is True
    assert (s.subscription_retry_horizon_s, s.subscription_secret_grace_s) == (3600, 600)
    assert s.subscription_retry_max_delay_s == 60


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"PORT": "eighty"}, "PORT"),
        ({"AUDIT_ANCHOR_URL": "ftp://host/dir"}, "AUDIT_ANCHOR_URL"),
        ({"AUDIT_ANCHOR_URL": "file://relative"}, "AUDIT_ANCHOR_URL"),
        ({"AUDIT_ANCHOR_RETAIN_DAYS": "0"}, "AUDIT_ANCHOR_RETAIN_DAYS"),
        ({"AUDIT_TSA_URL": "tsa.example"}, "AUDIT_TSA_URL"),
        ({"PORT": "70000"}, "PORT"),
        ({"WEBHOOK_AUTH": "basic"}, "WEBHOOK_AUTH"),
        ({"WEBHOOK_API_KEY_HEADER": "X Api Key"}, "WEBHOOK_API_KEY_HEADER"),
        ({"WEBHOOK_API_KEYS": "a,,b"}, "WEBHOOK_API_KEYS"),
        ({"WEBHOOK_MAX_BODY_BYTES": "-1"}, "WEBHOOK_MAX_BODY_BYTES"),
        ({"PAXOS_API_URL": "ftp://x"}, "PAXOS_API_URL"),
        ({"PAXOS_API_RPS": "fast"}, "PAXOS_API_RPS"),
        ({"PAXOS_API_RPS": "0"}, "PAXOS_API_RPS"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"RECONCILE_INTERVAL_S": "0"}, "RECONCILE_INTERVAL_S"),
        ({"RECONCILE_INCLUDE_TEST": "maybe"}, "RECONCILE_INCLUDE_TEST"),
        ({"TRUSTED_PROXIES": "proxy.internal"}, "TRUSTED_PROXIES"),
        ({"AUTH_FAILURE_LIMIT": "0"}, "AUTH_FAILURE_LIMIT"),
        ({"HTTP_MAX_HEADER_BYTES": "10"}, "HTTP_MAX_HEADER_BYTES"),
        ({"SEAL_INTERVAL_S": "0"}, "SEAL_INTERVAL_S"),
        ({"AUDIT_MAX_UNSEALED_AGE_S": "soon"}, "AUDIT_MAX_UNSEALED_AGE_S"),
    ],
)
def test_a_wrong_value_is_named(env: dict[str, str], names: str) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({**VALID, **env})
    message = str(raised.value)
    assert message.startswith(f"{names}: ")
    assert "\n" not in message


def test_a_url_carrying_a_password_is_refused_without_echoing_it() -> None:
    # URLs are shown in logs, errors and the console: a password in one would leak there.
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({**VALID, "AUDIT_TSA_URL": "https://user:hunter2hunter2@tsa.example/"})
    assert str(raised.value).startswith("AUDIT_TSA_URL: must not carry credentials")
    assert "hunter2" not in str(raised.value)


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({}, "WEBHOOK_API_KEYS"),
        ({"WEBHOOK_AUTH": "oauth"}, "WEBHOOK_OAUTH_CLIENT_ID"),
        ({"WEBHOOK_AUTH": "oauth", "WEBHOOK_OAUTH_CLIENT_ID": "c"}, "WEBHOOK_OAUTH_CLIENT_SECRET"),
        ({"WEBHOOK_AUTH": "jwt"}, "WEBHOOK_JWT_JWKS_URL"),
        (
            {
                "WEBHOOK_AUTH": "jwt",
                "WEBHOOK_JWT_JWKS_URL": "https://i/j",
                "WEBHOOK_JWT_ISSUER": "i",
            },
            "WEBHOOK_JWT_AUDIENCE",
        ),
        ({"WEBHOOK_AUTH": "none"}, "WEBHOOK_AUTH"),
        ({"WEBHOOK_API_KEYS": KEY, "PAXOS_CLIENT_ID": "x"}, "PAXOS_CLIENT_SECRET"),
        (
            {"WEBHOOK_API_KEYS": KEY, "API_READ_TOKENS": KEY + "t", "API_ADMIN_TOKENS": KEY + "t"},
            "API_ADMIN_TOKENS",
        ),
    ],
)
def test_settings_that_go_together_are_checked(env: dict[str, str], names: str) -> None:
    with pytest.raises(SettingsError, match=f"^{names}: "):
        Settings.from_env(env).check()


SHORT = "fifteen-chars-x"  # one character short of the minimum


@pytest.mark.parametrize(
    "name",
    ["API_READ_TOKENS", "API_ADMIN_TOKENS", "WEBHOOK_API_KEYS", "WEBHOOK_OAUTH_CLIENT_SECRET"],
)
def test_a_key_or_token_shorter_than_16_characters_is_refused(name: str) -> None:
    assert len(SHORT) == MIN_SECRET_LENGTH - 1
    # Alone, and as one of several (a rotation must not slip a short one in).
    values = [SHORT] if name == "WEBHOOK_OAUTH_CLIENT_SECRET" else [SHORT, f"{KEY},{SHORT}"]
    for value in values:
        with pytest.raises(SettingsError) as raised:
            Settings.from_env({**VALID, name: value})
        message = str(raised.value)
        assert message.startswith(f"{name}: ")
        assert "shorter than 16 characters" in message
        assert "\n" not in message
        assert SHORT not in message  # never echo a secret, however weak
    # 16 characters are enough.
    assert Settings.from_env({**VALID, name: SHORT + "y"})


def test_the_demo_is_implied_only_when_nothing_is_configured() -> None:
    assert Settings.from_env({}).configures_nothing  # a first `make run`
    for env in (
        {"DATABASE_URL": "postgresql://u:p@db/x"},
        {"PAXOS_CLIENT_ID": "pid"},
        {"PAXOS_CLIENT_SECRET": "psecret"},
        {"API_READ_TOKENS": KEY},
        {"API_ADMIN_TOKENS": KEY},
        {"WEBHOOK_API_KEYS": KEY},
        {"WEBHOOK_AUTH": "oauth"},
        {"WEBHOOK_AUTH": "none"},  # anyone may deliver: only with an explicit --demo
        {"WEBHOOK_OAUTH_CLIENT_ID": "cid"},
        {"WEBHOOK_OAUTH_CLIENT_SECRET": "oauth-secret-0001"},
        {"WEBHOOK_JWT_JWKS_URL": "https://idp.example/jwks.json"},
        {"WEBHOOK_JWT_ISSUER": "https://idp.example/"},
        {"WEBHOOK_JWT_AUDIENCE": "paxos"},
    ):
        assert not Settings.from_env(env).configures_nothing, env
    # What is not a credential does not count.
    assert Settings.from_env({"DATA_DIR": "/srv/paxos", "PORT": "9000"}).configures_nothing


def test_auth_none_is_allowed_only_in_demo() -> None:
    s = Settings.from_env({"WEBHOOK_AUTH": "none"})
    s.check(demo=True)
    with pytest.raises(SettingsError, match="only allowed with --demo"):
        s.check()


def test_secrets_stay_out_of_repr() -> None:
    s = Settings(
        database_url="postgresql://u:dbpass@h/x",
        webhook_api_keys=("key-123",),
        webhook_oauth_client_secret="oauth-secret",
        paxos_client_secret="paxos-secret",
        api_read_tokens=("read-tok",),
        api_admin_tokens=("admin-tok",),
    )
    text = repr(s)
    for secret in ("dbpass", "key-123", "oauth-secret", "paxos-secret", "read-tok", "admin-tok"):
        assert secret not in text


def test_the_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Settings", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", section))
    assert set(env_names()) <= documented
