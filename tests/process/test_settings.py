"""A bad setting stops `paxos-events serve` at start, with one line that names it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import ROOT

# The same on every PostgreSQL: CI runs these on one server only.
pytestmark = pytest.mark.server_independent


def test_a_bad_setting_stops_the_start_with_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEBHOOK_", "PAXOS_"))}
    env.update(
        PORT="eighty",
        DATA_DIR=str(tmp_path),
        PAXOS_CLIENT_ID="x",
        PAXOS_CLIENT_SECRET="y",
        WEBHOOK_API_KEYS="k",
    )
    result = subprocess.run(
        [sys.executable, "-m", "service", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        "paxos-events: configuration error: PORT: must be a whole number from 1 to 65535, "
        "got 'eighty'"
    ]
