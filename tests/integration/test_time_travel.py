"""Time travel over HTTP and the store: ?as_of=, ?known_at=, /history, on a real database.

The property test holds the three folds together (the projection's set-based SQL, the
time-travelled answer, a straightforward fold of the qualifying events); the others pin the
cases a compliance question turns on: a backfilled event, test events, unknown ids, bad times,
paging, and the indexes the reads go through.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.domain.event import time_ns
from service.domain.paxos_event import Fetched, PaxosEvent, identity_id_of, object_id_of
from service.projections.runner import Projector
from service.store.listed import Listed, record_listed
from service.store.projections import history as store_history
from service.store.projections import read
from tests.support.projections import event, view_of_row, view_of_state
from tests.support.timetravel import record, straightforward_fold, view_of_latest
from tests.support.tokens import read_headers

T0 = datetime(2026, 1, 7, 14, 0, tzinfo=UTC)


def rfc(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def get(client: httpx.AsyncClient, path: str, **params: Any) -> httpx.Response:
    return await client.get(path, params=params, headers=read_headers())


def approved(identity_id: str, at: datetime, status: str = "APPROVED") -> dict[str, Any]:
    return event(
        f"identity.{status.lower()}",
        {"identity_id": identity_id, "new_summary_status": status},
        rfc(at),
    )


def control(identity_id: str, at: datetime, deleted: bool = False) -> dict[str, Any]:
    return event(
        "identity.control." + ("deleted" if deleted else "created"),
        {
            "identity_id": identity_id,
            "control_id": "ctl-1",
            "control_type": "CLOSED",
            "set_by": "PAXOS",
            "is_overridable": False,
            "reason_code": "FRAUD_REVIEW",
        },
        rfc(at),
    )


def listed(body: dict[str, Any]) -> Listed:
    """A List Events item, as the reconciler and backfills store it."""
    raw = msgspec.json.encode(body).decode()
    return Listed(
        event_id=uuid.UUID(body["id"]),
        type=body["type"],
        created_at=datetime.fromisoformat(body["created_at"]),
        is_test=False,
        raw=raw,
        identity_id=identity_id_of(Fetched(msgspec.convert(body, PaxosEvent), raw)),
        object_type=body["object_type"],
        undelivered_webhooks=0,
        object_id=object_id_of(body["type"], body["object"]),
    )


async def test_a_backfilled_event_changes_as_of_answers_only_from_its_recording(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    now = datetime.now(UTC)
    pending = approved("idt-1", T0, "PENDING")
    ok = approved("idt-1", T0 + timedelta(minutes=10))
    await record(engine, [pending], recorded_at=now - timedelta(hours=3))
    await record(engine, [ok], recorded_at=now - timedelta(hours=2))
    # Paxos froze the account at 14:05; the webhook never came, a backfill found it a day on.
    frozen = control("idt-1", T0 + timedelta(minutes=5))
    async with engine.begin() as conn:
        assert await record_listed(conn, [listed(frozen)]) == {uuid.UUID(frozen["id"])}
    async with engine.connect() as conn:
        backfilled_at = await conn.scalar(
            text("SELECT recorded_at FROM journal WHERE event_id = :id AND kind = 'event'"),
            {"id": uuid.UUID(frozen["id"])},
        )
    assert backfilled_at > now - timedelta(hours=2)
    at_1406 = rfc(T0 + timedelta(minutes=6))

    # Today's knowledge: at 14:06 the identity was pending and frozen.
    body = (await get(client, "/identities/idt-1", as_of=at_1406)).json()
    assert (body["summary_status"], [c["control_type"] for c in body["controls"]]) == (
        "PENDING",
        ["CLOSED"],
    )
    assert body["events_count"] == 2 and body["last_event_id"] == frozen["id"]
    assert body["as_of"] == at_1406 and body["known_at"] is None
    # What the store knew just before the backfill: no control.
    before = rfc(backfilled_at - timedelta(microseconds=1))
    body = (await get(client, "/identities/idt-1", as_of=at_1406, known_at=before)).json()
    assert (body["summary_status"], body["controls"], body["events_count"]) == ("PENDING", [], 1)
    assert body["last_event_id"] == pending["id"] and body["known_at"] == before
    # From its recording on, the answer has it.
    at = rfc(backfilled_at)
    body = (await get(client, "/identities/idt-1", as_of=at_1406, known_at=at)).json()
    assert [c["control_type"] for c in body["controls"]] == ["CLOSED"]
    # known_at alone: everything recorded by then, whenever it happened.
    body = (await get(client, "/identities/idt-1", known_at=before)).json()
    assert (body["summary_status"], body["controls"], body["events_count"]) == ("APPROVED", [], 2)
    assert "as_of" in body and body["as_of"] is None
    # The history says when each was learned and how.
    entries = (await get(client, "/identities/idt-1/history")).json()["items"]
    assert [(e["event"]["id"], e["event"]["via"]) for e in entries] == [
        (pending["id"], "webhook"),
        (frozen["id"], "list_events"),
        (ok["id"], "webhook"),
    ]
    assert entries[1]["event"]["recorded_at"] == rfc(backfilled_at)
    known_then = (await get(client, "/identities/idt-1/history", known_at=before)).json()
    assert [e["event"]["id"] for e in known_then["items"]] == [pending["id"], ok["id"]]


async def test_without_either_time_the_answer_is_the_projection_unchanged(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await record(engine, [approved("idt-2", T0)])
    await Projector(engine).catch_up()
    body = (await get(client, "/identities/idt-2")).json()
    assert "as_of" not in body and "known_at" not in body
    async with engine.connect() as conn:
        row = await read.get_identity(conn, "idt-2")
        travelled = await store_history.state_as_of(
            conn, "identities", "idt-2", as_of=None, known_at=None
        )
    assert row is not None and travelled is not None
    assert body == msgspec.to_builtins(view_of_row(row)) | {"updated_at": body["updated_at"]}
    assert view_of_row(travelled) == view_of_row(row) | {"as_of": None, "known_at": None}


async def test_test_events_never_count(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    await record(engine, [approved("idt-3", T0)])
    await record(engine, [approved("idt-3", T0 + timedelta(minutes=1), "DENIED")], is_test=True)
    await record(engine, [approved("idt-t", T0)], is_test=True)
    body = (await get(client, "/identities/idt-3", as_of=rfc(T0 + timedelta(hours=1)))).json()
    assert (body["summary_status"], body["events_count"]) == ("APPROVED", 1)
    items = (await get(client, "/identities/idt-3/history")).json()["items"]
    assert [i["state"]["summary_status"] for i in items] == ["APPROVED"]
    # An identity with test events only is unknown, in the past as now.
    assert (await get(client, "/identities/idt-t", known_at=rfc(T0))).status_code == 404
    assert (await get(client, "/identities/idt-t/history")).status_code == 404


async def test_unknown_ids_and_times_before_every_event_are_404(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await record(engine, [approved("idt-4", T0)], recorded_at=T0 + timedelta(seconds=1))
    for path in ("/identities/nobody", "/transfers/nothing", "/orchestrations/none"):
        for params in ({"as_of": rfc(T0)}, {"known_at": rfc(T0)}):
            response = await get(client, path, **params)
            assert response.status_code == 404, (path, params)
            assert response.headers["content-type"].startswith("application/problem+json")
        assert (await get(client, path + "/history")).status_code == 404
    too_early = await get(client, "/identities/idt-4", as_of=rfc(T0 - timedelta(microseconds=1)))
    assert too_early.status_code == 404
    assert "as_of" in too_early.json()["detail"]
    assert (await get(client, "/identities/idt-4", as_of=rfc(T0))).status_code == 200
    assert (await get(client, "/identities/idt-4", known_at=rfc(T0))).status_code == 404
    # Known, but nothing recorded by then: an empty history, not a 404.
    early = (await get(client, "/identities/idt-4/history", known_at=rfc(T0))).json()
    assert early == {"items": [], "next_cursor": None}


async def test_bad_times_and_parameters_are_400_naming_them(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await record(engine, [approved("idt-5", T0)])
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("/identities/idt-5", {"as_of": "yesterday"}, "as_of"),
        ("/identities/idt-5", {"as_of": "2026-01-07T14:30:02"}, "as_of"),  # naive
        ("/identities/idt-5", {"known_at": "2026-02-30T00:00:00Z"}, "known_at"),
        ("/identities/idt-5", {"known_at": "2026-01-07"}, "known_at"),
        ("/identities/idt-5", {"as_of": [rfc(T0), rfc(T0)]}, "as_of"),
        ("/identities/idt-5", {"asof": rfc(T0)}, "asof"),
        ("/transfers/x", {"as_of": "soon"}, "as_of"),
        ("/orchestrations/x", {"known_at": "2026-01-07T14:30:02"}, "known_at"),
        ("/identities/idt-5/history", {"known_at": "later"}, "known_at"),
        ("/identities/idt-5/history", {"as_of": rfc(T0)}, "as_of"),
        ("/identities/idt-5/history", {"limit": 0}, "limit"),
        ("/identities/idt-5/history", {"cursor": "nonsense!"}, "cursor"),
        ("/transfers/x/history", {"limit": "x"}, "limit"),
    ]
    for path, params, name in cases:
        response = await get(client, path, **params)
        assert response.status_code == 400, (path, params, response.text)
        assert response.json()["parameter"] == name, (path, params)


async def test_history_pages_with_what_each_event_changed(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    bodies = [
        approved("idt-6", T0, "PENDING"),
        event(
            "identity.documents_required",
            {"identity_id": "idt-6", "required_documents": ["PASSPORT"]},
            rfc(T0 + timedelta(seconds=1)),
        ),
        approved("idt-6", T0 + timedelta(seconds=2)),
        approved("idt-6", T0 + timedelta(seconds=3)),  # approved again: nothing changes
        control("idt-6", T0 + timedelta(seconds=4)),
        control("idt-6", T0 + timedelta(seconds=5), deleted=True),
        event(
            "identity.kyc_refresh.started",
            {"identity_id": "idt-6", "next_kyc_refresh_date": "2027-01-07T00:00:00Z"},
            rfc(T0 + timedelta(seconds=6)),
        ),
    ]
    await record(engine, reversed(bodies))  # recorded in another order than they happened
    items: list[dict[str, Any]] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = (await get(client, "/identities/idt-6/history", **params)).json()
        items += page["items"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert [i["event"]["id"] for i in items] == [b["id"] for b in bodies]
    assert [i["event"]["time"] for i in items] == [b["created_at"] for b in bodies]
    assert [i["state"]["events_count"] for i in items] == list(range(1, 8))
    closed = {
        "control_id": "ctl-1",
        "control_type": "CLOSED",
        "set_by": "PAXOS",
        "is_overridable": False,
        "reason_code": "FRAUD_REVIEW",
        "created_at": bodies[4]["created_at"],
    }
    assert [(i["changed"], i["changes"]) for i in items] == [
        (True, [{"field": "summary_status", "from": None, "to": "PENDING"}]),
        (True, [{"field": "required_documents", "from": [], "to": ["PASSPORT"]}]),
        (True, [{"field": "summary_status", "from": "PENDING", "to": "APPROVED"}]),
        (False, []),
        (True, [{"field": "controls", "from": None, "to": closed}]),
        (True, [{"field": "controls", "from": closed, "to": None}]),
        (
            True,
            [
                {"field": "kyc_refresh.state", "from": None, "to": "started"},
                {
                    "field": "kyc_refresh.next_refresh_at",
                    "from": None,
                    "to": "2027-01-07T00:00:00Z",
                },
            ],
        ),
    ]
    first = (await get(client, "/identities/idt-6/history", limit=2)).json()
    mismatch = await get(
        client, "/identities/idt-6/history", cursor=first["next_cursor"], known_at=rfc(T0)
    )
    assert mismatch.status_code == 400 and mismatch.json()["parameter"] == "cursor"
    other = await get(client, "/identities/idt-5/history", cursor=first["next_cursor"])
    assert other.status_code in (400, 404)


def transfer_event(transfer_id: str, status: str, at: datetime) -> dict[str, Any]:
    return event(
        f"transfer.crypto_withdrawal.{status.lower()}",
        {"id": transfer_id, "type": "CRYPTO_WITHDRAWAL", "status": status, "profile_id": "p"},
        rfc(at),
    )


def orchestration_event(orchestration_id: str, status: str, at: datetime) -> dict[str, Any]:
    return event(
        f"orchestration.{status.lower()}",
        {"id": orchestration_id, "status": status, "ref_id": "r", "orchestration_rule_id": "o"},
        rfc(at),
    )


async def test_transfers_and_orchestrations_travel_too(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    steps = ["PENDING", "PROCESSING", "COMPLETED"]
    await record(
        engine,
        [transfer_event("trf-1", s, T0 + timedelta(minutes=i)) for i, s in enumerate(steps)]
        + [orchestration_event("orc-1", s, T0 + timedelta(minutes=i)) for i, s in enumerate(steps)],
    )
    middle = rfc(T0 + timedelta(minutes=1, seconds=30))
    for path in ("/transfers/trf-1", "/orchestrations/orc-1"):
        body = (await get(client, path, as_of=middle)).json()
        assert (body["status"], body["events_count"], body["as_of"]) == ("PROCESSING", 2, middle)
        items = (await get(client, path + "/history")).json()["items"]
        assert [i["state"]["status"] for i in items] == steps
        assert items[1]["changes"] == [{"field": "status", "from": "PENDING", "to": "PROCESSING"}]
        assert items[0]["changes"][0] == {
            "field": "type" if path.startswith("/transfers") else "status",
            "from": None,
            "to": "CRYPTO_WITHDRAWAL" if path.startswith("/transfers") else "PENDING",
        }


async def test_as_of_reads_nanoseconds(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    at = "2026-01-07T14:30:02.000000500Z"
    await record(
        engine,
        [
            approved("idt-7", T0),
            event(
                "identity.denied",
                {"identity_id": "idt-7", "new_summary_status": "DENIED"},
                at,
            ),
        ],
    )
    before = await get(client, "/identities/idt-7", as_of="2026-01-07T14:30:02.000000499Z")
    assert before.json()["summary_status"] == "APPROVED"
    same = await get(client, "/identities/idt-7", as_of="2026-01-07T16:30:02.0000005+02:00")
    assert same.json()["summary_status"] == "DENIED"


# --- the reads go through indexes -----------------------------------------------------------


def _plan_nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node, *(m for child in node.get("Plans", []) for m in _plan_nodes(child))]


async def test_each_kinds_events_are_found_through_an_index(engine: AsyncEngine) -> None:
    others = [approved(f"idt-{i % 300}", T0 + timedelta(seconds=i)) for i in range(1500)]
    others += [transfer_event(f"trf-{i % 300}", "PENDING", T0) for i in range(1500)]
    others += [orchestration_event(f"orc-{i % 300}", "PENDING", T0) for i in range(1500)]
    await record(engine, others)
    async with engine.begin() as conn:
        await conn.execute(text("ANALYZE events"))
        await conn.execute(text("ANALYZE journal"))
    expected = {
        "identities": ("idt-7", "ix_events_identity_id_time_event_id"),
        "transfers": ("trf-7", "ix_events_transfer_object_id_time_event_id"),
        "orchestrations": ("orc-7", "ix_events_orchestration_object_id_time_event_id"),
    }
    async with engine.connect() as conn:
        for kind, (subject_id, index) in expected.items():
            plan = (
                await conn.exec_driver_sql(
                    "EXPLAIN (ANALYZE, FORMAT JSON) " + store_history.STATEMENTS[kind],
                    (subject_id,),
                )
            ).scalar()
            nodes = _plan_nodes(plan[0]["Plan"])
            names = {n["Index Name"] for n in nodes if "Index Name" in n}
            assert index in names, (kind, names)
            assert "uq_journal_event_id_kind" in names, (kind, names)
            assert not [n for n in nodes if n["Node Type"] == "Seq Scan"], kind
            assert plan[0]["Plan"]["Actual Rows"] == 5


# --- one fold: projection, as_of/known_at, history ------------------------------------------

TIMES = [
    "2026-01-07T14:30:02Z",
    "2026-01-07T14:30:02.000000001Z",
    "2026-01-07T16:30:02.000000001+02:00",  # the same instant as the one before
    "2026-01-07T14:30:02.5Z",
    "2026-01-07T14:31:00Z",
    "not a time",
]
RECORDED = [T0 + timedelta(hours=h) for h in range(4)]  # a few moments, so ties happen
AS_OF = [*(t for t in TIMES if time_ns(t) is not None), "2026-01-07T14:30:01Z"]


@st.composite
def stories(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Events about an identity, a transfer and an orchestration (fresh ids per example),
    each with a recording time, a test flag and how it came."""
    run = uuid.uuid4().hex[:8]
    out = []
    for _ in range(draw(st.integers(1, 12))):
        what = draw(st.sampled_from(["status", "documents", "kyc", "control", "transfer", "orch"]))
        at = draw(st.sampled_from(TIMES))
        if what == "status":
            status = draw(st.sampled_from(["APPROVED", "DENIED"]))
            body = approved(f"idt-{run}", T0, status) | {"created_at": at}
        elif what == "documents":
            docs = draw(st.lists(st.sampled_from(["PASSPORT", "UTILITY_BILL"]), max_size=2))
            body = event(
                "identity.documents_required",
                {"identity_id": f"idt-{run}", "required_documents": docs},
                at,
            )
        elif what == "kyc":
            state = draw(st.sampled_from(["started", "completed", "expired"]))
            body = event(
                f"identity.kyc_refresh.{state}",
                {"identity_id": f"idt-{run}", "last_kyc_refresh_date": at},
                at,
            )
        elif what == "control":
            body = control(f"idt-{run}", T0, deleted=draw(st.booleans())) | {"created_at": at}
            body["object"] = body["object"] | {
                "control_id": draw(st.sampled_from(["ctl-1", "ctl-2"]))
            }
        elif what == "transfer":
            status = draw(st.sampled_from(["PENDING", "COMPLETED"]))
            body = transfer_event(f"trf-{run}", status, T0) | {"created_at": at}
        else:
            status = draw(st.sampled_from(["PENDING", "COMPLETED"]))
            body = orchestration_event(f"orc-{run}", status, T0) | {"created_at": at}
        # Ids ordered by a drawn high half (ties on created_at are broken by id), unique by
        # a low half of the run's: a replayed example must not meet its own earlier events.
        low = (uuid.UUID(f"{run}{'0' * 24}").int >> 64) + len(out)
        body["id"] = str(uuid.UUID(int=draw(st.integers(1, 2**30)) * 2**64 + low))
        out.append(
            {
                "body": body,
                "recorded_at": draw(st.sampled_from(RECORDED)),
                "is_test": draw(st.integers(0, 5)) == 0,
                "via": draw(st.sampled_from(["webhook", "list_events"])),
            }
        )
    return out


def _subjects(story: list[dict[str, Any]]) -> dict[str, str]:
    ids: dict[str, str] = {}
    for item in story:
        obj = item["body"]["object"]
        if item["body"]["type"].startswith("identity."):
            ids["identities"] = obj["identity_id"]
        elif item["body"]["type"].startswith("transfer."):
            ids["transfers"] = obj["id"]
        else:
            ids["orchestrations"] = obj["id"]
    return ids


PATHS = {
    "identities": "/identities",
    "transfers": "/transfers",
    "orchestrations": "/orchestrations",
}


def expected_view(kind: str, state: Any) -> dict[str, Any] | None:
    if state is None:
        return None
    return view_of_state(state) if kind == "identities" else view_of_latest(kind, state)


def answer(response: httpx.Response) -> dict[str, Any] | None:
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    body = response.json()
    for name in ("updated_at", "as_of", "known_at"):
        body.pop(name, None)
    return body  # type: ignore[no-any-return]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(story=stories(), data=st.data())
async def test_projection_as_of_and_history_are_one_fold(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    story: list[dict[str, Any]],
    data: st.DataObject,
) -> None:
    # Recorded in a random order and batching, the projection applying as it goes.
    order = data.draw(st.permutations(story))
    cuts = sorted(data.draw(st.sets(st.integers(0, len(order)), max_size=3)))
    projector = Projector(engine, batch_size=data.draw(st.integers(1, 5)))
    start = 0
    for cut in [*cuts, len(order)]:
        for item in order[start:cut]:
            await record(
                engine,
                [item["body"]],
                is_test=item["is_test"],
                via=item["via"],
                recorded_at=item["recorded_at"],
            )
        start = cut
        if data.draw(st.booleans()):
            await projector.catch_up()
    await projector.catch_up()
    real = [(i["body"], i["recorded_at"]) for i in story if not i["is_test"]]

    for kind, subject_id in _subjects(story).items():
        path = f"{PATHS[kind]}/{subject_id}"
        now = answer(await get(client, path))
        # Neither bound: the fold equals the projection's row.
        async with engine.connect() as conn:
            travelled = await store_history.state_as_of(
                conn, kind, subject_id, as_of=None, known_at=None
            )
        assert now == expected_view(kind, straightforward_fold(kind, subject_id, real))
        if travelled is None:
            assert now is None
        else:
            assert now is not None
            shown = msgspec.to_builtins(
                view_of_row(travelled) if kind == "identities" else travelled
            )
            assert {k: shown[k] for k in now} == now
        far = answer(await get(client, path, as_of="9999-12-31T23:59:59Z"))
        assert far == now
        # Random bounds: the straightforward fold of the qualifying events.
        for _ in range(3):
            as_of = data.draw(st.one_of(st.none(), st.sampled_from(AS_OF)))
            known_at = data.draw(st.one_of(st.none(), st.sampled_from(RECORDED)))
            if as_of is None and known_at is None:
                continue
            params = {"as_of": as_of} if as_of else {}
            if known_at is not None:
                params["known_at"] = rfc(known_at)
            got = answer(await get(client, path, **params))
            expected = straightforward_fold(
                kind,
                subject_id,
                real,
                as_of_ns=None if as_of is None else time_ns(as_of),
                known_at=known_at,
            )
            assert got == expected_view(kind, expected), (params, got)
        # History: the state after each event is the fold of it and those before it.
        known_at = data.draw(st.one_of(st.none(), st.sampled_from(RECORDED)))
        params = {"limit": data.draw(st.integers(1, 4))}
        if known_at is not None:
            params["known_at"] = rfc(known_at)
        response = await get(client, f"{path}/history", **params)
        if now is None:
            assert response.status_code == 404
            continue
        items: list[dict[str, Any]] = []
        page = response.json()
        while True:
            items += page["items"]
            if page["next_cursor"] is None:
                break
            page = (
                await get(client, f"{path}/history", cursor=page["next_cursor"], **params)
            ).json()
        qualifying = [(b, at) for b, at in real if known_at is None or at <= known_at]
        for n, item in enumerate(items):
            ns = time_ns(item["event"]["time"])
            assert ns is not None
            upto = [
                (b, at)
                for b, at in qualifying
                if (time_ns(b["created_at"]) or 0, uuid.UUID(b["id"]))
                <= (ns, uuid.UUID(item["event"]["id"]))
            ]
            state = straightforward_fold(kind, subject_id, upto)
            view = item["state"]
            view.pop("updated_at")
            assert view == expected_view(kind, state)
            assert view["events_count"] == n + 1
        last = straightforward_fold(kind, subject_id, qualifying)
        assert len(items) == (0 if last is None else last.events_count)
