"""A type prefix filter costs the same however many types senders invented, and a listing that
fails raises its own error (issue #15, finding 5)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from service.domain.stored import EventFilter
from service.store.events import list_events
from tests.support.tokens import read_headers

T0 = datetime(2026, 1, 7, 14, 30, 2, tzinfo=UTC)
INVENTED_TYPES = 20_000

# One event of each invented type, under the prefix queried, one second apart; the types are
# what a sender chooses (any string is accepted), so nothing bounds how many there are.
_INVENTED = """
INSERT INTO events (event_id, type, source, time, object, is_test, status, deliveries)
SELECT gen_random_uuid(), 'identity.invented_' || i, 'com.paxos',
       CAST(:t0 AS timestamptz) + make_interval(secs => i), 'event', i % 10 = 0, 'fetched', 1
FROM generate_series(1, :n) AS i
"""


async def _store_invented(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(_INVENTED), {"t0": T0, "n": INVENTED_TYPES})
        # Other families, which a prefix must not pick up.
        await conn.execute(
            text(
                "INSERT INTO events (event_id, type, source, time, object, is_test, status) "
                "SELECT gen_random_uuid(), t, 'com.paxos', CAST(:t AS timestamptz), 'event', "
                "false, 'fetched' FROM unnest(CAST(:types AS text[])) AS t"
            ),
            {"t": T0 + timedelta(days=1), "types": ["identity", "identityx.a", "transfer.x.y"]},
        )
        await conn.execute(text("ANALYZE events"))


@pytest.mark.slow
async def test_a_prefix_answers_quickly_with_20000_stored_types(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await _store_invented(engine)
    newest = [f"identity.invented_{i}" for i in range(INVENTED_TYPES, 0, -1)]
    for limit in (10, 7, 10):
        started = time.perf_counter()
        response = await client.get(
            "/events", params={"type": "identity.*", "limit": limit}, headers=read_headers()
        )
        elapsed = time.perf_counter() - started
        print(
            f"type=identity.* limit={limit} over {INVENTED_TYPES:,} types: {elapsed * 1000:.1f} ms"
        )
        assert response.status_code == 200, response.text
        assert [e["type"] for e in response.json()["items"]] == newest[:limit]
        assert elapsed < 1.0
    # A deeper prefix, and one with is_test, in the same family.
    response = await client.get(
        "/events",
        params=[("type", "identity.invented_1999.*"), ("type", "identity.invented_19990")],
        headers=read_headers(),
    )
    assert [e["type"] for e in response.json()["items"]] == ["identity.invented_19990"]
    response = await client.get(
        "/events",
        params={"type": "identity.*", "is_test": "true", "limit": 2},
        headers=read_headers(),
    )
    assert [e["type"] for e in response.json()["items"]] == [
        "identity.invented_20000",
        "identity.invented_19990",
    ]


async def test_a_failing_listing_raises_the_databases_own_error(engine: AsyncEngine) -> None:
    """Here a lock timeout: it must reach the caller as itself, not as "current transaction is
    aborted" from restoring the planner settings after it."""
    async with engine.connect() as holder, engine.connect() as conn:
        await holder.execute(text("LOCK TABLE events IN ACCESS EXCLUSIVE MODE"))
        await conn.execute(text("SET LOCAL lock_timeout = '100ms'"))
        with pytest.raises(DBAPIError) as failed:
            await list_events(conn, EventFilter(types=("identity.approved",)), limit=10)
        assert getattr(failed.value.orig, "sqlstate", None) == "55P03", failed.value
        await conn.rollback()
        await holder.rollback()
        # The connection is usable again, and plans as before.
        assert await conn.scalar(text("SELECT current_setting('enable_sort')")) == "on"
        found = await list_events(conn, EventFilter(type_prefixes=("identity.",)), limit=10)
        assert found.items == []
