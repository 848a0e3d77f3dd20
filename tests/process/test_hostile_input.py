"""Hostile input: bodies and clients that try to crash or pin the server, on a real socket.

The server is the real `paxos-events serve` (uvicorn with service.web.serving's limits) as a
subprocess; every test ends by delivering a normal webhook, which must still be answered 200
(no crashed process, no stuck worker). The notification parser on its own is checked in
tests/unit/test_hostile_input.py.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.factories import encode, notification
from tests.support.served import Served, served
from tests.support.tokens import API_KEY, READ_TOKEN

# The same on every PostgreSQL: CI runs these on one server only.
pytestmark = pytest.mark.server_independent

# Short, so the tests that wait for it stay short; the default is 15 s.
REQUEST_TIMEOUT_S = 2
MAX_HEADER_BYTES = 16384


class Server:
    def __init__(self, served: Served) -> None:
        self.port = served.port
        self.base = served.base
        self.log = served.log

    def deliver(self, body: bytes | None = None) -> httpx.Response:
        return httpx.post(
            f"{self.base}/webhooks/paxos",
            content=body if body is not None else encode(notification()),
            headers={"Content-Type": "application/json", "X-Api-Key": API_KEY},
            timeout=10,
        )

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)


@pytest.fixture(scope="module")
def hostile_server(
    server_url: str, template_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """`serve --no-background` with short limits."""
    with served(
        server_url,
        template_database,
        tmp_path_factory.mktemp("hostile"),
        HTTP_REQUEST_TIMEOUT_S=str(REQUEST_TIMEOUT_S),
        HTTP_MAX_HEADER_BYTES=str(MAX_HEADER_BYTES),
    ) as process:
        yield Server(process)


@pytest.fixture
def server(hostile_server: Server) -> Iterator[Server]:
    """The server, checked after each test: alive, answering a normal webhook, no trace."""
    yield hostile_server
    response = hostile_server.deliver()
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "accepted"
    logged = hostile_server.log.read_text()
    assert "Traceback" not in logged, logged


def _problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status
    return dict(body)


def _receive_all(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (or `timeout` passes)."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return data  # closed with unread input on the server's side: a reset
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"the server kept the connection open; got {data!r}")


# --- bodies ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"[" * 60_000, "nested too deeply"),
        (b'{"a":' * 12_000, "nested too deeply"),
        (b'{"id": "' + b"\xff\xfe" + b'"}', "UTF-8"),
        # Unknown members are skipped by the decoder: their bytes must be checked all the same.
        (encode(notification())[:-1] + b', "note": "\xc3\x28"}', "UTF-8"),
        (encode(notification())[:40], "truncated"),
        (b"\x00" * 100, "not valid JSON"),
    ],
    ids=["100k-brackets", "deep-objects", "non-utf8", "non-utf8-unknown-member", "cut", "nul"],
)
def test_hostile_bodies_get_a_400_problem(server: Server, body: bytes, detail: str) -> None:
    problem = _problem(server.deliver(body), 400)
    assert detail in str(problem["detail"])


@pytest.mark.slow
def test_a_body_shorter_than_its_content_length_is_cut_off(server: Server) -> None:
    sent = encode(notification())
    with server.connect() as sock:
        sock.sendall(
            b"POST /webhooks/paxos HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"X-Api-Key: {API_KEY}\r\nContent-Length: {len(sent) + 100}\r\n\r\n".encode()
            + sent
        )
        started = time.monotonic()
        answer = _receive_all(sock, REQUEST_TIMEOUT_S + 10)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert time.monotonic() - started >= REQUEST_TIMEOUT_S - 0.5
    # Nothing of the cut body was stored.
    events = httpx.get(
        f"{server.base}/events", headers={"Authorization": f"Bearer {READ_TOKEN}"}
    ).json()
    assert json.loads(sent)["id"] not in {e["id"] for e in events["items"]}


def test_an_oversized_body_gets_413(server: Server) -> None:
    problem = _problem(server.deliver(b'{"padding": "' + b"x" * 1_000_000 + b'"}'), 413)
    assert "WEBHOOK_MAX_BODY_BYTES" in str(problem["detail"])


@pytest.mark.slow
def test_a_huge_sign_in_form_gets_413_and_never_stalls_the_server(server: Server) -> None:
    """Anyone may post the sign-in form: 9.9 MB of it must be refused from its Content-Length,
    not read and parsed on the event loop while every other request waits."""
    # Many short fields: parsing them is what took seconds (one long field parses fast).
    body = b"csrf=x&token=y" + b"&a=b" * 2_475_000
    answer: list[httpx.Response] = []

    def post() -> None:
        started = time.monotonic()
        answer.append(
            httpx.post(
                f"{server.base}/ui/login",
                content=body,
                headers={"Content-Type": "application/x-www-form-urlencoded"},
                timeout=30,
            )
        )
        answer[0].extensions["took_s"] = time.monotonic() - started

    sender = threading.Thread(target=post)
    sender.start()
    slowest = 0.0
    probes = 0
    # /health/live meanwhile, until the form is answered (and a few times after).
    while sender.is_alive() or probes < 5:
        started = time.monotonic()
        assert httpx.get(f"{server.base}/health/live", timeout=30).status_code == 200
        slowest = max(slowest, time.monotonic() - started)
        probes += 1
    sender.join()
    response = answer[0]
    print(
        f"9.9 MB sign-in form: {response.status_code} after {response.extensions['took_s']:.3f} s;"
        f" slowest of {probes} /health/live meanwhile: {slowest * 1000:.0f} ms"
    )
    assert response.status_code == 413, response.text[:300]
    assert "text/html" in response.headers["content-type"]  # the console's own error page
    assert slowest < 0.5  # it was over 5 s


# --- headers and slow clients ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "header"),
    [("/webhooks/paxos", b"X-Api-Key"), ("/events", b"Authorization"), ("/events", b"Bearer")],
)
def test_credentials_that_are_not_text_get_401(server: Server, path: str, header: bytes) -> None:
    value = b"Bearer \xff\xfe\x80" if header == b"Bearer" else b"\xff\xfe\x80"
    name = b"Authorization" if header == b"Bearer" else header
    method = b"POST" if path.startswith("/webhooks") else b"GET"
    with server.connect() as sock:
        sock.sendall(
            method + b" " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: 2\r\n"
            + name
            + b": "
            + value
            + b"\r\n\r\n{}"
        )
        answer = _receive_all(sock, 10)
    assert answer.startswith(b"HTTP/1.1 401 "), answer
    assert b"application/problem+json" in answer


@pytest.mark.slow
def test_huge_headers_get_431_and_the_connection_is_closed(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
        try:
            for _ in range(100):  # 100 KB of one header, in 1 KB pieces
                sock.sendall(b"X-Filler: " + b"a" * 1014 + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed on us mid-way: what we want
        answer = _receive_all(sock, 10)
    assert answer.startswith(b"HTTP/1.1 431 "), answer


def test_headers_within_the_limit_are_served(server: Server) -> None:
    response = httpx.get(f"{server.base}/health/live", headers={"X-Filler": "a" * 8000})
    assert response.status_code == 200


@pytest.mark.slow
def test_a_slowloris_client_is_cut_off_while_others_are_served(server: Server) -> None:
    with server.connect() as slow:
        slow.sendall(b"POST /webhooks/paxos HTTP/1.1\r\nHost: x\r\n")
        header = f"X-Api-Key: {API_KEY}\r\n".encode()
        served_meanwhile = 0
        closed = False
        started = time.monotonic()
        for i in range(4 * REQUEST_TIMEOUT_S * 5):  # one byte every 0.2 s, for up to 4 timeouts
            try:
                slow.sendall(header[i % len(header) : i % len(header) + 1])
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            # Everyone else is served as usual in the meantime.
            if server.deliver().status_code == 200:
                served_meanwhile += 1
            slow.settimeout(0.2)
            try:
                if slow.recv(65536) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
            except ConnectionResetError:
                closed = True
                break
    assert closed, "a client that never finished its headers was never cut off"
    assert time.monotonic() - started < 3 * REQUEST_TIMEOUT_S
    assert served_meanwhile >= 3


@pytest.mark.slow
def test_a_kept_alive_connection_that_stalls_mid_request_is_cut_off(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(10)
        first = b""
        while not first.endswith(b'{"status":"ok"}'):  # the whole first answer
            chunk = sock.recv(65536)
            assert chunk, first
            first += chunk
        assert first.startswith(b"HTTP/1.1 200 "), first
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Half: ")
        answer = _receive_all(sock, REQUEST_TIMEOUT_S + 10)
    assert answer.startswith(b"HTTP/1.1 408 "), answer


@pytest.mark.slow
def test_a_connection_that_sends_nothing_is_closed(server: Server) -> None:
    with server.connect() as sock:
        answer = _receive_all(sock, REQUEST_TIMEOUT_S + 10)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
