"""The credentials the `settings` fixture configures, and the headers that carry them."""

from __future__ import annotations

READ_TOKEN = "test-read-token"
ADMIN_TOKEN = "test-admin-token"
API_KEY = "test-api-key"


def read_headers() -> dict[str, str]:
    return bearer(READ_TOKEN)


def admin_headers() -> dict[str, str]:
    return bearer(ADMIN_TOKEN)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
