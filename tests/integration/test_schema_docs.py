"""/schema, the browsable OpenAPI docs, loads nothing from another origin: its scripts, styles
and icon are served by the service itself."""

from __future__ import annotations

import re

import httpx
import pytest

pytestmark = pytest.mark.server_independent  # static files and HTML: the same on any server

_REFERENCES = re.compile(r"""<(?:script|link)\b[^>]*?\b(?:src|href)=["']([^"']+)["']""")


async def test_the_docs_page_loads_only_same_origin_assets(client: httpx.AsyncClient) -> None:
    page = await client.get("/schema")
    assert page.status_code == 200
    assert "SwaggerUIBundle" in page.text
    references = _REFERENCES.findall(page.text)
    assert len(references) >= 3, page.text[:2000]  # the bundle, the preset, the style sheet
    for url in references:
        assert url.startswith("/") and not url.startswith("//"), url
        asset = await client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 0
        assert asset.headers["x-content-type-options"] == "nosniff"
    assert "cdn" not in page.text.lower()
