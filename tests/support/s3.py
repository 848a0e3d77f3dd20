"""A real S3 API on loopback for the anchor tests: moto's server mode (`moto_server`, from the
dev extra), started and stopped by the test, with a bucket created with Object Lock."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.processes import free_port

MOTO = Path(os.environ.get("VIRTUAL_ENV", ".venv")) / "bin" / "moto_server"
BUCKET = "paxos-anchors"
# moto takes any key and secret; the standard AWS variables, as a deployment sets them.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextmanager
def moto_server() -> Iterator[str]:
    """`moto_server` on a free loopback port until the block ends: its endpoint URL. Skips
    the test where moto's server is not installed."""
    binary = str(MOTO) if MOTO.exists() else shutil.which("moto_server")
    if binary is None:
        pytest.skip("moto_server is not installed (pip install 'moto[server]': the dev extra)")
    port = free_port()
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
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)


def locked_bucket(endpoint: str, bucket: str = BUCKET) -> Any:
    """A boto3 client of `endpoint`, with `bucket` created with Object Lock enabled (which
    turns versioning on). The AWS variables must be set (AWS_ENV)."""
    import boto3  # type: ignore[import-untyped]

    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    return client
