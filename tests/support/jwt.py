"""An outside identity provider for WEBHOOK_AUTH=jwt: its keys, the JWKS endpoint it serves
(faked with `httpx.MockTransport`), and tokens signed as it would sign them."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

ISSUER = "https://idp.example.test/"
AUDIENCE = "https://paxos-event-store.example.test/webhooks"
JWKS_URL = "https://idp.example.test/.well-known/jwks.json"

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ROTATED_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC384_KEY = ec.generate_private_key(ec.SECP384R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()

Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def public_jwk(key: Key, kid: str, **extra: str) -> dict[str, Any]:
    """The JWK an identity provider would publish for `key`."""
    public = key.public_key()
    jwk: dict[str, Any]
    if isinstance(public, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    return {**jwk, "kid": kid, "use": "sig", **extra}


def claims(**overrides: Any) -> dict[str, Any]:
    """Valid claims with `overrides`; None removes a claim."""
    now = int(time.time())
    base = {"iss": ISSUER, "aud": AUDIENCE, "sub": "paxos", "iat": now, "exp": now + 300}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def mint(key: Key, alg: str, kid: str | None = "rsa-1", **overrides: Any) -> str:
    """A token signed with `key`, with valid claims but for `overrides`."""
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims(**overrides), key, algorithm=alg, headers=headers)


class IdentityProvider:
    """The JWKS endpoint of an outside identity provider, counting the fetches it serves."""

    def __init__(self, keys: list[dict[str, Any]]) -> None:
        self.keys = keys
        self.requests = 0
        self.failure: str | None = None  # "down", "500", "not-json", "no-keys"
        self.delay_s = 0.0

    async def handle(self, request: httpx.Request) -> httpx.Response:
        assert str(request.url) == JWKS_URL
        self.requests += 1
        if self.delay_s:
            # Keeps the fetch in flight so concurrent requests overlap with it.
            await asyncio.sleep(self.delay_s)
        if self.failure == "down":
            raise httpx.ConnectError("connection refused", request=request)
        if self.failure == "500":
            return httpx.Response(500, text="oops")
        if self.failure == "not-json":
            return httpx.Response(200, text="<html>login</html>")
        if self.failure == "no-keys":
            return httpx.Response(200, json={"keys": [{"kty": "oct", "k": "c2VjcmV0"}]})
        return httpx.Response(200, json={"keys": self.keys})
