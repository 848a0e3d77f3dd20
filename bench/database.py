"""The benchmarks' databases: each run gets a fresh, migrated one of its own name."""

from __future__ import annotations

import asyncpg

from service.db import create_engine, plain_url, with_database
from service.migrations import upgrade


async def _admin(admin_url: str) -> asyncpg.Connection:
    return await asyncpg.connect(plain_url(with_database(admin_url, "postgres")))


async def drop(admin_url: str, name: str) -> None:
    """Drop database `name` on the server of `admin_url`, closing its connections."""
    conn = await _admin(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def recreate(admin_url: str, name: str) -> str:
    """Drop and create database `name`, migrate it to head; its URL."""
    await drop(admin_url, name)
    conn = await _admin(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = with_database(admin_url, name)
    engine = create_engine(url, pool_size=1)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()
    return url
