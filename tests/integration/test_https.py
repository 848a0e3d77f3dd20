"""Over HTTPS every answer carries Strict-Transport-Security; over plain HTTP none does (a
browser ignores it there, and it would only mislead). Behind a TLS proxy, "over HTTPS" is what
a trusted proxy's X-Forwarded-Proto says: tests/process/test_forwarded_proto.py."""

from __future__ import annotations

import httpx
import pytest

from service.web.serving import STRICT_TRANSPORT_SECURITY

pytestmark = pytest.mark.server_independent  # headers: the same on any server


@pytest.mark.parametrize("path", ["/health/live", "/ui/login", "/events", "/no-such-page"])
async def test_hsts_is_sent_over_https_only(client: httpx.AsyncClient, path: str) -> None:
    secure = await client.get(f"https://testserver{path}")
    assert secure.headers["strict-transport-security"] == STRICT_TRANSPORT_SECURITY
    assert STRICT_TRANSPORT_SECURITY.startswith("max-age=")
    plain = await client.get(f"http://testserver{path}")
    assert "strict-transport-security" not in plain.headers
