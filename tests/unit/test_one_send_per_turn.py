"""`serve`'s connections send what one turn of the event loop wrote in one `send()`."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from service.web.serving import OneSendPerTurn

Pair = tuple[socket.socket, socket.socket]


@pytest.fixture
def pair() -> Iterator[Pair]:
    ours, theirs = socket.socketpair()
    yield ours, theirs
    ours.close()
    theirs.close()


async def _transport(sock: socket.socket) -> tuple[asyncio.Transport, list[bytes]]:
    """A real transport over `sock`, counting the writes it is given."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, sock)
    writes: list[bytes] = []
    write = transport.write

    def counting(data: bytes) -> None:
        writes.append(bytes(data))
        write(data)

    transport.write = counting  # type: ignore[method-assign]
    return transport, writes


async def test_a_head_and_body_written_in_one_turn_leave_in_one_write(pair: Pair) -> None:
    ours, theirs = pair
    transport, writes = await _transport(ours)
    coalescing = OneSendPerTurn(transport, asyncio.get_running_loop())
    coalescing.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    coalescing.write(b"ok")
    assert writes == []  # nothing sent before the turn ends
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]
    theirs.settimeout(5)
    assert theirs.recv(100) == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    coalescing.write(b"next")  # a later turn's answer is sent on its own
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert writes[1:] == [b"next"]
    transport.close()


async def test_close_sends_what_was_written_first(pair: Pair) -> None:
    ours, theirs = pair
    transport, writes = await _transport(ours)
    coalescing = OneSendPerTurn(transport, asyncio.get_running_loop())
    coalescing.write(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
    coalescing.close()
    assert writes == [b"HTTP/1.1 408 Request Timeout\r\n\r\n"]
    assert coalescing.is_closing()  # the rest is the transport's own
    await asyncio.sleep(0.05)
    theirs.settimeout(5)
    assert theirs.recv(100) == b"HTTP/1.1 408 Request Timeout\r\n\r\n"
    assert theirs.recv(100) == b""  # and then closed


async def test_what_is_pending_when_the_connection_is_gone_is_dropped(pair: Pair) -> None:
    ours, _ = pair
    transport, writes = await _transport(ours)
    coalescing = OneSendPerTurn(transport, asyncio.get_running_loop())
    coalescing.write(b"late answer")
    assert coalescing.get_write_buffer_size() == len(b"late answer")
    transport.abort()  # the client went away before the turn ended
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert writes == []
