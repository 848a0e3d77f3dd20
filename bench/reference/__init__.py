"""Reference consumers for `bench.ingest`: what the service's stack reaches when it does nothing
but take webhooks into one table (group commit, or one commit per request)."""
