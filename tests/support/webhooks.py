"""Webhook deliveries to the app under test, as Paxos makes them."""

from __future__ import annotations

import httpx

from tests.support.tokens import API_KEY

HEADERS = {"Content-Type": "application/json", "X-Api-Key": API_KEY}


async def post(
    client: httpx.AsyncClient, body: bytes, headers: dict[str, str] | None = None
) -> httpx.Response:
    """POST `body` to the webhook endpoint, with the test API key unless `headers` are given."""
    return await client.post("/webhooks/paxos", content=body, headers=headers or HEADERS)
