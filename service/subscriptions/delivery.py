"""One delivery attempt: the signed POST, what the receiver's answer means, and when to retry.

The body is the event exactly as `GET /events/{id}` returns it; `webhook-id` is the Paxos event
id (the same on every attempt, so receivers can deduplicate) and `webhook-timestamp` is this
attempt's (receivers refuse old ones, so each attempt is signed afresh). A 2xx acknowledges;
410 Gone pauses the subscription; anything else, a timeout or a connection error is retried
with exponential backoff and jitter until the retry horizon has passed, then the subscription
becomes `failing` and stops where it is. Redirects are not followed (the client never does) and
at most `MAX_BODY_BYTES` of an answer are read (then the connection is dropped); a failure's
error quotes the first `ERROR_BODY_CHARS` of the answer's body.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from datetime import datetime

import httpx
import msgspec

from service.store.subscriptions import Claim, Endpoint, Outcome, Result
from service.web.ssrf import failure_kind
from service.web.standard_webhooks import signed_headers

TIMEOUT_S = 10.0
MAX_BODY_BYTES = 64 * 1024
ERROR_BODY_CHARS = 200  # of a failed answer's body, quoted in its error (the console shows it)

_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When to try a failed delivery again, and when to stop."""

    horizon_s: float = 3 * 86400.0  # from the event's first attempt
    base_s: float = 5.0
    cap_s: float = 3600.0

    def backoff_s(self, attempts: int, rng: random.Random) -> float:
        """5 s, 10 s, 20 s ... each within ±20%, up to the cap, then 80-100% of it (jitter,
        so that the keys of a receiver that was down do not all come back in the same second)."""
        step = self.base_s * 2.0 ** min(max(0, attempts - 1), 60)
        if step * 1.2 <= self.cap_s:
            return step * (0.8 + 0.4 * rng.random())
        return min(step, self.cap_s) * (0.8 + 0.2 * rng.random())


@dataclass(frozen=True, slots=True)
class Attempt:
    outcome: Outcome
    error: str | None = None


def body_of(claim: Claim) -> bytes:
    """The delivery's body: the event as the read API returns it."""
    return _encoder.encode(claim.event)


async def send(
    client: httpx.AsyncClient,
    endpoint: Endpoint,
    claim: Claim,
    *,
    timeout_s: float = TIMEOUT_S,
    now: float | None = None,
) -> Attempt:
    """POST `claim`'s event to `endpoint`, signed with each of its secrets; how it went."""
    body = body_of(claim)
    timestamp = int(time.time() if now is None else now)
    headers = signed_headers(endpoint.secrets, str(claim.event.id), timestamp, body)
    try:
        async with (
            asyncio.timeout(timeout_s),
            client.stream("POST", endpoint.url, content=body, headers=headers) as response,
        ):
            read = 0
            head = b""
            async for chunk in response.aiter_raw():
                if len(head) < ERROR_BODY_CHARS:
                    head += chunk[: ERROR_BODY_CHARS - len(head)]
                read += len(chunk)
                if read >= MAX_BODY_BYTES:
                    break  # the rest is not read: closing drops the connection
            status = response.status_code
            encoded = response.headers.get("content-encoding", "identity") != "identity"
    except (TimeoutError, httpx.HTTPError) as exc:
        kind, reason = failure_kind(exc)
        if kind == "refused":
            return Attempt("refused", reason)
        if kind == "timeout":
            return Attempt("timeout", f"no answer within {timeout_s:g} s")
        return Attempt("connection_error", _first_line(exc, type(exc).__name__))
    if 200 <= status < 300:
        return Attempt("delivered")
    if status == 410:
        return Attempt("gone", "HTTP 410 Gone: the subscription is paused")
    if 300 <= status < 400:
        return Attempt("failed", f"HTTP {status} (redirects are not followed)")
    said = "" if encoded else _quoted(head)
    return Attempt("failed", f"HTTP {status}: {said}" if said else f"HTTP {status}")


def _quoted(head: bytes) -> str:
    """The start of an answer's body as one line of text (a compressed body is not quoted)."""
    text = " ".join(head.decode("utf-8", errors="replace").split())
    return text[:ERROR_BODY_CHARS]


def _first_line(exc: BaseException, fallback: str) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else fallback)[:300]


def decide(
    claim: Claim, attempt: Attempt, policy: RetryPolicy, now: datetime, rng: random.Random
) -> Result:
    """The result to record for `attempt` (pure): delivered, or when to try again and whether
    the retry horizon has passed."""
    if attempt.outcome == "delivered":
        return Result(claim.subscription_id, claim.position, claim.attempts, "delivered")
    delay = policy.backoff_s(claim.attempts, rng)
    elapsed = (now - claim.first_attempt_at).total_seconds()
    give_up = attempt.outcome != "gone" and elapsed + delay > policy.horizon_s
    error = attempt.error or attempt.outcome
    if give_up:
        error = f"{error}; retried for {elapsed:.0f} s: the subscription is failing"
    return Result(
        claim.subscription_id,
        claim.position,
        claim.attempts,
        attempt.outcome,
        retry_in_s=delay,
        error=error,
        give_up=give_up,
    )
