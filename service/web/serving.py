"""The HTTP server `serve` runs: uvicorn (httptools), with limits against hostile clients.

Uvicorn's httptools protocol bounds neither how long a client may take to send a request nor
how large its headers may grow: a client that sends a header byte every few seconds
(slowloris) holds its connection for ever, and one that sends megabytes of header fills
memory before the app sees anything. `GuardedHttpToolsProtocol` adds both bounds:

- a request must arrive in full (request line, headers and body) within
  `HTTP_REQUEST_TIMEOUT_S` of its first byte, and a new connection must start one within that
  time; otherwise the connection gets `408` (when no answer has started) and is closed. An app
  still waiting for the body sees the client disconnect and stops.
- the request line and headers may take at most `HTTP_MAX_HEADER_BYTES`; past that the answer
  is `431` and the connection is closed, before the rest is buffered.

`HTTP_MAX_CONNECTIONS` is uvicorn's `limit_concurrency`: past it, new requests get 503 at once.
X-Forwarded-For and X-Forwarded-Proto are honoured only from TRUSTED_PROXIES (uvicorn's
proxy-headers support), so a client cannot choose the address the failed-authentication
throttle counts against, nor make the service believe it came over HTTPS.

What every answer and body shares, whatever serves the app (uvicorn, or ASGI in tests): the
body limits, and HSTS over HTTPS (`strict_transport_security`).

Two things for speed under intake load (bench/README.md, 2026-12-05): an answer's head and
body leave in one `send()` (`OneSendPerTurn`), and once started the server freezes what
startup made out of the garbage collector (`freeze_survivors`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import socket
import threading
from collections.abc import Iterable, Iterator
from typing import Any, cast

import structlog
import uvicorn
from litestar.types import Message, Scope
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.settings import Settings

log = structlog.get_logger(__name__)


def _plain_response(status: bytes, text: bytes) -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: " + str(len(text)).encode() + b"\r\nconnection: close\r\n\r\n" + text
    )


# Bodies: every route that takes one reads at most this much (Litestar's
# `request_max_body_size`; larger is 413 from Content-Length, or as the stream passes it),
# so nobody can make the service buffer and parse megabytes on its event loop. The webhook has
# its own, WEBHOOK_MAX_BODY_BYTES; the OAuth token endpoint its own, smaller.
API_MAX_BODY_BYTES = 16 * 1024  # an admin JSON body (a backfill of all ~60 Paxos types: 2 KB)
FORM_MAX_BODY_BYTES = 8 * 1024  # a console form (the largest: 50 event ids, ~2.5 KB)

# Sent with every answer over HTTPS (directly, or as a trusted proxy's X-Forwarded-Proto
# says): browsers then use HTTPS only for a year. Not includeSubDomains: other hosts under
# the same domain are not ours to decide for.
STRICT_TRANSPORT_SECURITY = "max-age=31536000"

REQUEST_TIMEOUT = _plain_response(b"408 Request Timeout", b"request not received in time\n")
HEADERS_TOO_LARGE = _plain_response(
    b"431 Request Header Fields Too Large", b"request headers too large\n"
)


class OneSendPerTurn:
    """A connection's transport whose writes within one turn of the event loop leave in one
    `send()`: uvicorn writes an answer's head and its body separately, two system calls and
    two TCP segments for every answer (22% of `serve`'s samples under intake load, 2026-12-05).
    What is written is sent once the current turn's callbacks have run, or at `close`."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def writelines(self, lines: Iterable[bytes]) -> None:
        for data in lines:
            self.write(data)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """Uvicorn's httptools protocol with a whole-request deadline and a header size bound."""

    request_timeout_s: float = 15.0
    max_header_bytes: int = 32768

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        # Bytes received since the current request began, while its headers are incomplete.
        self._header_bytes = 0
        self._in_headers = True

    # A deadline runs from a connection's start (or a request's first byte) to the request's
    # last byte; keep-alive idling between requests is uvicorn's own timeout_keep_alive.
    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.request_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        # While headers are incomplete, `self.cycle` (if any) is the previous request's.
        cycle = None if self._in_headers else self.cycle
        if cycle is None or not cycle.response_started:
            self.transport.write(REQUEST_TIMEOUT)
        if cycle is not None and not cycle.response_complete:
            # The app stops waiting for the body, and its late answer goes nowhere.
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(cast(asyncio.Transport, OneSendPerTurn(transport, self.loop)))
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._in_headers or self.transport.is_closing():
            return
        # Still inside the headers after this chunk: count it (a chunk that completed the
        # headers is not counted, so a body sent with them is never mistaken for headers).
        self._header_bytes += len(data)
        if self._header_bytes > self.max_header_bytes:
            self._disarm()
            self.transport.write(HEADERS_TOO_LARGE)
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        self._header_bytes = 0
        self._arm()

    def on_headers_complete(self) -> None:
        self._in_headers = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()


def guarded_protocol(settings: Settings) -> type[GuardedHttpToolsProtocol]:
    """The protocol class with this deployment's limits."""
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {
            "request_timeout_s": float(settings.http_request_timeout_s),
            "max_header_bytes": settings.http_max_header_bytes,
        },
    )


_FORWARDED_PROTO = b"x-forwarded-proto"
_HSTS_HEADER = (b"strict-transport-security", STRICT_TRANSPORT_SECURITY.encode())
_ignored_proxy_warned = False


async def strict_transport_security(message: Message, scope: Scope) -> None:
    """Litestar `before_send` hook: HSTS on every answer over HTTPS.

    Over plain HTTP it watches, until it has said so once, for an X-Forwarded-Proto that was
    ignored (its sender is not in TRUSTED_PROXIES): behind a TLS proxy that is a
    misconfiguration that leaves the console's cookie without Secure and sends no HSTS.
    """
    if message["type"] != "http.response.start":
        return
    if scope.get("scheme") == "https":
        message["headers"] = [*message.get("headers", ()), _HSTS_HEADER]
    elif not _ignored_proxy_warned:
        _warn_if_proxy_ignored(scope)


def hsts_headers(scope: Scope) -> list[tuple[bytes, bytes]]:
    """The HSTS header for an answer over HTTPS, for an endpoint that answers before Litestar
    (`service.intake.endpoint`), where `strict_transport_security` does not run."""
    return [_HSTS_HEADER] if scope.get("scheme") == "https" else []


def _warn_if_proxy_ignored(scope: Scope) -> None:
    global _ignored_proxy_warned
    for name, value in scope.get("headers", ()):
        if name == _FORWARDED_PROTO and value.strip().lower() == b"https":
            _ignored_proxy_warned = True
            client = scope.get("client")
            log.warning(
                "X-Forwarded-Proto ignored: its sender is not in TRUSTED_PROXIES, so the "
                "console's cookies are not Secure and no HSTS is sent; set TRUSTED_PROXIES to "
                "the TLS proxy's address",
                sender=client[0] if client else None,
            )
            return


def server_config(app: Any, settings: Settings) -> uvicorn.Config:
    """The uvicorn configuration of `serve`."""
    trusted = ",".join(settings.trusted_proxies)
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=guarded_protocol(settings),
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=10,
        limit_concurrency=settings.http_max_connections,
        # Without TRUSTED_PROXIES, X-Forwarded-For is ignored (uvicorn would otherwise trust it
        # from 127.0.0.1, i.e. from anything on this machine).
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted or None,
    )


class Server(uvicorn.Server):
    """uvicorn's server, for which SIGINT and SIGTERM are a clean stop: it shuts down
    gracefully and returns, and the process exits 0 through its exit handlers.

    uvicorn raises the signal again once it has shut down; SIGTERM's default action then kills
    the process before its exit handlers run, so the embedded PostgreSQL it started was left
    running, and SIGINT ended in click's "Aborted!" and exit 1."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        freeze_survivors()


def freeze_survivors() -> None:
    """Leave what startup made (modules, routes, pools: about 150,000 objects) out of every
    later garbage collection: it lives as long as the process. Without this, each full
    collection under load walked all of it and stopped the event loop for ~90 ms, every few
    seconds at 8,000 webhooks/s, stalling every request in flight (intake p99 60-70 ms against
    a p50 of 7; with it 13 ms: bench/README.md, 2026-12-05)."""
    gc.collect()
    gc.freeze()


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to `host`:`port`, for `Server.serve(sockets=[...])`: binding before
    anything else starts makes a taken port an error at once (`OSError`), not after the
    banner and the database."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock
