"""The one outbound HTTP client of a process (Paxos API, JWKS)."""

from __future__ import annotations

import httpx

from service import __version__


def new_http_client(max_connections: int = 8) -> httpx.AsyncClient:
    """The process's client, with timeouts on every call.

    Few connections, on purpose: httpx's pool examines every connection on every request,
    so its CPU cost per request grows with the pool (measured here: about 1.0 ms per request
    with 8 connections, 1.5 ms with 32 or more, 32 calls in flight either way). Eight carry
    Paxos's 50 calls/s at up to 160 ms of latency; `PAXOS_MAX_CONNECTIONS` raises it.
    """
    return httpx.AsyncClient(
        timeout=httpx.Timeout(10.0, connect=5.0),
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
        headers={"User-Agent": f"paxos-event-store/{__version__}"},
        follow_redirects=False,
    )
