"""Signed seals: the sealer signs each seal's hash with AUDIT_SIGNING_KEY; verify checks every
signature against the trusted keys (`bad_signature`, `unknown_key`); unsigned seals before the
key stay valid; /health/ready says whether seals are signed; exports carry the signatures."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.app import create_app
from service.audit.offline import verify_export
from service.audit.sealer import Sealer, signer_for
from service.domain.signing import Signer, private_pem, public_pem, signature_valid
from service.settings import Settings
from service.store.audit.export import ExportQuery, export
from service.store.audit.seals import seal_pending
from service.store.audit.verify import verify
from tests.support.asgi import app_client
from tests.support.audit import WINDOW, add_events, tamper

THRESHOLD_S = 3600.0


def kinds(report: object) -> list[tuple[str, int | None]]:
    return [(p.kind, p.seal_id) for p in report.problems]  # type: ignore[attr-defined]


async def test_each_new_seal_is_signed_and_verifies(engine: AsyncEngine) -> None:
    signer = Signer.generate()
    await add_events(engine, 3)
    assert await seal_pending(engine, max_rows=4, signer=signer)
    async with engine.connect() as conn:
        rows = (
            await conn.execute(text("SELECT seal_id, hash, key_id, signature FROM seals"))
        ).all()
    assert len(rows) == 2
    for row in rows:
        assert row.key_id == signer.key_id
        assert signature_valid(signer.public, bytes(row.signature), bytes(row.hash))
    report = await verify(engine, THRESHOLD_S, keys={signer.key_id: signer.public})
    assert report.ok, report.problems


async def test_unsigned_seals_before_the_key_stay_valid(engine: AsyncEngine) -> None:
    signer = Signer.generate()
    await add_events(engine, 2)
    assert await seal_pending(engine)  # before the key: unsigned
    await add_events(engine, 2)
    assert await seal_pending(engine, signer=signer)
    report = await verify(engine, THRESHOLD_S, keys={signer.key_id: signer.public})
    assert report.ok, report.problems


async def test_an_unsigned_seal_after_a_signed_one_is_a_bad_signature(
    engine: AsyncEngine,
) -> None:
    signer = Signer.generate()
    await add_events(engine, 2)
    assert await seal_pending(engine, signer=signer)
    await add_events(engine, 2)
    assert await seal_pending(engine)
    report = await verify(engine, THRESHOLD_S, keys={signer.key_id: signer.public})
    assert kinds(report) == [("bad_signature", 2)]


async def test_an_altered_signature_is_a_bad_signature(engine: AsyncEngine) -> None:
    signer = Signer.generate()
    await add_events(engine, 3)
    assert await seal_pending(engine, max_rows=2, signer=signer)
    # A superuser with the triggers off flips one bit of seal 2's signature.
    await tamper(
        engine,
        "UPDATE seals SET signature = set_byte(signature, 0, get_byte(signature, 0) # 1) "
        "WHERE seal_id = 2",
    )
    report = await verify(engine, THRESHOLD_S, keys={signer.key_id: signer.public})
    assert kinds(report) == [("bad_signature", 2)]
    assert signer.key_id in report.problems[0].detail


async def test_a_seal_rewritten_without_the_key_is_a_bad_signature(engine: AsyncEngine) -> None:
    """An insider changes a row and recomputes the seal's digest and hash in SQL: the chain
    checks out, but the old signature does not sign the new hash."""
    signer = Signer.generate()
    await add_events(engine, 1)
    assert await seal_pending(engine, signer=signer)
    await tamper(engine, "UPDATE journal SET body = '{\"forged\": true}' WHERE position = 1")
    await tamper(
        engine,
        "UPDATE seals s SET rows_digest = d.digest, hash = sha256(s.prev_hash || "
        "int8send(s.first_position) || int8send(s.last_position) || d.digest) FROM ("
        "  SELECT string_agg(int8send(j.position) || sha256(convert_to(j.position::text || "
        "  E'\\n' || j.event_id::text || E'\\n' || j.kind || E'\\n' || to_char(j.recorded_at "
        "  AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') || E'\\n' || "
        "  j.body::text, 'UTF8')), ''::bytea ORDER BY j.position) AS digest FROM journal j"
        ") d WHERE s.seal_id = 1",
    )
    report = await verify(engine, THRESHOLD_S, keys={signer.key_id: signer.public})
    assert kinds(report) == [("bad_signature", 1)]


async def test_a_key_not_trusted_is_an_unknown_key(engine: AsyncEngine) -> None:
    signer, other = Signer.generate(), Signer.generate()
    await add_events(engine, 2)
    assert await seal_pending(engine, signer=signer)
    report = await verify(engine, THRESHOLD_S, keys={other.key_id: other.public})
    assert kinds(report) == [("unknown_key", 1)]
    assert signer.key_id in report.problems[0].detail


async def test_verify_trusts_the_public_keys_file_and_the_signing_key(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    """Rotation: seals of the old key verify through AUDIT_PUBLIC_KEYS, the new key's through
    AUDIT_SIGNING_KEY itself."""
    old, new = Signer.generate(), Signer.generate()
    await add_events(engine, 2)
    assert await seal_pending(engine, signer=old)
    await add_events(engine, 2)
    assert await seal_pending(engine, signer=new)
    (tmp_path / "signing.pem").write_bytes(private_pem(new.private))
    (tmp_path / "trusted.pem").write_text(public_pem(old.public))
    only_new = Settings(database_url=database_url, audit_signing_key=tmp_path / "signing.pem")
    report = await verify(engine, only_new, record=False)
    assert kinds(report) == [("unknown_key", 1)]
    both = only_new.replace(audit_public_keys=tmp_path / "trusted.pem")
    report = await verify(engine, both, record=False)
    assert report.ok, report.problems


async def test_ready_says_whether_seals_are_signed(
    settings: Settings, engine: AsyncEngine, tmp_path: Path
) -> None:
    async for client in app_client(create_app(settings, engine=engine)):
        assert (await client.get("/health/ready")).json()["seals"] == "unsigned"
    (tmp_path / "k.pem").write_bytes(private_pem(Signer.generate().private))
    signed = settings.replace(audit_signing_key=tmp_path / "k.pem")
    async for client in app_client(create_app(signed, engine=engine)):
        assert (await client.get("/health/ready")).json()["seals"] == "signed"


async def test_the_export_trailer_carries_signatures_and_verifies_offline(
    engine: AsyncEngine,
) -> None:
    signer = Signer.generate()
    await add_events(engine, 5)
    assert await seal_pending(engine, max_rows=4, signer=signer)
    query = ExportQuery(since=_at(WINDOW["since"]), until=_at(WINDOW["until"]))
    body = b"".join([chunk async for chunk in export(engine, query)])
    trailer = json.loads(body.splitlines()[-1])
    assert trailer["seals"]["first"]["key_id"] == signer.key_id
    assert trailer["seals"]["last"]["signature"]
    assert [s["seal_id"] for s in trailer["covering_seals"]] == [1, 2, 3]
    report = verify_export(body.splitlines(), {signer.key_id: signer.public})
    assert report.ok, report.problems
    assert (report.rows_checked, report.seals_checked) == (10, 3)
    other = Signer.generate()
    report = verify_export(body.splitlines(), {other.key_id: other.public})
    assert {p.kind for p in report.problems} == {"unknown_key"}


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def test_the_background_sealer_signs_with_the_configured_key(
    settings: Settings, engine: AsyncEngine, tmp_path: Path
) -> None:
    key = tmp_path / "k.pem"
    key.write_bytes(private_pem(Signer.generate().private))
    signer = signer_for(settings.replace(audit_signing_key=key))
    assert signer is not None
    await add_events(engine, 2)
    task = asyncio.create_task(Sealer(engine, interval_s=0.05, signer=signer).run())
    try:
        for _ in range(100):
            async with engine.connect() as conn:
                key_ids = (await conn.execute(text("SELECT key_id FROM seals"))).scalars().all()
            if key_ids:
                break
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
    assert key_ids == [signer.key_id]
    assert signer_for(settings) is None
    with pytest.raises(ValueError, match="^AUDIT_SIGNING_KEY: cannot read"):
        signer_for(settings.replace(audit_signing_key=tmp_path / "missing.pem"))
