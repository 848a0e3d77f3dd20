"""What the demo keeps in DATA_DIR: the secrets it made up (reused by the next start, so a
token printed once keeps working until `make clean`), and, while it runs, where its simulator
is, so that `worker` and `backfill` on the same DATA_DIR can fetch from it. Both files are
readable by their owner only (mode 0600)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from service.settings import Settings

SECRETS_FILE = "demo-secrets.json"
RUNNING_FILE = "demo-paxos.json"


def kept_secrets(data_dir: Path) -> dict[str, str]:
    """The secrets kept by an earlier demo on `data_dir`, by setting name (none: empty)."""
    try:
        kept = json.loads((data_dir / SECRETS_FILE).read_text())
    except (OSError, ValueError):
        return {}  # none yet (or unreadable: made up anew)
    if not isinstance(kept, dict):
        return {}
    # Only values a setting would accept (at least 16 characters), as a setting would.
    return {k: v for k, v in kept.items() if isinstance(v, str) and len(v) >= 16}


def write_private(path: Path, content: dict[str, Any]) -> None:
    """Write `content` as JSON to `path`, readable by this user only (mode 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(content, out, indent=2)
    os.chmod(temporary, 0o600)  # an older file of that name may have had another mode
    os.replace(temporary, path)


def database_mark(database_url: str | None) -> str:
    """The DATABASE_URL setting a demo runs with (unset: the embedded database of DATA_DIR),
    recognisable without being written down (it may carry a password)."""
    return hashlib.sha256((database_url or "").encode()).hexdigest()


def record_running(settings: Settings, database_url: str | None) -> Path:
    """Say in DATA_DIR where this demo's simulator is, for `worker` and `backfill`."""
    path = settings.data_dir / RUNNING_FILE
    write_private(
        path,
        {
            "pid": os.getpid(),
            "database": database_mark(database_url),
            "paxos_api_url": settings.paxos_api_url,
            "paxos_token_url": settings.paxos_token_url,
            "paxos_client_id": settings.paxos_client_id,
            "paxos_client_secret": settings.paxos_client_secret,
        },
    )
    return path


def running_demo_paxos(settings: Settings) -> Settings | None:
    """`settings` pointed at the simulator of a demo running on the same DATA_DIR and
    DATABASE_URL setting, or None when none runs."""
    try:
        running = json.loads((settings.data_dir / RUNNING_FILE).read_text())
        pid = int(running["pid"])
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no demo, or it has stopped
    if running.get("database") != database_mark(settings.database_url):
        return None  # a demo on another database
    try:
        return settings.replace(
            paxos_api_url=str(running["paxos_api_url"]),
            paxos_token_url=str(running["paxos_token_url"]),
            paxos_client_id=str(running["paxos_client_id"]),
            paxos_client_secret=str(running["paxos_client_secret"]),
        )
    except KeyError:
        return None
