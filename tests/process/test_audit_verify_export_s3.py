"""`paxos-events verify-export --anchors s3://bucket/prefix` as a process, against a real S3
API on loopback (moto_server): the anchors are read back through the sink `verify` reads, the
endpoint from AUDIT_ANCHOR_S3_ENDPOINT or --s3-endpoint, the credentials from the standard AWS
variables. And the standalone script (file-only) on the same anchors copied out of the bucket,
as docs/audit.md tells an auditor to."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service.audit.anchoring import Anchorer
from service.domain.anchor import anchor_name
from service.domain.signing import Signer, public_pem
from service.store.audit.export import ExportQuery, export
from service.store.audit.seals import seal_pending
from service.store.audit.sinks import sink_for
from tests.support.audit import WINDOW, add_events
from tests.support.paths import ROOT
from tests.support.processes import clean_env
from tests.support.s3 import AWS_ENV, BUCKET

SCRIPT = ROOT / "docs" / "verify_export.py"
PREFIX = "prod/anchors"
URL = f"s3://{BUCKET}/{PREFIX}"


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own CLI and script
        [sys.executable, *args],
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
async def test_verify_export_reads_the_anchors_from_s3(
    engine: AsyncEngine, http: httpx.AsyncClient, s3: Any, s3_endpoint: str, tmp_path: Path
) -> None:
    signer = Signer.generate()
    await add_events(engine, 5)
    sealed = await seal_pending(engine, max_rows=4, signer=signer)
    assert len(sealed) == 3
    # The anchorer writes the head (seal 3) to the bucket, locked in COMPLIANCE mode.
    sink = sink_for(URL, s3_endpoint=s3_endpoint, retain_days=1)
    assert await Anchorer(engine, http, [sink], interval_s=0).anchor_once() == [URL]
    query = ExportQuery(
        since=datetime.fromisoformat(WINDOW["since"].replace("Z", "+00:00")),
        until=datetime.fromisoformat(WINDOW["until"].replace("Z", "+00:00")),
    )
    exported = tmp_path / "export.jsonl"
    exported.write_bytes(b"".join([chunk async for chunk in export(engine, query)]))
    keys = tmp_path / "keys.pem"
    keys.write_text(public_pem(signer.public))
    command = ["-m", "service", "verify-export", str(exported), "--public-key", str(keys)]

    # The endpoint from the setting, or from the option; the credentials from AWS_*.
    from_setting = run(*command, "--anchors", URL, **AWS_ENV, AUDIT_ANCHOR_S3_ENDPOINT=s3_endpoint)
    assert from_setting.returncode == 0, from_setting.stdout + from_setting.stderr
    assert from_setting.stdout.startswith("ok: 10 rows checked, 3 seals")
    from_option = run(*command, "--anchors", URL, "--s3-endpoint", s3_endpoint, **AWS_ENV)
    assert from_option.returncode == 0, from_option.stdout + from_option.stderr

    # Nothing anchored under another prefix: the export cannot be linked to an anchor.
    elsewhere = run(*command, "--anchors", f"s3://{BUCKET}/other", **AWS_ENV,
                    AUDIT_ANCHOR_S3_ENDPOINT=s3_endpoint)  # fmt: skip
    assert elsewhere.returncode == 1
    assert "not_anchored" in elsewhere.stdout

    # An anchor of seal 2 that the chain does not match (as if the chain had been rewritten
    # after it was anchored): found through S3, naming the seal.
    forged = s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}/{anchor_name(3)}")["Body"].read()
    forged = forged.replace(b'"seal_id":3', b'"seal_id":2').replace(
        sealed[2].hash_hex.encode(), b"00" * 32
    )
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{anchor_name(2)}", Body=forged)
    mismatch = run(*command, "--anchors", URL, **AWS_ENV, AUDIT_ANCHOR_S3_ENDPOINT=s3_endpoint)
    assert mismatch.returncode == 1, mismatch.stdout + mismatch.stderr
    assert "anchor_mismatch" in mismatch.stdout and "seal 2" in mismatch.stdout

    # The standalone script reads a directory: the bucket's anchors copied out first (what
    # `aws s3 cp --recursive` does), it finds the same.
    copied = tmp_path / "copied"
    copied.mkdir()
    for item in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/")["Contents"]:
        name = item["Key"].rsplit("/", 1)[-1]
        (copied / name).write_bytes(s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read())
    script = run(str(SCRIPT), str(exported), "--public-key", str(keys), "--anchors",
                 copied.as_uri())  # fmt: skip
    assert script.returncode == 1, script.stdout + script.stderr
    assert "anchor_mismatch" in script.stdout and "seal 2" in script.stdout
    (copied / anchor_name(2)).unlink()
    script = run(str(SCRIPT), str(exported), "--public-key", str(keys), "--anchors",
                 copied.as_uri())  # fmt: skip
    assert script.returncode == 0, script.stdout + script.stderr


@pytest.mark.slow
async def test_an_unreadable_bucket_fails_the_check_and_a_bad_url_is_a_usage_error(
    engine: AsyncEngine, s3: Any, s3_endpoint: str, tmp_path: Path
) -> None:
    signer = Signer.generate()
    await add_events(engine, 1)
    assert await seal_pending(engine, signer=signer)
    query = ExportQuery(
        since=datetime.fromisoformat(WINDOW["since"].replace("Z", "+00:00")),
        until=datetime.fromisoformat(WINDOW["until"].replace("Z", "+00:00")),
    )
    exported = tmp_path / "export.jsonl"
    exported.write_bytes(b"".join([chunk async for chunk in export(engine, query)]))
    keys = tmp_path / "keys.pem"
    keys.write_text(public_pem(signer.public))
    command = ["-m", "service", "verify-export", str(exported), "--public-key", str(keys)]

    missing = run(*command, "--anchors", "s3://no-such-bucket/anchors", **AWS_ENV,
                  AUDIT_ANCHOR_S3_ENDPOINT=s3_endpoint)  # fmt: skip
    assert missing.returncode == 1, missing.stdout + missing.stderr
    assert missing.stdout.startswith(
        "anchor_missing: the anchors of s3://no-such-bucket/anchors cannot be read:"
    )
    assert "NoSuchBucket" in missing.stdout
    assert "Traceback" not in missing.stdout + missing.stderr

    for bad, says in (
        ("ftp://elsewhere/x", "file:///dir or s3://bucket/prefix"),
        ("s3:///prefix-without-bucket", "s3://bucket/prefix"),
        (f"file://{tmp_path}/absent", "no such directory"),
    ):
        refused = run(*command, "--anchors", bad, **AWS_ENV)
        assert refused.returncode == 2, (bad, refused.stderr)
        assert "--anchors" in refused.stderr and says in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
