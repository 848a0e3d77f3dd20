"""The credentials the `settings` fixture configures, and the headers that carry them.

At least 16 characters each: `serve` refuses shorter keys and tokens (MIN_SECRET_LENGTH)."""

from __future__ import annotations

READ_TOKEN = "test-read-token-0001"
ADMIN_TOKEN = "test-admin-token-0002"
API_KEY = "test-api-key-00000003"


def read_headers() -> dict[str, str]:
    return bearer(READ_TOKEN)


def admin_headers() -> dict[str, str]:
    return bearer(ADMIN_TOKEN)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
