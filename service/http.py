"""The one outbound HTTP client of a process (Paxos API, JWKS)."""

from __future__ import annotations

import httpx

from service import __version__


def new_http_client() -> httpx.AsyncClient:
    """A client sized for the fetcher's concurrency, with timeouts on every call."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(10.0, connect=5.0),
        limits=httpx.Limits(max_connections=128, max_keepalive_connections=64),
        headers={"User-Agent": f"paxos-event-store/{__version__}"},
        follow_redirects=False,
    )
