"""The service as a role that owns none of its evidence (docs/deploying.md).

`paxos-events migrate --grant-to ROLE`, run as the migration role that owns the tables, gives
ROLE what the service needs. The main path then runs as ROLE (webhooks, fetching, projections,
seals, a rebuild, verify), and ROLE cannot rewrite the journal: no UPDATE, DELETE or
TRUNCATE, and no `ALTER TABLE journal DISABLE TRIGGER` (only an owner may). `prune` runs as
the migration role.

Each test makes its roles (unique names: roles belong to the whole server) and a database
owned by the migration role, and drops them at the end. The test server is a superuser's.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from service.app import create_app
from service.background import running_background
from service.db.engine import create_engine, plain_url
from service.db.migrations import NotTheOwner, upgrade
from service.settings import Settings
from service.simulator.universe import DEFAULT_END, DEFAULT_START
from service.store.audit.prune import prune_test_events
from service.store.audit.verify import verify
from service.store.privileges import (
    TABLE_PRIVILEGES,
    ServiceRoleError,
    check_service_role,
    grant_service_role,
    projection_tables,
    unclassified_tables,
)
from service.store.tables import metadata
from tests.support.asgi import app_client
from tests.support.fetching import Paxos, deliver, paxos_settings, pending
from tests.support.paths import ROOT
from tests.support.processes import clean_env
from tests.support.projections import stored_view, universe_folds, view_of_state
from tests.support.tokens import ADMIN_TOKEN, API_KEY, READ_TOKEN, admin_headers

INSUFFICIENT_PRIVILEGE = "42501"


@dataclass(frozen=True)
class Deployment:
    """A database owned by `owner` (the migration role), and `service`, the role to run as."""

    owner: str
    service: str
    owner_url: str
    service_url: str


def _login(url: str, user: str, password: str, database: str) -> str:
    """`url` logging in as `user` to `database` (host, port or socket kept)."""
    parts = urlsplit(url)
    where = parts.netloc.rpartition("@")[2]
    return urlunsplit(
        parts._replace(netloc=f"{quote(user)}:{quote(password)}@{where}", path="/" + database)
    )


@pytest.fixture
async def deployment(server_url: str) -> AsyncIterator[Deployment]:
    suffix = uuid.uuid4().hex[:12]
    owner, service, database = f"pes_owner_{suffix}", f"pes_service_{suffix}", f"pes_lp_{suffix}"
    owner_password, service_password = secrets.token_hex(16), secrets.token_hex(16)
    admin = await asyncpg.connect(plain_url(server_url))
    try:
        if int(await admin.fetchval("SELECT current_setting('server_version_num')")) < 170000:
            pytest.skip("a least-privileged service role needs PostgreSQL 17 (MAINTAIN)")
        await admin.execute(f"CREATE ROLE {owner} LOGIN PASSWORD '{owner_password}'")
        await admin.execute(f"CREATE ROLE {service} LOGIN PASSWORD '{service_password}'")
        # The migration role hands the projections' tables to the service role.
        await admin.execute(f"GRANT {service} TO {owner}")
        await admin.execute(f"CREATE DATABASE {database} OWNER {owner}")
        yield Deployment(
            owner,
            service,
            _login(server_url, owner, owner_password, database),
            _login(server_url, service, service_password, database),
        )
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        await admin.execute(f"DROP ROLE IF EXISTS {service}")
        await admin.execute(f"DROP ROLE IF EXISTS {owner}")
        await admin.close()


@contextlib.asynccontextmanager
async def engine_for(url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(url)
    try:
        yield engine
    finally:
        await engine.dispose()


async def paxos_events(*args: str, database_url: str) -> tuple[int, str, str]:
    """Run the real command line; (exit status, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        *args,
        cwd=ROOT,
        env=clean_env(DATABASE_URL=database_url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    return process.returncode or 0, out.decode(), err.decode()


async def refused(engine: AsyncEngine, statement: str) -> str:
    """Run `statement` (in a transaction rolled back) and return the SQLSTATE it failed with."""
    with pytest.raises(DBAPIError) as failure:
        async with engine.begin() as conn:
            await conn.execute(text(statement))
    return str(getattr(failure.value.orig, "sqlstate", ""))


async def until(condition: Any, what: str, timeout: float = 30.0) -> None:
    """Wait until the awaitable made by `condition()` is true."""
    try:
        async with asyncio.timeout(timeout):
            while not await condition():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"not {what} within {timeout} s") from None


async def finished(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    """Wait for job `job_id` (run by the service's job runner) to be done; its progress."""
    job: dict[str, Any] = {}

    async def done() -> bool:
        nonlocal job
        job = (await client.get(f"/admin/jobs/{job_id}", headers=admin_headers())).json()
        assert job["state"] != "failed", job
        return bool(job["state"] == "done")

    await until(done, f"job {job_id} done")
    return dict(job["progress"])


async def owners(engine: AsyncEngine) -> dict[str, str]:
    """The owner of each table of the schema, by the table's name."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT relname, pg_get_userbyid(relowner) FROM pg_class WHERE relkind = 'r' "
                "AND relnamespace = CAST(current_schema() AS regnamespace)"
            )
        )
        return {name: owner for name, owner in rows}


async def scalar(engine: AsyncEngine, sql: str) -> Any:
    async with engine.connect() as conn:
        return await conn.scalar(text(sql))


@pytest.mark.slow
async def test_the_main_path_runs_as_a_role_that_cannot_rewrite_the_journal(
    deployment: Deployment, paxos: Paxos
) -> None:
    status, out, err = await paxos_events(
        "migrate", "--grant-to", deployment.service, database_url=deployment.owner_url
    )
    assert status == 0, err
    assert f"granted {deployment.service}" in out

    settings = paxos_settings(
        Settings(
            database_url=deployment.service_url,
            webhook_api_keys=(API_KEY,),
            api_read_tokens=(READ_TOKEN,),
            api_admin_tokens=(ADMIN_TOKEN,),
            seal_interval_s=0.1,
        )
    )
    identities, transfers, orchestrations = universe_folds(paxos)
    async with (
        engine_for(deployment.service_url) as engine,
        engine_for(deployment.owner_url) as owner_engine,
    ):
        assert await scalar(engine, "SELECT current_user") == deployment.service
        with capture_logs() as logs:
            async with (
                contextlib.asynccontextmanager(app_client)(
                    create_app(settings, engine=engine, http_client=paxos.http)
                ) as client,
                running_background(
                    settings, engine, paxos.http, fetch_poll_s=0.05, projection_poll_s=0.05
                ),
            ):
                # Intake, fetching, the projections, the sealer: all as the service role.
                # Some webhooks never come: a backfill (a job, over List Events) finds them.
                missed = [e for e in paxos.universe if not e.is_test][-5:]
                await deliver(client, [e.notification() for e in paxos.universe if e not in missed])
                window = {"since": DEFAULT_START.isoformat(), "until": DEFAULT_END.isoformat()}
                backfill = await client.post(
                    "/admin/backfill", json=window | {"include_test": True}, headers=admin_headers()
                )
                assert backfill.status_code == 202, backfill.text
                progress = await finished(client, backfill.json()["job_id"])
                assert progress["missing"] == len(missed), progress

                async def settled() -> bool:
                    counts = await scalar(
                        engine,
                        "SELECT ARRAY[(SELECT count(*) FROM identities), "
                        "(SELECT count(*) FROM transfers), (SELECT count(*) FROM orchestrations)]",
                    )
                    return not await pending(engine) and counts == [
                        len(identities),
                        len(transfers),
                        len(orchestrations),
                    ]

                await until(settled, "fetched and projected")

                async def sealed() -> bool:
                    return bool(
                        await scalar(
                            engine,
                            "SELECT (SELECT max(last_position) FROM seals) >= "
                            "(SELECT max(position) FROM journal)",
                        )
                    )

                await until(sealed, "sealed")
                ready = await client.get("/health/ready")  # reads alembic_version, lags
                assert ready.status_code == 200, ready.text

                # A rebuild of every projection, as a job of the service's job runner: its
                # shadow tables are swapped in by DROP and RENAME.
                started = await client.post(
                    "/admin/projections/all/rebuild", headers=admin_headers()
                )
                assert started.status_code == 202, started.text
                await finished(client, started.json()["job_id"])
                for identity_id, state in identities.items():
                    assert await stored_view(engine, identity_id) == view_of_state(state)

                verified = await client.get("/audit/verify", headers=admin_headers())
                assert verified.status_code == 200, verified.text
                assert verified.json()["ok"] is True, verified.json()

                # Pruning deletes journal rows: the service role may not, the owner may.
                assert await scalar(engine, "SELECT count(*) FROM events WHERE is_test") > 0
                with pytest.raises(DBAPIError) as failure:
                    await prune_test_events(engine, 0)
                assert getattr(failure.value.orig, "sqlstate", "") == INSUFFICIENT_PRIVILEGE
                pruned = await prune_test_events(owner_engine, 0)
                assert pruned.events > 0 and pruned.journal_rows > 0
                # A new run as the service role (the API would answer its cached run).
                after_prune = await verify(engine, 3600.0)
                assert after_prune.ok, after_prune.problems
        failures = [e for e in logs if e.get("log_level") in ("error", "critical")]
        assert not failures, failures

        # The rebuild's tables are the service role's; the evidence is the owner's.
        owned = await owners(engine)
        for table in projection_tables():
            assert owned[table] == deployment.service
        for table in ("journal", "seals", "prunes", "pruned_journal_rows", "events"):
            assert owned[table] == deployment.owner

        # What the service's own credentials cannot do to the evidence.
        for statement in (
            "UPDATE journal SET body = '{}'",
            "DELETE FROM journal",
            "TRUNCATE journal",
            "ALTER TABLE journal DISABLE TRIGGER journal_append_only",
            "ALTER TABLE journal DISABLE TRIGGER ALL",
            "DROP TRIGGER journal_append_only ON journal",
            "CREATE OR REPLACE FUNCTION journal_refuse_change() RETURNS trigger "
            "LANGUAGE plpgsql AS $$ BEGIN RETURN OLD; END $$",
            "DROP TABLE journal",
            "ALTER TABLE journal OWNER TO CURRENT_USER",
            "CREATE TRIGGER sneak BEFORE INSERT ON journal "
            "FOR EACH ROW EXECUTE FUNCTION journal_refuse_change()",
            "SET LOCAL session_replication_role = replica",
            f"SET ROLE {deployment.owner}",
            "UPDATE seals SET hash = hash",
            "DELETE FROM seals",
            "INSERT INTO pruned_journal_rows (position, event_id, kind, row_hash, prune_id) "
            "VALUES (1, gen_random_uuid(), 'event', '\\x00', 1)",
            "UPDATE events SET is_test = NOT is_test",
            "UPDATE events SET type = type",
            "DELETE FROM events",
            "ALTER TABLE events DISABLE TRIGGER events_no_delete",
        ):
            assert await refused(engine, statement) == INSUFFICIENT_PRIVILEGE, statement


async def test_migrations_refuse_to_run_as_the_service_role(deployment: Deployment) -> None:
    async with engine_for(deployment.owner_url) as owner_engine:
        await upgrade(owner_engine)
        async with owner_engine.begin() as conn:
            await grant_service_role(conn, deployment.service)
    async with engine_for(deployment.service_url) as engine:
        with pytest.raises(NotTheOwner, match=deployment.owner):
            await upgrade(engine)


async def test_an_existing_deployment_moves_its_tables_to_a_migration_role(
    deployment: Deployment,
) -> None:
    """Before: the service role made and owns every table. The migration role (a member of it)
    takes them over with REASSIGN OWNED, as docs/deploying.md says, then grants."""
    async with engine_for(deployment.owner_url) as owner_engine:
        async with owner_engine.begin() as conn:
            await conn.execute(text(f"GRANT CREATE ON SCHEMA public TO {deployment.service}"))
        async with engine_for(deployment.service_url) as engine:
            await upgrade(engine)
        async with owner_engine.begin() as conn:
            with pytest.raises(ServiceRoleError, match="REASSIGN OWNED BY"):
                await check_service_role(conn, deployment.service)
        async with owner_engine.begin() as conn:
            await conn.execute(
                text(f"REASSIGN OWNED BY {deployment.service} TO {deployment.owner}")
            )
            granted = await grant_service_role(conn, deployment.service)
        assert set(granted.owned) == set(projection_tables())
    async with engine_for(deployment.service_url) as engine:
        assert (
            await refused(engine, "ALTER TABLE journal DISABLE TRIGGER ALL")
            == INSUFFICIENT_PRIVILEGE
        )


async def test_grant_to_refuses_a_role_that_could_not_be_bound(deployment: Deployment) -> None:
    async with engine_for(deployment.owner_url) as owner_engine:
        for role, why in (
            ("pes_nobody_" + uuid.uuid4().hex[:8], "no role named"),
            (deployment.owner, "the role running the migrations"),
        ):
            async with owner_engine.begin() as conn:
                with pytest.raises(ServiceRoleError, match=why):
                    await check_service_role(conn, role)
    status, out, err = await paxos_events(
        "migrate", "--grant-to", "pes_nobody", database_url=deployment.owner_url
    )
    assert status == 2
    assert err.strip().splitlines() == [
        "paxos-events: --grant-to: no role named 'pes_nobody' (CREATE ROLE it first)"
    ]


@pytest.mark.server_independent
def test_every_table_says_what_the_service_role_may_do_to_it() -> None:
    assert not unclassified_tables()
    assert set(TABLE_PRIVILEGES) - {"alembic_version"} <= set(metadata.tables)
