"""Push subscriptions: every matching event POSTed to a subscriber's URL, signed per the
Standard Webhooks specification, in order per key, at least once (docs/subscriptions.md)."""
