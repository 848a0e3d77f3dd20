"""Outbound requests to URLs that users choose (push subscriptions), kept off internal addresses.

A subscription URL could point the service at itself, at the cloud's metadata endpoint
(169.254.169.254) or at anything on the private network. So only `http`/`https` URLs are taken,
and loopback, link-local, private, unspecified, multicast and other non-public addresses are
refused twice: when the URL is given (`check_url`: the name is resolved and every address
checked) and when a connection is made (`guarded_client`), because DNS can change between the
two. The second check holds for the connection itself: the client's resolver checks every
address a name resolves to and hands only checked addresses to the connector, which connects
to exactly those; an address literal in the URL is checked before the request is sent.
`SUBSCRIPTION_ALLOW_PRIVATE_URLS=true` turns the address checks off (demo, tests).
Here, not in the delivery feature, because the admin API checks URLs at creation too.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from httpx_aiohttp import AiohttpTransport

from service import __version__

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_URL_LENGTH = 2048
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class AddressRefused(OSError):
    """A connection to an address the policy refuses was not made."""


def refusal(address: IPAddress) -> str | None:
    """Why a connection to `address` is refused (a few words), or None if it is allowed."""
    if isinstance(address, ipaddress.IPv6Address):
        # IPv4 inside IPv6 reaches the IPv4 address: judge that one.
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return refusal(embedded)
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_private:
        return "a private address"
    if not address.is_global:
        return "not a public address"
    return None


def url_problem(url: str) -> str | None:
    """What is wrong with `url` as a delivery URL, before any address is looked at."""
    if len(url) > MAX_URL_LENGTH:
        return f"must be at most {MAX_URL_LENGTH} characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "must name a host"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials (user:password@): the receiver checks the signature"
    if port == 0:
        return "must not use port 0"
    if parts.fragment:
        return "must not have a fragment (#...)"
    if any(c.isspace() or ord(c) < 0x20 for c in url):
        return "must not contain spaces or control characters"
    return None


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


async def check_url(url: str, *, allow_private: bool, timeout_s: float = 5.0) -> str | None:
    """What is wrong with `url` as a delivery URL now (its syntax, then every address its host
    resolves to), or None when it may be used."""
    problem = url_problem(url)
    if problem or allow_private:
        return problem
    host = urlsplit(url).hostname or ""
    literal = _literal(host)
    if literal is not None:
        reason = refusal(literal)
        return f"{host} is {reason}" if reason else None
    try:
        async with asyncio.timeout(timeout_s):
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, None, type=socket.SOCK_STREAM
            )
    except (OSError, TimeoutError) as exc:
        return f"cannot resolve {host} ({exc.__class__.__name__})"
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        reason = refusal(address)
        if reason:
            return f"{host} resolves to {address}, {reason}"
    return None


class GuardedResolver(AbstractResolver):
    """Resolves as usual, then refuses the name if any of its addresses is refused: the
    connector connects only to addresses returned here, so each one is checked."""

    def __init__(self) -> None:
        self._inner = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            address = ipaddress.ip_address(result["host"].split("%")[0])
            reason = refusal(address)
            if reason:
                raise AddressRefused(f"refused: {host} resolves to {address}, {reason}")
        return results

    async def close(self) -> None:
        await self._inner.close()


class _GuardedTransport(AiohttpTransport):
    """aiohttp's transport, refusing address literals the resolver never sees."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        literal = _literal(request.url.host)
        if literal is not None:
            reason = refusal(literal)
            if reason:
                message = f"refused: {literal} is {reason}"
                raise httpx.ConnectError(message, request=request) from AddressRefused(message)
        return await super().handle_async_request(request)


def guarded_client(
    *, allow_private: bool, max_connections: int, timeout_s: float
) -> httpx.AsyncClient:
    """A client for user-chosen URLs: no redirects, no proxies from the environment, and (unless
    `allow_private`) connections only to public addresses, checked at connect time."""
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )

    def session() -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=max_connections,
            resolver=None if allow_private else GuardedResolver(),
        )
        # trust_env=False: an HTTP(S)_PROXY from the environment would connect elsewhere.
        return aiohttp.ClientSession(connector=connector, trust_env=False)

    transport_class: Any = AiohttpTransport if allow_private else _GuardedTransport
    return httpx.AsyncClient(
        transport=transport_class(limits=limits, client=session, trust_env=False),
        timeout=httpx.Timeout(timeout_s),
        headers={"User-Agent": f"paxos-event-store/{__version__}"},
        follow_redirects=False,
        trust_env=False,
    )


def failure_kind(exc: BaseException) -> tuple[str, str | None]:
    """What a failed request met: `refused` (the address policy, with its reason), `timeout`,
    or `connection_error`. (httpx-aiohttp reports every connector error as a ConnectTimeout, so
    the causes are looked at, not the class.)"""
    causes: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not c for c in causes):
        causes.append(current)
        current = current.__cause__ or current.__context__
    for cause in causes:
        if isinstance(cause, AddressRefused):
            return "refused", str(cause)
    if any(isinstance(c, TimeoutError) for c in causes):  # aiohttp's timeouts are ones too
        return "timeout", None
    if any(isinstance(c, aiohttp.ClientError) for c in causes):
        return "connection_error", None
    if any(isinstance(c, httpx.TimeoutException) for c in causes):
        return "timeout", None
    return "connection_error", None
