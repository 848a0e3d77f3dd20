"""The S3 anchor sink against a real S3 API on loopback (moto_server, started here): anchors
written with Object Lock retention in COMPLIANCE mode; deleting a locked version, or writing
over an anchor, is refused by the server; verify reads the anchors back.

moto enforces: the refusal of DeleteObject of a locked version (with or without
BypassGovernanceRetention) and If-None-Match on PutObject. It does not refuse turning a
COMPLIANCE retention into GOVERNANCE (real S3 does), so that is not tested here; the
recorded mode and retain-until date are."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError
from sqlalchemy.ext.asyncio import AsyncEngine

from service.audit.anchoring import Anchorer
from service.domain.anchor import anchor_name
from service.settings import Settings
from service.store.audit.anchors import sink_status
from service.store.audit.seals import seal_pending
from service.store.audit.sinks import S3Sink, sink_for
from service.store.audit.verify import verify
from tests.support.audit import add_events, tamper

MOTO = Path(os.environ.get("VIRTUAL_ENV", ".venv")) / "bin" / "moto_server"
BUCKET = "paxos-anchors"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    binary = str(MOTO) if MOTO.exists() else shutil.which("moto_server")
    if binary is None:
        pytest.skip("moto_server is not installed (pip install 'moto[server]': the dev extra)")
    port = _free_port()
    server = subprocess.Popen(  # noqa: S603 - the dev extra's own server
        [binary, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(endpoint, timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)
        for name, value in (
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
        ):
            monkeypatch.setenv(name, value)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def s3(s3_endpoint: str) -> Any:
    import boto3  # type: ignore[import-untyped]

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket=BUCKET, ObjectLockEnabledForBucket=True)
    return client


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


async def test_anchors_are_locked_in_compliance_mode_and_cannot_be_removed(
    engine: AsyncEngine, http: httpx.AsyncClient, s3: Any, s3_endpoint: str
) -> None:
    url = f"s3://{BUCKET}/prod/anchors"
    sink = sink_for(url, s3_endpoint=s3_endpoint, retain_days=30)
    assert isinstance(sink, S3Sink)
    await add_events(engine, 2)
    assert await seal_pending(engine)
    assert await Anchorer(engine, http, [sink], interval_s=0).anchor_once() == [url]
    key = f"prod/anchors/{anchor_name(1)}"
    meta = s3.head_object(Bucket=BUCKET, Key=key)
    assert meta["ObjectLockMode"] == "COMPLIANCE"
    until = meta["ObjectLockRetainUntilDate"]
    assert timedelta(days=29) < until - datetime.now(UTC) <= timedelta(days=30)
    version = meta["VersionId"]

    # The server refuses to delete the locked version.
    with pytest.raises(ClientError) as refused:
        s3.delete_object(Bucket=BUCKET, Key=key, VersionId=version)
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    with pytest.raises(ClientError):
        s3.delete_object(Bucket=BUCKET, Key=key, VersionId=version, BypassGovernanceRetention=True)
    # A conditional write over it is refused; a plain one only adds a version.
    with pytest.raises(ClientError) as precondition:
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"{}", IfNoneMatch="*")
    assert precondition.value.response["Error"]["Code"] == "PreconditionFailed"
    original = s3.get_object(Bucket=BUCKET, Key=key, VersionId=version)["Body"].read()
    assert b'"seal_id":1' in original

    # verify reads the anchors from S3 (the endpoint from the settings): a deleted tail is
    # caught.
    settings = replace(Settings(), audit_anchor_s3_endpoint=s3_endpoint)
    report = await verify(engine, settings, anchors=[url])
    assert report.ok, report.problems
    await tamper(engine, "DELETE FROM seals")
    report = await verify(engine, settings, anchors=[url])
    assert [(p.kind, p.seal_id) for p in report.problems] == [("anchor_missing", 1)]


async def test_an_unreachable_bucket_is_a_counted_failure(
    engine: AsyncEngine, http: httpx.AsyncClient, s3: Any, s3_endpoint: str
) -> None:
    url = "s3://no-such-bucket/anchors"
    await add_events(engine, 1)
    assert await seal_pending(engine)
    sink = sink_for(url, s3_endpoint=s3_endpoint, retain_days=1)
    assert await Anchorer(engine, http, [sink], interval_s=0).anchor_once() == []
    async with engine.connect() as conn:
        (status,) = await sink_status(conn, [url])
    assert (status.seal_id, status.failures) == (None, 1)
    assert status.last_error is not None and "NoSuchBucket" in status.last_error
