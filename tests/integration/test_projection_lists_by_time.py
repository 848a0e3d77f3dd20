"""The console's time filter on the identity and transfer lists (`changed_since`,
`changed_until` of `list_identities`/`list_transfers`): bounds on the last event's time as the
projections order it (its nanoseconds), so a stored time PostgreSQL cannot read (a 31st of
February, which the fold counts on into March) is filtered like any other, never an error."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from service.app import create_app
from service.projections.runner import Projector
from service.settings import Settings
from service.store.projections.read import list_identities, list_transfers
from tests.integration.ui.test_pages import browser, sign_in
from tests.support.asgi import running
from tests.support.projections import append, event
from tests.support.tokens import READ_TOKEN

TIMES = {
    "a": "2026-01-07T14:30:02.000000001Z",
    "b": "2026-02-01T09:00:00+01:00",  # 08:00 UTC
    "c": "2026-02-31T10:00:00Z",  # not a date: counts as 2026-03-03T10:00:00Z
    "d": "2026-03-04T00:00:00Z",
}


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


async def _project(engine: AsyncEngine) -> None:
    bodies = []
    for name, created_at in TIMES.items():
        bodies.append(
            event(
                "identity.approved",
                {"identity_id": f"idt-{name}", "new_summary_status": "APPROVED"},
                created_at,
            )
        )
        bodies.append(
            event(
                "transfer.wire_deposit.pending",
                {"id": f"tr-{name}", "type": "WIRE_DEPOSIT", "status": "PENDING"},
                created_at,
            )
        )
    await append(engine, bodies)
    await Projector(engine).catch_up()


async def test_lists_filter_by_the_last_events_time_even_one_postgres_cannot_read(
    engine: AsyncEngine,
) -> None:
    await _project(engine)

    async def listed(since: str | None, until: str | None) -> tuple[list[str], list[str]]:
        bounds = {
            "changed_since": at(since) if since else None,
            "changed_until": at(until) if until else None,
        }
        async with engine.connect() as conn:
            identities = await list_identities(
                conn, summary_status=None, control_type=None, after=None, limit=10, **bounds
            )
            transfers = await list_transfers(conn, filters={}, after=None, limit=10, **bounds)
        return (
            [r["identity_id"].removeprefix("idt-") for r in identities.rows],
            [r["transfer_id"].removeprefix("tr-") for r in transfers.rows],
        )

    async with engine.connect() as conn:
        page = await list_transfers(conn, filters={}, after=None, limit=10)
    assert {r["last_event_time"] for r in page.rows} == set(TIMES.values())  # as Paxos wrote it

    def both(names: str) -> tuple[list[str], list[str]]:
        return list(names), list(names)

    assert await listed(None, None) == both("abcd")
    # Since: inclusive, to the nanosecond (a's last event is 1 ns after 14:30:02).
    assert await listed("2026-01-07T14:30:02", None) == both("abcd")
    assert await listed("2026-01-07T14:30:02.000001", None) == both("bcd")
    # The offset counts: b happened at 08:00 UTC.
    assert await listed("2026-02-01T08:00:00", None) == both("bcd")
    assert await listed("2026-02-01T08:00:00.000001", None) == both("cd")
    # The unreadable 31 February sorts as 3 March, 10:00.
    assert await listed("2026-03-01T00:00:00", None) == both("cd")
    assert await listed("2026-03-03T10:00:00", None) == both("cd")
    assert await listed("2026-03-03T10:00:00.000001", None) == both("d")
    # Until: exclusive.
    assert await listed(None, "2026-03-03T10:00:00") == both("ab")
    assert await listed(None, "2026-03-03T10:00:00.000001") == both("abc")
    assert await listed("2026-02-01T08:00:00", "2026-03-04T00:00:00") == both("bc")
    assert await listed("2026-03-04T00:00:01", None) == both("")


async def test_the_console_lists_filter_by_time_over_an_unreadable_one(
    settings: Settings, engine: AsyncEngine
) -> None:
    await _project(engine)
    app = create_app(settings, engine=engine)
    async with running(app), browser(app) as client:
        await sign_in(client, READ_TOKEN)
        for path, prefix in (("/ui/identities", "idt-"), ("/ui/transfers", "tr-")):
            page = await client.get(
                path,
                params={"changed_since": "2026-03-01T00:00", "changed_until": "2026-03-04T00:00"},
            )
            assert page.status_code == 200, page.text
            shown = set(re.findall(rf"{prefix}[a-d]\b", page.text))
            assert shown == {f"{prefix}c"}, (path, shown)
