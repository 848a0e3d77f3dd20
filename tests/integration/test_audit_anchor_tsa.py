"""RFC 3161 timestamps on anchors, against a TSA run here on loopback (a small HTTP server
around `openssl ts -reply`, with a test CA and TSA certificate made by the fixture): the token
stored with the anchor verifies with `openssl ts -verify` over the seal hash; a TSA that is
down delays anchoring, counted, and blocks neither sealing nor intake."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service.audit.anchoring import TSA_SINK, Anchorer
from service.audit.tsa import timestamp_request
from service.domain.anchor import anchor_name
from service.store.audit.anchors import sink_status
from service.store.audit.seals import head, seal_pending
from service.store.audit.sinks import sink_for
from service.telemetry.metrics import AUDIT_ANCHOR_FAILURES
from tests.support.audit import add_events
from tests.support.tsa import OPENSSL, make_tsa, openssl, tsa_server

pytestmark = pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")


def _exists(path: Path) -> bool:
    return path.exists()


@pytest.fixture
def tsa_dir(tmp_path: Path) -> Path:
    """A test CA and a TSA certificate it issued (extendedKeyUsage critical,timeStamping)."""
    return make_tsa(tmp_path / "tsa")


@pytest.fixture
def tsa_url(tsa_dir: Path) -> Iterator[str]:
    """The TSA over HTTP on loopback: each POSTed query answered by `openssl ts -reply`."""
    with tsa_server(tsa_dir) as url:
        yield url


def test_the_request_is_what_openssl_reads(tsa_dir: Path) -> None:
    digest = bytes(range(32))
    (tsa_dir / "mine.tsq").write_bytes(timestamp_request(digest, 12345))
    shown = openssl("ts", "-query", "-in", "mine.tsq", "-text", cwd=tsa_dir).decode()
    assert "Hash Algorithm: sha256" in shown
    assert "Nonce: 0x3039" in shown
    assert "Certificate required: yes" in shown
    assert "00 01 02 03 04 05 06 07-08 09 0a 0b 0c 0d 0e 0f" in shown


async def test_the_anchors_token_verifies_over_the_seal_hash(
    engine: AsyncEngine, http: httpx.AsyncClient, tmp_path: Path, tsa_dir: Path, tsa_url: str
) -> None:
    url = f"file://{tmp_path}/anchors"
    await add_events(engine, 2)
    assert await seal_pending(engine)
    anchorer = Anchorer(engine, http, [sink_for(url)], interval_s=0, tsa_url=tsa_url)
    assert await anchorer.anchor_once() == [url]
    async with engine.connect() as conn:
        newest = await head(conn)
    assert newest is not None
    doc = json.loads((tmp_path / "anchors" / anchor_name(1)).read_bytes())
    assert doc["timestamp_token"] is not None
    (tsa_dir / "anchor.tsr").write_bytes(base64.b64decode(doc["timestamp_token"]))
    verified = openssl("ts", "-verify", "-digest", newest.hash_hex, "-in", "anchor.tsr",
                       "-CAfile", "ca.crt", "-untrusted", "tsa.crt", cwd=tsa_dir)  # fmt: skip
    assert b"Verification: OK" in verified
    # Over another hash, the same token fails.
    assert OPENSSL is not None
    other = subprocess.run(  # noqa: S603
        [OPENSSL, "ts", "-verify", "-digest", "00" * 32, "-in", "anchor.tsr",
         "-CAfile", "ca.crt", "-untrusted", "tsa.crt"],
        cwd=tsa_dir, capture_output=True, check=False, timeout=30,
    )  # fmt: skip
    assert other.returncode != 0


async def test_a_tsa_that_is_down_delays_anchoring_not_sealing(
    engine: AsyncEngine, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    url = f"file://{tmp_path}/anchors"
    down = "http://127.0.0.1:9/tsa"  # discard port: nothing listens
    await add_events(engine, 1)
    assert await seal_pending(engine)
    before = AUDIT_ANCHOR_FAILURES.labels(sink=TSA_SINK)._value.get()
    anchorer = Anchorer(engine, http, [sink_for(url)], interval_s=0, tsa_url=down)
    assert await anchorer.anchor_once() == []
    assert AUDIT_ANCHOR_FAILURES.labels(sink=TSA_SINK)._value.get() == before + 1
    assert not _exists(tmp_path / "anchors" / anchor_name(1))
    # Backoff: the next round does not ask the TSA again at once.
    assert await anchorer.anchor_once() == []
    assert AUDIT_ANCHOR_FAILURES.labels(sink=TSA_SINK)._value.get() == before + 1
    # Intake and sealing go on.
    await add_events(engine, 1)
    assert await seal_pending(engine)
    async with engine.connect() as conn:
        (status,) = await sink_status(conn, [TSA_SINK])
    assert status.failures == 1 and status.last_error is not None
