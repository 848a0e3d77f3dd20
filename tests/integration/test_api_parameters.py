"""Enum filters in any case, and malformed ids as problems naming their parameter."""

from __future__ import annotations

import uuid

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service.projections.runner import Projector
from tests.support.projections import append, event
from tests.support.tokens import admin_headers, read_headers

AT = "2026-01-07T14:30:02Z"


async def test_enum_filters_take_any_case(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    await append(
        engine,
        [
            event(
                "identity.approved",
                {"identity_id": "idt-approved", "new_summary_status": "APPROVED"},
                AT,
            ),
            event(
                "identity.control.created",
                {"identity_id": "idt-approved", "control_id": "c1", "control_type": "SELL_ONLY"},
                "2026-01-07T14:30:03Z",
            ),
            event(
                "transfer.wire_deposit.pending",
                {"id": "tr-1", "type": "WIRE_DEPOSIT", "status": "PENDING", "profile_id": "p"},
                AT,
            ),
        ],
    )
    await Projector(engine).catch_up()

    async def listed(path: str, **params: str) -> list[str]:
        response = await client.get(path, params=params, headers=read_headers())
        assert response.status_code == 200, response.text
        key = "identity_id" if path == "/identities" else "transfer_id"
        return [item[key] for item in response.json()["items"]]

    for value in ("pending", "PENDING", "Pending"):
        assert await listed("/transfers", status=value) == ["tr-1"], value
    assert await listed("/transfers", type="wire_deposit") == ["tr-1"]
    assert await listed("/transfers", status="completed") == []
    assert await listed("/identities", summary_status="approved") == ["idt-approved"]
    assert await listed("/identities", control_type="sell_only") == ["idt-approved"]
    # A cursor does not depend on the case the filter was given in.
    first = await client.get(
        "/transfers", params={"status": "pending", "limit": 1}, headers=read_headers()
    )
    assert first.status_code == 200
    # The service's own statuses are lower case; any case finds them too.
    for value in ("FETCHED", "fetched"):
        response = await client.get("/events", params={"status": value}, headers=read_headers())
        assert response.status_code == 200, response.text
        assert len(response.json()["items"]) == 3, value
    for params in ({"order": "ASC"}, {"order": "Desc"}):
        response = await client.get("/events", params=params, headers=read_headers())
        assert response.status_code == 200, (params, response.text)
    unknown = await client.get("/events", params={"status": "lost"}, headers=read_headers())
    assert unknown.status_code == 400
    assert unknown.json()["parameter"] == "status"
    assert "pending, fetched, failed, not_found" in unknown.json()["detail"]


@pytest.mark.parametrize(
    ("path", "parameter", "admin"),
    [
        ("/events/not-a-uuid", "event_id", False),
        ("/admin/jobs/42", "job_id", True),
        ("/admin/reconciliation/latest", "pass_id", True),
    ],
)
async def test_a_malformed_id_is_a_problem_naming_the_parameter(
    client: httpx.AsyncClient, path: str, parameter: str, admin: bool
) -> None:
    headers = admin_headers() if admin else read_headers()
    response = await client.get(path, headers=headers)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["parameter"] == parameter
    assert parameter in response.json()["detail"]


async def test_a_malformed_id_to_refetch_is_a_problem_and_a_good_one_still_works(
    client: httpx.AsyncClient,
) -> None:
    bad = await client.post("/admin/events/123/refetch", headers=admin_headers())
    assert bad.status_code == 400, bad.text
    assert bad.json()["parameter"] == "event_id"
    missing = uuid.uuid4()
    for path in (f"/admin/events/{missing}/refetch", f"/events/{missing}"):
        method = client.post if path.endswith("refetch") else client.get
        headers = admin_headers() if path.endswith("refetch") else read_headers()
        response = await method(path, headers=headers)
        assert response.status_code == 404, response.text
        assert str(missing) in response.json()["detail"]
    assert (await client.get("/events/not-a-uuid")).status_code == 401  # credentials first
