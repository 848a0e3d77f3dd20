"""Push delivery's pure parts: signatures (judged by the `standardwebhooks` reference package),
the address policy, URL checks, and when to retry."""

from __future__ import annotations

import ipaddress
import random
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from service.domain.stored import Event
from service.store.subscriptions import Claim
from service.subscriptions.delivery import Attempt, RetryPolicy, decide
from service.web.ssrf import check_url, refusal, url_problem
from service.web.standard_webhooks import format_secret, new_secret, signed_headers

pytestmark = pytest.mark.server_independent


def test_a_signature_verifies_with_the_reference_implementation() -> None:
    key = new_secret()
    assert 24 <= len(key) <= 64
    body = b'{"id": "x", "type": "identity.approved"}'
    headers = signed_headers([key], "msg-1", int(time.time()), body)
    assert Webhook(format_secret(key)).verify(body, headers) == {
        "id": "x",
        "type": "identity.approved",
    }
    with pytest.raises(WebhookVerificationError):
        Webhook(format_secret(new_secret())).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(format_secret(key)).verify(body + b" ", headers)


def test_two_keys_sign_side_by_side_and_either_verifies() -> None:
    old, new = new_secret(), new_secret()
    body = b"{}"
    headers = signed_headers([new, old], "msg-2", int(time.time()), body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(format_secret(old)).verify(body, headers)
    Webhook(format_secret(new)).verify(body, headers)


def test_an_old_timestamp_is_refused_by_receivers() -> None:
    """Why every attempt is signed afresh: the reference library refuses stale timestamps."""
    key = new_secret()
    headers = signed_headers([key], "msg-3", int(time.time()) - 3600, b"{}")
    with pytest.raises(WebhookVerificationError):
        Webhook(format_secret(key)).verify(b"{}", headers)


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("::1", True),
        ("169.254.169.254", True),
        ("fe80::1", True),
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("192.168.1.1", True),
        ("100.64.0.1", True),  # carrier-grade NAT: not public
        ("0.0.0.0", True),  # noqa: S104 - an address judged, not bound
        ("::", True),
        ("224.0.0.1", True),
        ("fc00::1", True),
        ("::ffff:127.0.0.1", True),
        ("::ffff:10.0.0.1", True),
        ("64:ff9b::a00:1", True),  # NAT64 of 10.0.0.1
        ("2002:7f00:1::", True),  # 6to4 of 127.0.0.1
        ("93.184.216.34", False),
        ("2606:2800:220:1:248:1893:25c8:1946", False),
        ("::ffff:93.184.216.34", False),
    ],
)
def test_the_address_policy(address: str, refused: bool) -> None:
    assert (refusal(ipaddress.ip_address(address)) is not None) is refused


@pytest.mark.parametrize(
    "url",
    [
        "ftp://a.example/",
        "file:///etc/passwd",
        "https://",
        "https://user:pw@a.example/",
        "https://a.example:0/",
        "https://a.example/x#frag",
        "https://a.example/" + "x" * 3000,
        "https://a.example/\nx",
        "https://a.example:99999/",
    ],
)
def test_urls_that_are_never_taken(url: str) -> None:
    assert url_problem(url) is not None


async def test_names_are_resolved_and_every_address_checked_at_creation() -> None:
    assert await check_url("http://localhost:8080/", allow_private=False)
    assert await check_url("http://127.0.0.1/", allow_private=False)
    assert await check_url("http://[::ffff:169.254.169.254]/", allow_private=False)
    assert await check_url("http://localhost:8080/", allow_private=True) is None
    assert await check_url("https://93.184.216.34/hook", allow_private=False) is None


def _claim(attempts: int, first: datetime) -> Claim:
    event = Event(
        id=uuid.uuid4(),
        type="identity.approved",
        source="com.paxos",
        time=first,
        object="event",
        is_test=False,
        status="fetched",
        via="webhook",
        deliveries=1,
        first_received_at=None,
        last_received_at=None,
        fetched_at=None,
        attempts=1,
        last_error=None,
        identity_id=None,
        object_type=None,
        undelivered_webhooks=None,
        detail=None,
    )
    return Claim(1, 10, attempts, first, first, event)


def test_backoff_doubles_from_5_s_to_an_hour_with_jitter() -> None:
    policy, rng = RetryPolicy(), random.Random(1)
    for attempts, nominal in [(1, 5), (2, 10), (3, 20), (4, 40), (11, 3600), (30, 3600)]:
        delays = [policy.backoff_s(attempts, rng) for _ in range(200)]
        assert min(delays) >= nominal * 0.8 - 1e-9
        assert max(delays) <= min(3600, nominal * 1.2) + 1e-9
        assert len(set(delays)) > 100  # jittered


def test_past_the_horizon_a_failure_makes_the_subscription_failing() -> None:
    now = datetime(2026, 12, 4, tzinfo=UTC)
    policy, rng = RetryPolicy(horizon_s=3 * 86400), random.Random(2)
    early = decide(_claim(3, now - timedelta(hours=1)), Attempt("timeout"), policy, now, rng)
    assert early.outcome == "timeout" and not early.give_up and early.retry_in_s > 0
    late = decide(
        _claim(40, now - timedelta(days=3)), Attempt("failed", "HTTP 500"), policy, now, rng
    )
    assert late.give_up and "failing" in (late.error or "")
    gone = decide(_claim(40, now - timedelta(days=4)), Attempt("gone"), policy, now, rng)
    assert not gone.give_up  # 410 pauses instead
    ok = decide(_claim(1, now), Attempt("delivered"), policy, now, rng)
    assert (ok.outcome, ok.give_up, ok.error) == ("delivered", False, None)
