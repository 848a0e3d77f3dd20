"""WEBHOOK_AUTH=jwt without the app: the authenticator's key set (fetch, cache, rotation, the
refetch interval, outages), against the fake identity provider's JWKS endpoint."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from service.intake.jwt import MAX_AGE_S, REFETCH_INTERVAL_S, AuthUnavailable, JwtAuthenticator
from service.web.problems import Unauthenticated
from tests.support.jwt import (
    AUDIENCE,
    ISSUER,
    JWKS_URL,
    ROTATED_RSA_KEY,
    RSA_KEY,
    IdentityProvider,
    mint,
    public_jwk,
)

# The same on every PostgreSQL: CI runs these on one server only.
pytestmark = pytest.mark.server_independent


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def authenticator(outbound: httpx.AsyncClient, clock: Clock) -> JwtAuthenticator:
    return JwtAuthenticator(
        jwks_url=JWKS_URL, issuer=ISSUER, audience=AUDIENCE, client=outbound, clock=clock
    )


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_unknown_kid_refetches_once_and_accepts_a_rotated_in_key(
    outbound: httpx.AsyncClient, idp: IdentityProvider
) -> None:
    clock = Clock()
    auth = authenticator(outbound, clock)
    await auth.authenticate(bearer(mint(RSA_KEY, "RS256", "rsa-1")))
    assert idp.requests == 1

    idp.keys = [*idp.keys, public_jwk(ROTATED_RSA_KEY, "rsa-2")]
    rotated = mint(ROTATED_RSA_KEY, "RS256", "rsa-2")
    # Within the refetch interval the new kid is not looked up yet: refused, nothing fetched.
    with pytest.raises(Unauthenticated):
        await auth.authenticate(bearer(rotated))
    assert idp.requests == 1

    clock.now += REFETCH_INTERVAL_S + 1
    await auth.authenticate(bearer(rotated))
    assert idp.requests == 2
    await auth.authenticate(bearer(rotated))
    await auth.authenticate(bearer(mint(RSA_KEY, "RS256", "rsa-1")))
    assert idp.requests == 2


async def test_many_unknown_kids_cause_at_most_one_refetch_per_interval(
    outbound: httpx.AsyncClient, idp: IdentityProvider
) -> None:
    clock = Clock()
    auth = authenticator(outbound, clock)
    await auth.authenticate(bearer(mint(RSA_KEY, "RS256")))
    clock.now += REFETCH_INTERVAL_S + 1
    idp.delay_s = 0.05

    async def attempt(kid: str) -> Unauthenticated | None:
        try:
            await auth.authenticate(bearer(mint(RSA_KEY, "RS256", kid)))
        except Unauthenticated as exc:
            return exc
        return None

    results = await asyncio.gather(*(attempt(f"unknown-{i}") for i in range(50)))
    assert all(isinstance(r, Unauthenticated) for r in results)
    assert idp.requests == 2  # the first fetch, and one refetch for all fifty
    results = await asyncio.gather(*(attempt(f"more-{i}") for i in range(50)))
    assert all(isinstance(r, Unauthenticated) for r in results)
    assert idp.requests == 2


async def test_cached_keys_outlive_a_jwks_outage(
    outbound: httpx.AsyncClient, idp: IdentityProvider
) -> None:
    clock = Clock()
    auth = authenticator(outbound, clock)
    token = mint(RSA_KEY, "RS256")
    await auth.authenticate(bearer(token))
    idp.failure = "down"
    clock.now += MAX_AGE_S + 1
    # The keys are due for a refresh that fails: the cached ones keep working.
    await auth.authenticate(bearer(token))
    assert idp.requests == 2
    # And the failed attempt is rate-limited too.
    await auth.authenticate(bearer(token))
    assert idp.requests == 2


async def test_a_withdrawn_key_is_refused_after_the_cache_ages(
    outbound: httpx.AsyncClient, idp: IdentityProvider
) -> None:
    clock = Clock()
    auth = authenticator(outbound, clock)
    token = mint(RSA_KEY, "RS256", "rsa-1")
    await auth.authenticate(bearer(token))
    idp.keys = [public_jwk(ROTATED_RSA_KEY, "rsa-2")]
    clock.now += MAX_AGE_S + 1
    with pytest.raises(Unauthenticated) as refused:
        await auth.authenticate(bearer(token))
    assert refused.value.detail == "token signed by an unknown key"


async def test_jwks_recovery_is_picked_up_after_the_interval(
    outbound: httpx.AsyncClient, idp: IdentityProvider
) -> None:
    clock = Clock()
    auth = authenticator(outbound, clock)
    idp.failure = "down"
    token = mint(RSA_KEY, "RS256")
    with pytest.raises(AuthUnavailable):
        await auth.authenticate(bearer(token))
    idp.failure = None
    clock.now += REFETCH_INTERVAL_S + 1
    await auth.authenticate(bearer(token))
    assert idp.requests == 2


async def test_concurrent_fetches_are_single_flight_even_without_a_rate_limit(
    outbound: httpx.AsyncClient, idp: IdentityProvider
) -> None:
    auth = JwtAuthenticator(
        jwks_url=JWKS_URL, issuer=ISSUER, audience=AUDIENCE, client=outbound, refetch_interval_s=0
    )
    idp.delay_s = 0.05
    token = mint(RSA_KEY, "RS256")
    await asyncio.gather(*(auth.authenticate(bearer(token)) for _ in range(20)))
    assert idp.requests == 1
