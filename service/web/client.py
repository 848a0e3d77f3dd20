"""The one outbound HTTP client of a process (Paxos API, JWKS)."""

from __future__ import annotations

import httpx
from httpx_aiohttp import AiohttpTransport

from service import __version__


def new_http_client(max_connections: int = 32) -> httpx.AsyncClient:
    """The process's client, with timeouts on every call.

    An `httpx.AsyncClient` (its API is what the code and the tests speak: tests inject the
    in-process simulator as an `httpx.ASGITransport`) whose transport is aiohttp's
    (`httpx-aiohttp`, by an httpx maintainer). The fetcher's CPU per Get Event was mostly
    httpcore's connection-pool bookkeeping, which also grew with the pool; aiohttp's costs
    less than half as much per call (bench/fetch.py, phase a, shows the result), so the pool
    can match the fetcher's 32 calls in flight (`PAXOS_MAX_CONNECTIONS`).
    """
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    return httpx.AsyncClient(
        transport=AiohttpTransport(limits=limits),
        timeout=httpx.Timeout(10.0, connect=5.0),
        headers={"User-Agent": f"paxos-event-store/{__version__}"},
        follow_redirects=False,
    )
