"""Anchor sinks: where the seal head is written outside the database (docs/audit.md).

- `file:///dir`: one file per anchor, created exclusively (O_CREAT|O_EXCL: never overwritten),
  fsynced with its directory;
- `s3://bucket/prefix`: one object per anchor (endpoint AUDIT_ANCHOR_S3_ENDPOINT, credentials
  from the standard AWS variables), written only if absent (If-None-Match: *), with Object Lock
  retention in COMPLIANCE mode for AUDIT_ANCHOR_RETAIN_DAYS when set. boto3 is synchronous:
  its calls run in a worker thread.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from service.domain.anchor import Anchor, decode, encode


class SinkError(Exception):
    """A sink could not be written or read."""


@dataclass(frozen=True, slots=True)
class ReadBack:
    """What a sink holds: its anchors by name, and the names it could not parse."""

    anchors: dict[str, Anchor]
    unreadable: dict[str, str]


class Sink(Protocol):
    url: str

    async def write(self, anchor: Anchor) -> None: ...

    async def read(self) -> ReadBack: ...


class FileSink:
    """One file per anchor in a directory."""

    def __init__(self, url: str, directory: Path) -> None:
        self.url = url
        self.directory = directory

    async def write(self, anchor: Anchor) -> None:
        await asyncio.to_thread(self._write, anchor)

    def _write(self, anchor: Anchor) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / anchor.name
        data = encode(anchor)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        except FileExistsError:
            # Never overwritten. The same seal anchored before (a crash between the write and
            # its record) is fine; anything else is for verify to report.
            existing = decode(path.read_bytes())
            if existing.seal_hash != anchor.seal_hash:
                raise SinkError(
                    f"{path} exists with seal hash {existing.seal_hash}, not {anchor.seal_hash}"
                ) from None
            return
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    async def read(self) -> ReadBack:
        return await asyncio.to_thread(self._read)

    def _read(self) -> ReadBack:
        anchors: dict[str, Anchor] = {}
        unreadable: dict[str, str] = {}
        if not self.directory.is_dir():
            return ReadBack(anchors, unreadable)
        for path in sorted(self.directory.glob("seal-*.json")):
            try:
                anchors[path.name] = decode(path.read_bytes())
            except (OSError, ValueError) as exc:
                unreadable[path.name] = str(exc)
        return ReadBack(anchors, unreadable)


class S3Sink:
    """One object per anchor under a bucket's prefix."""

    def __init__(
        self, url: str, bucket: str, prefix: str, endpoint: str | None, retain_days: int | None
    ) -> None:
        self.url = url
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint = endpoint
        self.retain_days = retain_days
        self._client: Any = None

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def client(self) -> Any:
        if self._client is None:
            # Heavy: only a deployment with an s3:// sink loads it.
            import boto3  # type: ignore[import-untyped]  # noqa: PLC0415

            self._client = boto3.client("s3", endpoint_url=self.endpoint)
        return self._client

    async def write(self, anchor: Anchor) -> None:
        await asyncio.to_thread(self._write, anchor)

    def _write(self, anchor: Anchor) -> None:
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self.key(anchor.name),
            "Body": encode(anchor),
            "ContentType": "application/json",
            "IfNoneMatch": "*",
        }
        if self.retain_days is not None:
            args["ObjectLockMode"] = "COMPLIANCE"
            args["ObjectLockRetainUntilDate"] = datetime.now(UTC) + timedelta(days=self.retain_days)
        try:
            self.client().put_object(**args)
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            if code in ("PreconditionFailed", "ConditionalRequestConflict"):
                existing = self._get(self.key(anchor.name))
                if existing.seal_hash == anchor.seal_hash:
                    return
                raise SinkError(
                    f"s3 object {args['Key']} exists with seal hash {existing.seal_hash}"
                ) from exc
            raise SinkError(f"s3 put {args['Key']}: {exc}") from exc

    def _get(self, key: str) -> Anchor:
        body = self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return decode(body)

    async def read(self) -> ReadBack:
        return await asyncio.to_thread(self._read)

    def _read(self) -> ReadBack:
        anchors: dict[str, Anchor] = {}
        unreadable: dict[str, str] = {}
        prefix = self.key("seal-")
        try:
            pages = self.client().get_paginator("list_objects_v2")
            for page in pages.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    name = item["Key"].rsplit("/", 1)[-1]
                    try:
                        anchors[name] = self._get(item["Key"])
                    except ValueError as exc:
                        unreadable[name] = str(exc)
        except Exception as exc:
            raise SinkError(f"s3 list {self.url}: {exc}") from exc
        return ReadBack(anchors, unreadable)


def sink_for(url: str, *, s3_endpoint: str | None = None, retain_days: int | None = None) -> Sink:
    """The sink of an AUDIT_ANCHOR_URL entry; ValueError if it is not one."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise ValueError(f"{url}: a file sink is file:///absolute/dir")
        return FileSink(url, Path(unquote(parts.path)))
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError(f"{url}: an S3 sink is s3://bucket/prefix")
        return S3Sink(url, parts.netloc, parts.path, s3_endpoint, retain_days)
    raise ValueError(f"{url}: an anchor sink is file:///dir or s3://bucket/prefix")
