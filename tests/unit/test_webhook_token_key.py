"""Webhook tokens bound to the client, without a database: the OAuth token key's derivation and
the JWT pinning settings (the app and database are in
tests/integration/test_webhook_token_binding.py)."""

from __future__ import annotations

import secrets

import pytest

from service.intake.oauth import signing_key
from service.settings import Settings, SettingsError

# The same on every PostgreSQL: CI runs these on one server only.
pytestmark = pytest.mark.server_independent

DATABASE_KEY = secrets.token_bytes(32)
CLIENT_ID = "paxos-webhooks"
SECRET = "a-client-secret-0123456789"


def test_the_token_key_needs_the_database_key_and_the_client_credentials() -> None:
    key = signing_key(DATABASE_KEY, CLIENT_ID, SECRET)
    assert key == signing_key(DATABASE_KEY, CLIENT_ID, SECRET)  # every process derives the same
    assert len(key.secret) == 32
    assert key.secret != DATABASE_KEY
    others = [
        signing_key(DATABASE_KEY, CLIENT_ID, SECRET + "x"),
        signing_key(DATABASE_KEY, "another-client", SECRET),
        signing_key(secrets.token_bytes(32), CLIENT_ID, SECRET),
        # Where id ends and secret starts is part of the input, not only their concatenation.
        signing_key(DATABASE_KEY, CLIENT_ID + "a", SECRET[1:]),
    ]
    assert len({key.secret, *(other.secret for other in others)}) == 5


def test_the_key_id_names_the_database_key_only() -> None:
    key = signing_key(DATABASE_KEY, CLIENT_ID, SECRET)
    assert key.kid == signing_key(DATABASE_KEY, "another-client", "another-secret-0123").kid
    assert key.kid != signing_key(secrets.token_bytes(32), CLIENT_ID, SECRET).kid
    for secret in (SECRET, DATABASE_KEY.hex(), key.secret.hex()):
        assert key.kid not in secret


def test_jwt_pins_are_read_as_comma_separated_lists() -> None:
    settings = Settings.from_env(
        {"WEBHOOK_JWT_SUBJECTS": "paxos-a, paxos-b", "WEBHOOK_JWT_AZP": "paxos-client"}
    )
    assert settings.webhook_jwt_subjects == ("paxos-a", "paxos-b")
    assert settings.webhook_jwt_azp == ("paxos-client",)
    unpinned = Settings.from_env({})
    assert (unpinned.webhook_jwt_subjects, unpinned.webhook_jwt_azp) == ((), ())


@pytest.mark.parametrize("name", ["WEBHOOK_JWT_SUBJECTS", "WEBHOOK_JWT_AZP"])
def test_an_empty_jwt_pin_entry_is_named(name: str) -> None:
    with pytest.raises(SettingsError) as error:
        Settings.from_env({name: "paxos-a,,paxos-b"})
    assert str(error.value).startswith(f"{name}: has an empty entry")
