"""An RFC 3161 timestamp over a seal hash: the request (DER, built here: a few fixed fields)
and the authority's answer, checked for a granted status and kept whole (its DER, base64) in
the anchor. The message imprint is the 32-byte seal hash itself, with SHA-256 as its
algorithm: `openssl ts -verify -digest <seal hash> -in <token> -CAfile <TSA's CA>` checks it.
"""

from __future__ import annotations

import base64
import secrets

import httpx

_SHA256_OID = bytes.fromhex("0609608648016503040201")  # 2.16.840.1.101.3.4.2.1


class TimestampError(Exception):
    """The authority did not grant a timestamp."""


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def _integer(value: int) -> bytes:
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")  # a leading 0 keeps it positive
    return _der(0x02, body)


def timestamp_request(digest: bytes, nonce: int) -> bytes:
    """TimeStampReq: version 1, messageImprint (SHA-256, `digest`), nonce, certReq TRUE."""
    algorithm = _der(0x30, _SHA256_OID + b"\x05\x00")
    imprint = _der(0x30, algorithm + _der(0x04, digest))
    return _der(0x30, _integer(1) + imprint + _integer(nonce) + b"\x01\x01\xff")


def _granted(response: bytes) -> bool:
    """The PKIStatus of a TimeStampResp is 0 (granted) or 1 (granted with mods)."""
    # SEQUENCE { status PKIStatusInfo SEQUENCE { status INTEGER ... } ... }
    try:
        i = 2 if response[1] < 0x80 else 2 + (response[1] & 0x7F)
        if response[0] != 0x30 or response[i] != 0x30:
            return False
        j = i + (2 if response[i + 1] < 0x80 else 2 + (response[i + 1] & 0x7F))
        if response[j] != 0x02 or response[j + 1] != 1:
            return False
        return response[j + 2] in (0, 1) and len(response) > j + 3
    except IndexError:
        return False


async def timestamp(http: httpx.AsyncClient, url: str, seal_hash: bytes) -> str:
    """A TSA's timestamp over `seal_hash`: its TimeStampResp, base64."""
    request = timestamp_request(seal_hash, secrets.randbits(63))
    try:
        reply = await http.post(
            url,
            content=request,
            headers={"Content-Type": "application/timestamp-query"},
            timeout=10.0,
        )
    except httpx.HTTPError as exc:
        raise TimestampError(f"TSA {url}: {exc}") from exc
    if reply.status_code != 200 or not _granted(reply.content):
        raise TimestampError(f"TSA {url}: HTTP {reply.status_code}, no granted timestamp")
    return base64.b64encode(reply.content).decode()
