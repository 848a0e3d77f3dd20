"""The demo's banner shows the secrets it made up, and never a configured one."""

from __future__ import annotations

import pytest

from service.settings import Settings
from service.simulator.demo import banner, fill_in

pytestmark = pytest.mark.server_independent

READ, ADMIN, KEY = "configured-read-0001", "configured-admin-0002", "configured-key-00003"


def test_made_up_secrets_are_shown() -> None:
    settings, made_up = fill_in(Settings())
    assert made_up == {"API_READ_TOKENS", "API_ADMIN_TOKENS", "WEBHOOK_API_KEYS"}
    text = banner(settings, made_up)
    for value in (*settings.api_read_tokens, *settings.api_admin_tokens):
        assert value in text
    assert settings.webhook_api_keys[0] in text


def test_configured_secrets_are_named_never_shown() -> None:
    configured = Settings(
        api_read_tokens=(READ,), api_admin_tokens=(ADMIN,), webhook_api_keys=(KEY,)
    )
    settings, made_up = fill_in(configured)
    assert settings == configured
    assert made_up == frozenset()
    text = banner(settings, made_up)
    for secret in (READ, ADMIN, KEY):
        assert secret not in text
    assert "read token:  (from API_READ_TOKENS)" in text
    assert "admin token: (from API_ADMIN_TOKENS)" in text
    assert "X-Api-Key: (from WEBHOOK_API_KEYS)" in text


def test_only_what_is_missing_is_made_up() -> None:
    settings, made_up = fill_in(Settings(api_read_tokens=(READ,)))
    assert made_up == {"API_ADMIN_TOKENS", "WEBHOOK_API_KEYS"}
    text = banner(settings, made_up)
    assert READ not in text
    assert settings.api_admin_tokens[0] in text
