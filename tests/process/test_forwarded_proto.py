"""Behind a TLS proxy: its X-Forwarded-Proto counts only when it is in TRUSTED_PROXIES, and
then the console's cookies are Secure and answers carry HSTS; from anyone else the header is
ignored, and the service says so once in its log (issue #15, finding 7)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.served import Served, served

pytestmark = pytest.mark.server_independent  # proxy headers: the same on any server

HTTPS = {"X-Forwarded-Proto": "https"}


@pytest.fixture(scope="module")
def behind_trusted_proxy(
    server_url: str, template_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    with served(
        server_url, template_database, tmp_path_factory.mktemp("proxy"), TRUSTED_PROXIES="127.0.0.1"
    ) as process:
        yield process


@pytest.fixture(scope="module")
def without_trusted_proxies(
    server_url: str, template_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    with served(server_url, template_database, tmp_path_factory.mktemp("direct")) as process:
        yield process


def _cookie_flags(response: httpx.Response) -> set[str]:
    cookie = next(
        c for c in response.headers.get_list("set-cookie") if c.startswith("pes_login_csrf=")
    )
    return {part.strip().lower() for part in cookie.split(";")[1:]}


def _warnings(log: Path) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [line for line in lines if "X-Forwarded-Proto" in str(line.get("event"))]


@pytest.mark.slow
def test_a_trusted_proxys_https_makes_cookies_secure_and_sends_hsts(
    behind_trusted_proxy: Served,
) -> None:
    over_https = httpx.get(f"{behind_trusted_proxy.base}/ui/login", headers=HTTPS)
    assert over_https.status_code == 200
    assert "secure" in _cookie_flags(over_https)
    assert over_https.headers["strict-transport-security"].startswith("max-age=")
    plain = httpx.get(f"{behind_trusted_proxy.base}/ui/login")
    assert "secure" not in _cookie_flags(plain)
    assert "strict-transport-security" not in plain.headers
    assert _warnings(behind_trusted_proxy.log) == []


@pytest.mark.slow
def test_an_untrusted_x_forwarded_proto_is_ignored_and_logged_once(
    without_trusted_proxies: Served,
) -> None:
    for _ in range(3):
        response = httpx.get(f"{without_trusted_proxies.base}/ui/login", headers=HTTPS)
        assert response.status_code == 200
        assert "secure" not in _cookie_flags(response)
        assert "strict-transport-security" not in response.headers
    warnings = _warnings(without_trusted_proxies.log)
    assert len(warnings) == 1, warnings
    assert "TRUSTED_PROXIES" in str(warnings[0]["event"])
