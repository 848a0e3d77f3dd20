"""Secrets with recognisable values, and the check that none of them leaked."""

from __future__ import annotations

SECRETS = {
    "api key": "apikey-SECRET-0011",
    "oauth client secret": "oauth-SECRET-00012",
    "read token": "read-SECRET-000013",
    "admin token": "admin-SECRET-00014",
    "paxos client secret": "paxos-SECRET-00015",
    "guessed secret": "guess-SECRET-00016",
    "database password": "dbpass-SECRET-0017",
}


def assert_no_secret(logged: str, bodies: list[str], extra: dict[str, str] | None = None) -> None:
    """No secret (of SECRETS, or of `extra`) in the `logged` output or in any error body."""
    assert logged, "the scenario must have logged something"
    for name, secret in {**SECRETS, **(extra or {})}.items():
        assert secret not in logged, f"{name} in a log line"
        for body in bodies:
            assert secret not in body, f"{name} in an error body: {body}"
