"""The S3 anchor sink against a real S3 API on loopback (moto_server, started here): anchors
written with Object Lock retention in COMPLIANCE mode; deleting a locked version, or writing
over an anchor, is refused by the server; verify reads the anchors back.

moto enforces: the refusal of DeleteObject of a locked version (with or without
BypassGovernanceRetention) and If-None-Match on PutObject. It does not refuse shortening a
COMPLIANCE retention or turning it into GOVERNANCE (real S3 does): the last test pins that
limit (docs/audit.md "Testing limits"); the recorded mode and retain-until date are tested."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
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
from tests.support.s3 import BUCKET


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


async def test_moto_does_not_refuse_changing_a_compliance_retention(s3: Any) -> None:
    """A testing limit (docs/audit.md "Testing limits"), pinned rather than assumed: AWS S3
    refuses to shorten a COMPLIANCE retention or turn it into GOVERNANCE; moto accepts both.
    When this fails, moto enforces it: turn it into a test of the refusal."""
    key = "limits/seal-000000000001.json"
    until = datetime.now(UTC) + timedelta(days=30)
    version = s3.put_object(
        Bucket=BUCKET,
        Key=key,
        Body=b"{}",
        ObjectLockMode="COMPLIANCE",
        ObjectLockRetainUntilDate=until,
    )["VersionId"]
    shorter = until - timedelta(days=20)
    s3.put_object_retention(
        Bucket=BUCKET,
        Key=key,
        VersionId=version,
        Retention={"Mode": "COMPLIANCE", "RetainUntilDate": shorter},
    )
    meta = s3.head_object(Bucket=BUCKET, Key=key, VersionId=version)
    assert meta["ObjectLockRetainUntilDate"] < until - timedelta(days=19)  # shortened
    s3.put_object_retention(
        Bucket=BUCKET,
        Key=key,
        VersionId=version,
        Retention={"Mode": "GOVERNANCE", "RetainUntilDate": until},
    )
    assert s3.head_object(Bucket=BUCKET, Key=key, VersionId=version)["ObjectLockMode"] == (
        "GOVERNANCE"
    )
    # The lock still refuses a plain delete; with the governance bypass the version goes.
    with pytest.raises(ClientError):
        s3.delete_object(Bucket=BUCKET, Key=key, VersionId=version)
    s3.delete_object(Bucket=BUCKET, Key=key, VersionId=version, BypassGovernanceRetention=True)
