"""Integration tests: a real, migrated PostgreSQL and the app through httpx.ASGITransport."""
