"""`paxos-events serve` as a real process on a database of its own, for tests that need the
real server (uvicorn and its limits) rather than the app over ASGI."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from service.db.engine import plain_url, with_database
from tests.support.processes import clean_env, free_port, running, wait_http
from tests.support.tokens import ADMIN_TOKEN, API_KEY, READ_TOKEN


@dataclass(frozen=True)
class Served:
    port: int
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def _admin(server_url: str, statement: str) -> None:
    conn = await asyncpg.connect(plain_url(server_url))
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@contextmanager
def served(server_url: str, template: str, log_dir: Path, **env: str) -> Iterator[Served]:
    """`serve --no-background` with the test tokens and `env`, on a copy of `template`."""
    name = f"pes_served_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    port = free_port()
    settings = clean_env(
        DATABASE_URL=with_database(server_url, name),
        PORT=str(port),
        WEBHOOK_API_KEYS=API_KEY,
        API_READ_TOKENS=READ_TOKEN,
        API_ADMIN_TOKENS=ADMIN_TOKEN,
        # Credentials (unused without background work) keep `serve` out of demo mode.
        PAXOS_CLIENT_ID="unused",
        PAXOS_CLIENT_SECRET="unused",
        LOG_FORMAT="json",
    )
    settings.update(env)
    log = log_dir / f"serve-{port}.log"
    try:
        with running(["serve", "--no-background"], settings, log) as process:
            wait_http(f"http://127.0.0.1:{port}/health/live")
            yield Served(port, log)
            assert process.poll() is None, log.read_text()
    finally:
        asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
