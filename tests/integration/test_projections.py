"""Projections: gap-safe reading, order independence against the pure fold (for the runner's
batches and for a rebuild), one applier per batch, and lag. Real Postgres throughout (each
test gets its own database)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import msgspec
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.domain.event import time_ns
from service.projections.rebuild import rebuild
from service.projections.runner import Projector
from service.simulator.universe import format_rfc3339_ns
from service.store.projections.checkpoints import apply_batch, ensure_checkpoints, lag
from service.store.projections.registry import IDENTITIES
from tests.support.projections import append, event, fold, stored_view, view_of_state

# --- the ordering key ---------------------------------------------------------------------


# RFC 3339's range of each two-digit field of a time.
_RANGES = {
    "month": (1, 12),
    "day": (1, 31),
    "hour": (0, 23),
    "minute": (0, 59),
    "second": (0, 60),
    "offset_hour": (0, 23),
    "offset_minute": (0, 59),
}


@st.composite
def near_rfc3339(draw: st.DrawFn) -> str:
    """A time as Paxos writes it, with either separator, 0 to 12 fractional digits and any
    zone; at most one field (the year too) at or just past an end of its range, or 00 or 99;
    one in two then gets one character replaced, dropped or added."""
    off = draw(st.sampled_from([None, *_RANGES]))
    f = {}
    for name, (low, high) in _RANGES.items():
        edges = sorted({max(low - 1, 0), low, high, high + 1, 0, 99})
        value = draw(st.sampled_from(edges) if name == off else st.integers(low, high))
        f[name] = f"{value:02d}"
    years = st.one_of(st.integers(1678, 2261), st.sampled_from([1677, 1678, 2261, 2262]))
    fraction = draw(st.one_of(st.just(""), st.text("0123456789", min_size=1, max_size=12)))
    zone = draw(st.sampled_from(["Z", "z", "+", "-"]))
    text_ = (
        f"{draw(years)}-{f['month']}-{f['day']}{draw(st.sampled_from('Tt'))}"
        f"{f['hour']}:{f['minute']}:{f['second']}{'.' + fraction if fraction else ''}"
        + (zone if zone in "Zz" else f"{zone}{f['offset_hour']}:{f['offset_minute']}")
    )
    edit = draw(st.sampled_from(["none", "none", "none", "replace", "drop", "add"]))
    # Often at a separator, or where the fraction or the zone starts.
    at = draw(st.one_of(st.sampled_from([4, 7, 10, 13, 16, 19]), st.integers(0, len(text_) - 1)))
    char = draw(st.sampled_from("09a-:.TtZz+ \u0663\u00e9"))
    return {
        "none": text_,
        "replace": text_[:at] + char + text_[at + 1 :],
        "drop": text_[:at] + text_[at + 1 :],
        "add": text_[:at] + char + text_[at:],
    }[edit]


async def stored_ns(engine: AsyncEngine, prefix: str) -> dict[str, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT identity_id, last_ns FROM identities WHERE identity_id LIKE :p"),
            {"p": prefix + "%"},
        )
        return {r.identity_id: r.last_ns for r in rows}


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@example(
    times=[
        "2261-12-31T23:59:60.999999999-23:59",  # the latest readable: still fits a bigint
        "1678-01-01T00:00:00+23:59",  # the earliest
        "2261-12-31T99:99:99Z",  # out of range; would overflow
        "2025-02-31T00:00:00Z",  # counts on into March, in both
        "2025-01-01t00:00:00.1234567891234z",
    ]
)
@example(
    times=[
        "2025-01-01T00:00:00.Z",
        "2025-01-01T00:00:00.5",
        "2025/01-01T00:00:00Z",
        "2025-01/01T00:00:00Z",
        "2025-01-01 00:00:00Z",
        "2025-01-01T00;00:00Z",
        "2025-01-01T00:00;00Z",
        "2025-01-01T00:00:00+05-30",
        "2025-01-01T00:00:00*05:30",
        "2025-01-01T00:00:00.12a4Z",
        "2025-01-01T00:00:00.1234\u00e9",
        "2025-01-01T00:00:0Z",
        "2025-01-01T00:00:00+00:0",
        "20250-01-01T00:00:00Z",
        "2025-01-01T00:00:00Zz",
        "\uff12025-01-01T00:00:00Z",
        "2025-01-01T00:00:00+05:30",
    ]
)
@given(times=st.lists(near_rfc3339(), min_size=10, max_size=50))
async def test_sql_reads_every_time_as_time_ns_does(engine: AsyncEngine, times: list[str]) -> None:
    """The SQL's checks and sums give what `time_ns` gives, through the runner's batches and
    through a rebuild, on times near RFC 3339; none of them stops the projection."""
    prefix = f"idt-{uuid.uuid4().hex[:8]}-"
    bodies = [
        event("identity.approved", {"identity_id": f"{prefix}{i}"}, created_at)
        for i, created_at in enumerate(times)
    ]
    expected = {
        f"{prefix}{i}": ns
        for i, created_at in enumerate(times)
        if (ns := time_ns(created_at)) is not None
    }
    await append(engine, bodies)
    await Projector(engine).catch_up()
    assert await stored_ns(engine, prefix) == expected
    await rebuild(engine, IDENTITIES)
    assert await stored_ns(engine, prefix) == expected


async def test_sql_orders_by_nanoseconds_then_id(engine: AsyncEngine) -> None:
    """Two events in the same microsecond order by their nanoseconds, and two at the same
    nanosecond by id; offsets and fraction lengths do not matter."""
    ident = "idt-ns"
    low, high = uuid.UUID(int=1), uuid.UUID(int=2)
    bodies = [
        # 14:30:02.000000500 UTC, written with an offset: newer than the .0000001 below.
        event(
            "identity.approved",
            {"identity_id": ident, "new_summary_status": "APPROVED"},
            "2026-01-07T16:30:02.000000500+02:00",
            high,
        ),
        event(
            "identity.denied",
            {"identity_id": ident, "new_summary_status": "DENIED"},
            "2026-01-07T14:30:02.0000001Z",
            low,
        ),
        # Same instant as the approval, smaller id: older.
        event(
            "identity.disabled",
            {"identity_id": ident, "new_summary_status": "DISABLED"},
            "2026-01-07T14:30:02.000000500Z",
            uuid.UUID(int=0),
        ),
    ]
    await append(engine, bodies)
    await Projector(engine).catch_up()
    view = await stored_view(engine, ident)
    assert view is not None
    assert view["summary_status"] == "APPROVED"
    assert view["last_event_id"] == str(high)
    state = fold(bodies, ident)
    assert state is not None and view == view_of_state(state)


# --- gap-safe reading ---------------------------------------------------------------------


async def test_appends_committed_in_inverted_order_are_both_applied(engine: AsyncEngine) -> None:
    """A takes the smaller position but commits after B; a reader that followed positions
    would move past A's position when it sees B, and skip A for good."""
    first = event(
        "identity.approved",
        {"identity_id": "idt-a", "new_summary_status": "APPROVED"},
        "2026-01-07T14:30:02Z",
    )
    second = event(
        "identity.approved",
        {"identity_id": "idt-b", "new_summary_status": "APPROVED"},
        "2026-01-07T14:30:03Z",
    )
    projector = Projector(engine)
    async with engine.connect() as a, engine.connect() as b:
        await a.begin()
        await a.execute(text("SELECT pg_current_xact_id()"))  # A's transaction id comes first
        await a.execute(
            text(
                "INSERT INTO events (event_id, type, source, time, object, is_test, status) "
                "VALUES (:id, 'identity.approved', 'com.paxos', now(), 'event', false, 'fetched')"
            ),
            {"id": uuid.UUID(first["id"])},
        )
        await a.execute(
            text(
                "INSERT INTO journal (event_id, kind, body) VALUES (:id, 'event', CAST(:b AS json))"
            ),
            {"id": uuid.UUID(first["id"]), "b": msgspec.json.encode(first).decode()},
        )
        await b.begin()
        await b.execute(
            text(
                "INSERT INTO events (event_id, type, source, time, object, is_test, status) "
                "VALUES (:id, 'identity.approved', 'com.paxos', now(), 'event', false, 'fetched')"
            ),
            {"id": uuid.UUID(second["id"])},
        )
        await b.execute(
            text(
                "INSERT INTO journal (event_id, kind, body) VALUES (:id, 'event', CAST(:b AS json))"
            ),
            {"id": uuid.UUID(second["id"]), "b": msgspec.json.encode(second).decode()},
        )
        await b.commit()
        async with engine.connect() as conn:
            positions = dict(
                (await conn.execute(text("SELECT event_id::text, position FROM journal"))).all()
            )
        # B is visible but A is not: A holds the smaller position.
        assert positions == {second["id"]: positions[second["id"]]}
        await projector.catch_up()
        await a.commit()
    assert positions[second["id"]] > 0
    await projector.catch_up()
    assert await stored_view(engine, "idt-a") is not None
    assert await stored_view(engine, "idt-b") is not None
    async with engine.connect() as conn:
        both = (await conn.execute(text("SELECT count(*) FROM identities"))).scalar()
    assert both == 2


# --- order independence -------------------------------------------------------------------

TIMES = [
    "2026-01-07T14:30:02Z",
    "2026-01-07T14:30:02.000000001Z",
    "2026-01-07T16:30:02.000000001+02:00",  # the same instant as the one before
    "2026-01-07T14:30:02.5Z",
    "2026-01-07T14:30:03.123456789Z",
    "2026-01-07T14:31:00Z",
    "not a time",
]
IDS = [uuid.UUID(int=i) for i in range(1, 6)]  # few ids per test, so ties on time happen


@st.composite
def stories(draw: st.DrawFn) -> list[tuple[dict[str, Any], bool]]:
    """Events about two identities (and a transfer), some of them test events."""
    run = uuid.uuid4().hex[:8]  # fresh subjects per example: one database serves them all
    identities = [f"idt-{run}-1", f"idt-{run}-2"]
    out = []
    for _ in range(draw(st.integers(1, 14))):
        ident = draw(st.sampled_from(identities))
        kind = draw(
            st.sampled_from(
                ["approved", "denied", "documents", "kyc", "created", "deleted", "other"]
            )
        )
        base: dict[str, Any] = {"id": uuid.uuid4().hex, "identity_id": ident}
        if kind in ("approved", "denied"):
            type_ = f"identity.{kind}"
            base["new_summary_status"] = kind.upper()
        elif kind == "documents":
            type_ = "identity.documents_required"
            base["required_documents"] = draw(
                st.lists(st.sampled_from(["PASSPORT", "UTILITY_BILL", 7]), max_size=3)
            )
        elif kind == "kyc":
            type_ = "identity.kyc_refresh." + draw(
                st.sampled_from(["started", "completed", "expired"])
            )
            if draw(st.booleans()):
                base["next_kyc_refresh_date"] = "2027-01-07T00:00:00Z"
            base["last_kyc_refresh_date"] = draw(st.sampled_from(["2026-01-07T00:00:00Z", None]))
        elif kind in ("created", "deleted"):
            type_ = f"identity.control.{kind}"
            base.update(
                control_id=draw(st.sampled_from(["ctl-1", "ctl-2"])),
                control_type=draw(st.sampled_from(["FROZEN", "SELL_ONLY"])),
                set_by="PAXOS",
                is_overridable=draw(st.sampled_from([True, False, "yes"])),
                reason_code="FRAUD_REVIEW",
            )
        else:
            type_ = "transfer.wire_deposit.pending"
            base = {"id": f"trf-{run}", "type": "WIRE_DEPOSIT", "status": "PENDING"}
        body = event(type_, base, draw(st.sampled_from(TIMES)), uuid.uuid4())
        # Ties on created_at must be broken by id: draw ids from a small set, made unique.
        out.append(
            (body, draw(st.booleans().filter(lambda _: True)) and draw(st.integers(0, 9)) == 0)
        )
    return out


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(story=stories(), data=st.data())
async def test_any_order_and_batching_gives_the_fold(
    engine: AsyncEngine, story: list[tuple[dict[str, Any], bool]], data: st.DataObject
) -> None:
    real = [body for body, is_test in story if not is_test]
    tests = [body for body, is_test in story if is_test]
    # Duplicates: some events delivered (and fetched) again later.
    deliveries = [(b, False) for b in real] + [(b, True) for b in tests]
    deliveries += data.draw(st.lists(st.sampled_from(deliveries), max_size=4)) if deliveries else []
    deliveries = data.draw(st.permutations(deliveries))
    cuts = sorted(data.draw(st.sets(st.integers(0, len(deliveries)), max_size=4)))
    projector = Projector(engine, batch_size=data.draw(st.integers(1, 5)))
    start = 0
    for cut in [*cuts, len(deliveries)]:
        chunk = deliveries[start:cut]
        start = cut
        await append(engine, [b for b, t in chunk if not t])
        await append(engine, [b for b, t in chunk if t], is_test=True)
        if data.draw(st.booleans()):
            await projector.catch_up()
    await projector.catch_up()
    subjects = {b["object"].get("identity_id") for b, _ in story} - {None}
    for ident in subjects:
        expected = fold(real, ident)
        got = await stored_view(engine, ident)
        if expected is None:
            assert got is None  # only test events, or only unreadable times
        else:
            assert got == view_of_state(expected)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(story=stories(), data=st.data())
async def test_a_rebuild_gives_the_fold_too(
    engine: AsyncEngine, story: list[tuple[dict[str, Any], bool]], data: st.DataObject
) -> None:
    """The rebuild's path (extract into a staging table in chunks, one fold of everything per
    share of the identities) against the same specification as the runner's batches."""
    real = [body for body, is_test in story if not is_test]
    await append(engine, data.draw(st.permutations(real)))
    await append(engine, [body for body, is_test in story if is_test], is_test=True)
    await rebuild(engine, IDENTITIES, batch=data.draw(st.integers(1, 6)))
    for ident in {b["object"].get("identity_id") for b, _ in story} - {None}:
        expected = fold(real, ident)
        got = await stored_view(engine, ident)
        assert got == (None if expected is None else view_of_state(expected))


async def test_a_delete_that_arrives_before_its_create_wins(engine: AsyncEngine) -> None:
    control = {
        "identity_id": "idt-c",
        "control_id": "ctl",
        "control_type": "FROZEN",
        "set_by": "PAXOS",
        "is_overridable": False,
        "reason_code": "FRAUD_REVIEW",
    }
    created = event("identity.control.created", control, "2026-01-07T14:30:02Z")
    deleted = event("identity.control.deleted", control, "2026-01-07T14:30:03Z")
    other = event(
        "identity.control.created", {**control, "control_id": "ctl-2"}, "2026-01-07T14:30:04Z"
    )
    projector = Projector(engine)
    await append(engine, [deleted])
    await projector.catch_up()
    await append(engine, [created, other])
    await projector.catch_up()
    view = await stored_view(engine, "idt-c")
    assert view is not None
    assert [c["control_id"] for c in view["controls"]] == ["ctl-2"]
    assert view["events_count"] == 3


async def test_test_events_never_touch_a_projection(engine: AsyncEngine) -> None:
    body = event(
        "identity.approved",
        {"identity_id": "idt-t", "new_summary_status": "APPROVED"},
        "2026-01-07T14:30:02Z",
    )
    await append(engine, [body], is_test=True)
    assert await Projector(engine).catch_up() > 0  # read, and passed over
    assert await stored_view(engine, "idt-t") is None


# --- one applier per batch -------------------------------------------------------------------


async def test_concurrent_runners_apply_each_event_once(engine: AsyncEngine) -> None:
    bodies = [
        event(
            "identity.kyc_refresh.started",
            {"identity_id": f"idt-{i % 7}"},
            format_rfc3339_ns(1_767_000_000 * 10**9 + i),
        )
        for i in range(300)
    ]
    for i in range(0, 300, 30):
        await append(engine, bodies[i : i + 30])
    runners = [Projector(engine, batch_size=7) for _ in range(4)]
    await asyncio.gather(*(r.catch_up() for r in runners))
    await runners[0].catch_up()  # whatever a skipped lock left
    async with engine.connect() as conn:
        total = (await conn.execute(text("SELECT sum(events_count) FROM identities"))).scalar()
    assert total == 300


async def test_a_locked_checkpoint_is_skipped_not_waited_for(engine: AsyncEngine) -> None:
    await append(
        engine,
        [
            event(
                "identity.approved",
                {"identity_id": "idt-l", "new_summary_status": "APPROVED"},
                "2026-01-07T14:30:02Z",
            )
        ],
    )
    async with engine.begin() as conn:
        await ensure_checkpoints(conn, ["identities"])
    async with engine.connect() as holder, engine.connect() as other:
        await holder.begin()
        assert await apply_batch(holder, IDENTITIES) == 1
        await other.begin()
        assert await asyncio.wait_for(apply_batch(other, IDENTITIES), 2) is None
        await other.rollback()
        await holder.rollback()


# --- lag ------------------------------------------------------------------------------------


async def test_lag_counts_what_is_not_applied_yet(engine: AsyncEngine) -> None:
    await append(
        engine,
        [
            event(
                "identity.approved",
                {"identity_id": "idt-g", "new_summary_status": "APPROVED"},
                "2026-01-07T14:30:02Z",
            )
            for _ in range(3)
        ],
    )
    async with engine.connect() as conn:
        before = {x.name: x for x in await lag(conn)}
    assert before["identities"].events_behind == 3
    assert before["identities"].seconds_behind >= 0
    await Projector(engine).catch_up()
    async with engine.connect() as conn:
        after = {x.name: x for x in await lag(conn)}
    assert after["identities"].events_behind == 0
    assert after["identities"].seconds_behind == 0


def _ids(rows: Sequence[dict[str, Any]]) -> list[str]:
    return [r["identity_id"] for r in rows]
