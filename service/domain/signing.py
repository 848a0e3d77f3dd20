"""Signed seals: Ed25519 keys, their ids, and the signature of a seal (docs/audit.md).

The signature input is the seal's 32-byte hash itself (raw bytes, not hex): the hash already
commits to the previous seal, the range and every row of it. A key id is the lowercase hex
SHA-256 of the raw 32-byte public key, all 64 digits (a prefix would save little and invite
collisions between keys an auditor must tell apart). Keys are PEM: PKCS#8 private keys,
SubjectPublicKeyInfo public keys (what `openssl genpkey -algorithm ed25519` and
`openssl pkey -pubout` write).

Pure functions over bytes, plus two small file readers the composition roots call once at
start; `cryptography` is not an I/O library.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z ]+)-----.+?-----END \1-----", re.DOTALL)


def key_id(public: Ed25519PublicKey) -> str:
    """The key's id: hex SHA-256 of its raw 32-byte public key."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def public_pem(public: Ed25519PublicKey) -> str:
    """The public key as PEM (SubjectPublicKeyInfo)."""
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def private_pem(private: Ed25519PrivateKey) -> bytes:
    """The private key as unencrypted PKCS#8 PEM."""
    return private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True, slots=True)
class Signer:
    """The sealer's key: signs seal hashes."""

    private: Ed25519PrivateKey
    public: Ed25519PublicKey
    key_id: str

    @classmethod
    def generate(cls) -> Signer:
        return cls.of(Ed25519PrivateKey.generate())

    @classmethod
    def of(cls, private: Ed25519PrivateKey) -> Signer:
        public = private.public_key()
        return cls(private, public, key_id(public))

    @classmethod
    def from_pem(cls, pem: bytes) -> Signer:
        """ValueError if `pem` is not an unencrypted Ed25519 private key."""
        try:
            private = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"not an unencrypted PEM private key ({exc})") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise ValueError("not an Ed25519 private key")
        return cls.of(private)

    def sign(self, seal_hash: bytes) -> bytes:
        """The Ed25519 signature of a seal hash (64 bytes)."""
        return self.private.sign(seal_hash)


def parse_public_keys(pem: bytes) -> dict[str, Ed25519PublicKey]:
    """Every Ed25519 public key of a PEM file (several blocks, anything between them ignored),
    by key id. ValueError if a block is not an Ed25519 public key, or there is none."""
    keys: dict[str, Ed25519PublicKey] = {}
    for number, match in enumerate(_PEM_BLOCK.finditer(pem), start=1):
        try:
            public = serialization.load_pem_public_key(match.group(0))
        except ValueError as exc:
            raise ValueError(f"PEM block {number} is not a public key ({exc})") from None
        if not isinstance(public, Ed25519PublicKey):
            raise ValueError(f"PEM block {number} is not an Ed25519 public key")
        keys[key_id(public)] = public
    if not keys:
        raise ValueError("holds no PEM public key")
    return keys


def signature_valid(public: Ed25519PublicKey, signature: bytes, seal_hash: bytes) -> bool:
    """Whether `signature` is `public`'s signature of `seal_hash`."""
    try:
        public.verify(signature, seal_hash)
    except InvalidSignature:
        return False
    return True


def check_signature(
    keys: Mapping[str, Ed25519PublicKey], key: str, signature: bytes, seal_hash: bytes
) -> str | None:
    """None if the signature is good; else the problem kind: `unknown_key` (no trusted key
    has that id) or `bad_signature`."""
    public = keys.get(key)
    if public is None:
        return "unknown_key"
    return None if signature_valid(public, signature, seal_hash) else "bad_signature"


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None


@functools.cache
def read_signer(path: Path) -> Signer:
    """The signing key of a file, read once per process; ValueError (one line) if the file is
    missing, unreadable or not an Ed25519 private key."""
    try:
        return Signer.from_pem(_read(path))
    except ValueError as exc:
        message = str(exc) if str(exc).startswith("cannot read") else f"{path}: {exc}"
        raise ValueError(message) from None


def read_public_keys(path: Path) -> dict[str, Ed25519PublicKey]:
    """The trusted public keys of a PEM file, by key id; ValueError (one line) if not."""
    try:
        return parse_public_keys(_read(path))
    except ValueError as exc:
        message = str(exc) if str(exc).startswith("cannot read") else f"{path}: {exc}"
        raise ValueError(message) from None


def trusted_keys(signing_key: Path | None, public_keys: Path | None) -> dict[str, Ed25519PublicKey]:
    """The keys verify accepts: AUDIT_PUBLIC_KEYS' and the signing key's own public key.
    ValueError naming the setting if a file is bad."""
    keys: dict[str, Ed25519PublicKey] = {}
    if public_keys is not None:
        try:
            keys.update(read_public_keys(public_keys))
        except ValueError as exc:
            raise ValueError(f"AUDIT_PUBLIC_KEYS: {exc}") from None
    if signing_key is not None:
        try:
            signer = read_signer(signing_key)
        except ValueError as exc:
            raise ValueError(f"AUDIT_SIGNING_KEY: {exc}") from None
        keys[signer.key_id] = signer.public
    return keys
