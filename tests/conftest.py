"""The suite's plugins and its scheduling under pytest-xdist.

Fixtures live in the plugin modules under tests/fixtures/ (listed below); helpers that tests
share are plain modules under tests/support/. Tests are in three tiers: unit/ (no database),
integration/ (a real PostgreSQL, the app over ASGI) and process/ (real processes and sockets).
"""

from __future__ import annotations

import os
from collections import Counter

import pytest

pytest_plugins = [
    "tests.fixtures.database",
    "tests.fixtures.app",
    "tests.fixtures.paxos",
    "tests.fixtures.logs",
    "tests.fixtures.jwt",
    "tests.fixtures.ha",
    "tests.fixtures.anchors",
]


# Optional: with `-p no:xdist` pytest does not know the hook and would refuse the module.
@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """Workers for `-n auto` (`make test`): one per core, at most 4, each with its own embedded
    server; none on a TEST_DATABASE_URL server, which they would all share (see
    tests/fixtures/database.py)."""
    if os.environ.get("TEST_DATABASE_URL"):
        return 0
    return max(1, min(os.cpu_count() or 1, 4))


def _own_id(item: pytest.Item) -> None:
    """Schemathesis names each operation's test `test_x[GET /path]` but, under pytest 9.2,
    all of them get the function's id; pytest-xdist schedules by id and would run only one
    operation of them all. Give the item the id its name says.

    pytest has no public way to change an item's node id, so this sets its private `_id`
    (pytest >= 9.2) or `_nodeid` (before)."""
    suffix = item.name[len(getattr(item, "originalname", item.name)) :]
    if not suffix or item.nodeid.endswith(suffix):
        return
    node_id = getattr(item, "_id", None)
    if node_id is not None and hasattr(type(node_id), "parse"):
        item._id = type(node_id).parse(item.nodeid + suffix)  # pytest >= 9.2
    else:
        item._nodeid = item.nodeid + suffix


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Without pytest-xdist (`-p no:xdist`) its marker is unknown, and --strict-markers refuses it.
    xdist = config.pluginmanager.hasplugin("xdist")
    for item in items:
        _own_id(item)
        # The slow tests (real processes, timing windows) run one after another on one
        # worker (`--dist loadgroup`), never two at once; the others are spread over the rest.
        if xdist and item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.xdist_group("slow"))
    shared = [nodeid for nodeid, n in Counter(item.nodeid for item in items).items() if n > 1]
    if shared:
        raise pytest.UsageError(f"tests share an id, so pytest-xdist would run one: {shared[:3]}")
