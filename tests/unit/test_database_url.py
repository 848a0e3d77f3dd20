"""A multi-host DATABASE_URL (Patroni's clients' form) as SQLAlchemy and asyncpg get it."""

from __future__ import annotations

import pytest
from sqlalchemy.dialects.postgresql.asyncpg import dialect
from sqlalchemy.engine import make_url

from service.db.engine import asyncpg_url, hosts_of

pytestmark = pytest.mark.server_independent

MULTI = (
    "postgresql://paxos:p%40ss@10.0.0.1:5432,10.0.0.2:5433/paxos_events"
    "?target_session_attrs=read-write"
)


def test_a_multi_host_url_reaches_asyncpg_as_host_and_port_lists() -> None:
    _, options = dialect().create_connect_args(make_url(asyncpg_url(MULTI)))
    assert options == {
        "host": ["10.0.0.1", "10.0.0.2"],
        "port": [5432, 5433],
        "user": "paxos",
        "password": "p@ss",
        "database": "paxos_events",
        "target_session_attrs": "read-write",
    }


def test_a_single_host_url_only_names_the_driver() -> None:
    url = "postgresql://paxos@db:5432/paxos_events?sslmode=require"
    assert asyncpg_url(url) == "postgresql+asyncpg://paxos@db:5432/paxos_events?sslmode=require"
    assert hosts_of(url) == []


def test_hosts_of_lists_each_host_and_port() -> None:
    assert hosts_of(MULTI) == ["10.0.0.1:5432", "10.0.0.2:5433"]
