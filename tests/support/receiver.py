"""A real HTTP receiver of push deliveries on a loopback port (a thread, so it serves whatever
the test's event loop is doing): it records every request, answers with what the test says,
and can be taken down (nothing listens: connections are refused) and brought back."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import msgspec
from standardwebhooks.webhooks import Webhook

from tests.support.processes import free_port


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() when it arrived

    @property
    def event_id(self) -> str:
        return self.headers["webhook-id"]

    def json(self) -> Any:
        return msgspec.json.decode(self.body)

    def verify(self, secret: str) -> Any:
        """The body as the reference implementation accepts it (raises if the signature fails)."""
        return Webhook(secret).verify(self.body, self.headers)


# What to answer: (status, extra headers), decided per request.
Answer = Callable[[Received], tuple[int, dict[str, str]]]


def ok(_: Received) -> tuple[int, dict[str, str]]:
    return 204, {}


class Receiver:
    """Records deliveries at http://127.0.0.1:<port>/<path>."""

    def __init__(self, answer: Answer = ok, delay_s: float = 0.0) -> None:
        self.port = free_port()
        self.answer = answer
        self.delay_s = delay_s
        self.received: list[Received] = []  # every request, in arrival order
        self.answered: list[Received] = []  # those that got their answer written
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self.open_requests = 0
        self.peak_open_requests = 0  # the most requests it was answering at once

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with receiver._lock:
                    receiver._connections.add(self.connection)

            def finish(self) -> None:
                with receiver._lock:
                    receiver._connections.discard(self.connection)
                super().finish()

            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                item = Received(
                    self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time()
                )
                with receiver._lock:
                    receiver.received.append(item)
                    receiver.open_requests += 1
                    receiver.peak_open_requests = max(
                        receiver.peak_open_requests, receiver.open_requests
                    )
                try:
                    if receiver.delay_s:
                        time.sleep(receiver.delay_s)
                    status, headers = receiver.answer(item)
                finally:
                    with receiver._lock:
                        receiver.open_requests -= 1
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", "0")
                self.end_headers()
                with receiver._lock:
                    receiver.answered.append(item)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening: new connections are refused until `start` again (same port)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            connections = list(self._connections)
        for connection in connections:  # kept-alive connections are cut too
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def ids(self, *, answered_only: bool = False) -> list[str]:
        with self._lock:
            items = list(self.answered if answered_only else self.received)
        return [r.event_id for r in items if r.path == "/hook"]

    def wait_for(self, n: int, timeout: float = 30.0, *, distinct: bool = True) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.ids(answered_only=True)
            if len(set(got) if distinct else got) >= n:
                return
            time.sleep(0.02)
        raise TimeoutError(f"{len(set(self.ids()))} of {n} deliveries within {timeout} s")

    async def arrived(self, n: int, timeout: float = 30.0, *, distinct: bool = True) -> None:
        """`wait_for` for a test whose event loop runs the deliveries meanwhile."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.ids(answered_only=True)
            if len(set(got) if distinct else got) >= n:
                return
            await asyncio.sleep(0.02)
        raise TimeoutError(f"{len(set(self.ids()))} of {n} deliveries within {timeout} s")
