"""The demo's banner shows the secrets it made up, and never a configured one; made-up
secrets are kept in DATA_DIR and reused; the banner says what the demo does on purpose."""

from __future__ import annotations

import json
import os
import shlex
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from service.settings import Settings
from service.simulator.demo import SECRETS_FILE, banner, example_event, fill_in

pytestmark = pytest.mark.server_independent

READ, ADMIN, KEY = "configured-read-0001", "configured-admin-0002", "configured-key-00003"


def test_made_up_secrets_are_shown(tmp_path: Path) -> None:
    settings, made_up = fill_in(Settings(data_dir=tmp_path))
    assert made_up == {"API_READ_TOKENS", "API_ADMIN_TOKENS", "WEBHOOK_API_KEYS"}
    text = banner(settings, made_up)
    for value in (*settings.api_read_tokens, *settings.api_admin_tokens):
        assert value in text
    assert settings.webhook_api_keys[0] in text


def test_configured_secrets_are_named_never_shown(tmp_path: Path) -> None:
    configured = Settings(
        api_read_tokens=(READ,),
        api_admin_tokens=(ADMIN,),
        webhook_api_keys=(KEY,),
        data_dir=tmp_path,
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


def test_only_what_is_missing_is_made_up(tmp_path: Path) -> None:
    settings, made_up = fill_in(Settings(api_read_tokens=(READ,), data_dir=tmp_path))
    assert made_up == {"API_ADMIN_TOKENS", "WEBHOOK_API_KEYS"}
    text = banner(settings, made_up)
    assert READ not in text
    assert settings.api_admin_tokens[0] in text


def test_made_up_secrets_are_kept_private_in_data_dir_and_reused(tmp_path: Path) -> None:
    first, _ = fill_in(Settings(data_dir=tmp_path))
    path = tmp_path / SECRETS_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again, made_up = fill_in(Settings(data_dir=tmp_path))
    assert made_up == {"API_READ_TOKENS", "API_ADMIN_TOKENS", "WEBHOOK_API_KEYS"}
    assert again.api_read_tokens == first.api_read_tokens
    assert again.api_admin_tokens == first.api_admin_tokens
    assert again.webhook_api_keys == first.webhook_api_keys
    text = banner(again, made_up)
    assert str(path) in text and "make clean" in text
    # A configured one is not written down; a kept one for it stays for later.
    configured, made_up = fill_in(Settings(api_read_tokens=(READ,), data_dir=tmp_path))
    assert READ not in path.read_text()
    assert configured.api_admin_tokens == first.api_admin_tokens


def test_a_damaged_secrets_file_is_replaced(tmp_path: Path) -> None:
    (tmp_path / SECRETS_FILE).write_text("{not json")
    settings, _ = fill_in(Settings(data_dir=tmp_path))
    kept = json.loads((tmp_path / SECRETS_FILE).read_text())
    assert kept["API_READ_TOKENS"] == settings.api_read_tokens[0]


def test_the_banner_says_webhooks_are_dropped_on_purpose(tmp_path: Path) -> None:
    settings, made_up = fill_in(Settings(data_dir=tmp_path))
    text = banner(settings, made_up)
    assert "dropped on purpose" in text
    assert "reconciler" in text and "missed webhook" in text


def test_the_example_webhook_is_a_known_test_event_of_the_past(tmp_path: Path) -> None:
    settings, made_up = fill_in(Settings(data_dir=tmp_path))
    now = datetime.now(UTC)
    example = example_event(now)
    text = banner(settings, made_up, example)
    curl = next(line for line in text.splitlines() if "/webhooks/paxos" in line)
    words = shlex.split(curl)
    sent = json.loads(words[words.index("-d") + 1])
    assert sent == example.notification()
    assert sent["is_test"] is True
    assert datetime.fromisoformat(sent["time"]) <= now
