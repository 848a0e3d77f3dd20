"""Prometheus metrics of this process (`GET /metrics`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from service.domain.notification import KNOWN_TYPES

WEBHOOKS = Counter(
    "paxos_webhooks_total",
    "Webhook deliveries answered 2xx, by outcome (accepted, duplicate) and event type",
    ["outcome", "type"],
)
WEBHOOK_REJECTIONS = Counter(
    "paxos_webhook_rejections_total",
    "Webhook deliveries refused, by reason (unauthenticated, invalid_json, ...)",
    ["reason"],
)
FETCHES = Counter(
    "paxos_fetches_total",
    "Get Event outcomes (fetched, retry, rate_limited, failed, not_found, mismatch)",
    ["outcome"],
)
FETCH_SECONDS = Histogram(
    "paxos_fetch_seconds",
    "Time from claiming an event to Paxos's answer, rate-limit waits included",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
FETCH_CONFIG_ERRORS = Counter(
    "paxos_fetch_config_errors_total",
    "Get Event refused with 400 or 403: credentials, scope or URL need attention",
)
TOKEN_REFRESHES = Counter(
    "paxos_token_refreshes_total", "OAuth token requests made to Paxos by this process"
)
RATE_LIMIT_WAITS = Counter(
    "paxos_rate_limit_waits_total",
    "Times a Paxos call waited because the deployment's rate limit was used up",
)
RATE_LIMIT_LATE = Counter(
    "paxos_rate_limit_late_permits_total",
    "Rate-limit permits dropped because their call could not leave on time",
)
MISSED_WEBHOOKS = Counter(
    "paxos_missed_webhooks_total",
    "Events found by List Events (reconciler, backfill) that no webhook had brought, by type",
    ["type"],
)
AUTH_THROTTLED = Counter(
    "paxos_auth_throttled_total",
    "Requests answered 429 because their address failed authentication too often",
)
RECONCILE_PASSES = Counter("paxos_reconcile_passes_total", "List Events passes completed")
PENDING = Gauge("paxos_events_pending", "Events stored but not yet fetched")
OLDEST_PENDING_AGE = Gauge(
    "paxos_events_oldest_pending_age_seconds", "Age of the oldest event not yet fetched"
)
# Set by the projector every few seconds and by GET /health/ready.
PROJECTION_LAG_EVENTS = Gauge(
    "paxos_projection_lag_events",
    "Fetched events not yet applied to a projection (counted up to 100,000)",
    ["projection"],
)
PROJECTION_LAG_SECONDS = Gauge(
    "paxos_projection_lag_seconds",
    "Age of the oldest fetched event not yet applied to a projection",
    ["projection"],
)

# Push subscriptions, labelled by the subscription's name (operators create few).
SUBSCRIPTION_LAG_EVENTS = Gauge(
    "paxos_subscription_lag_events",
    "Matching events a subscription has not delivered yet",
    ["subscription"],
)
AUDIT_ANCHOR_FAILURES = Counter(
    "paxos_audit_anchor_failures_total",
    "Failed writes of the seal head to an anchor sink (file://, s3://, or the TSA)",
    ["sink"],
)
SUBSCRIPTION_DELIVERIES = Counter(
    "paxos_subscription_deliveries_total",
    "Push delivery attempts by outcome (delivered, failed, timeout, connection_error, "
    "refused, gone)",
    ["subscription", "outcome"],
)
SUBSCRIPTION_DELIVERY_SECONDS = Histogram(
    "paxos_subscription_delivery_seconds",
    "Time from sending a push delivery to the receiver's answer (or the attempt's failure)",
    ["subscription"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

# Types Paxos documents keep a series each; anything else is counted as "other", so a sender
# inventing types cannot grow /metrics without bound.
_KNOWN_TYPES = frozenset(KNOWN_TYPES)


def type_label(event_type: str) -> str:
    """`event_type` if Paxos documents it, else "other" (bounded cardinality)."""
    return event_type if event_type in _KNOWN_TYPES else "other"
