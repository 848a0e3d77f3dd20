"""Serve an ASGI app factory with a named server: how `bench.ingest` runs the references (with
the server of `paxos-events serve`) and compares servers for the service itself.

    .venv/bin/python -m bench.reference.serving SERVER MODULE:FACTORY

SERVER is one of:
- `uvicorn`: the configuration of `paxos-events serve` (`service.web.serving.server_config`:
  httptools with the whole-request deadline and header bound, uvloop, no access log);
- `uvicorn-h11`: the same, on uvicorn's pure-Python h11 protocol (without those two guards);
- `granian`: granian (Rust HTTP/1.1), one worker, uvloop, no access log.
FACTORY takes no argument and reads its settings from the environment (HOST, PORT, ...);
`bench.reference.serving:service_app` is the service's own app (as `serve --no-background`
builds it, on a migrated DATABASE_URL, its startup's objects frozen out of the garbage
collector as `serve` freezes them); the references are left as a minimal consumer has them.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

SERVERS = ("uvicorn", "uvicorn-h11", "granian")


def service_app() -> Any:
    """The service's app, as `serve --no-background` builds it (no migrations: the bench's
    database is migrated)."""
    from service.app import create_app
    from service.settings import Settings
    from service.telemetry.logs import configure
    from service.web.serving import freeze_survivors

    settings = Settings.from_env(os.environ)
    settings.check()
    configure(settings.log_level, settings.log_format)
    app = create_app(settings, background=False)
    freeze_survivors()  # as `serve` does once started (here: before the lifespan's pools)
    return app


def ceiling_app() -> Any:
    """`bench.ceiling`'s app: the service's intake route storing nothing."""
    from bench.ceiling import create_ceiling_app
    from service.settings import Settings

    return create_ceiling_app(Settings.from_env(os.environ))


def serve_target(target: str, server: str | None = None) -> None:
    """Serve `target` ("module:factory") with `server` (default: BENCH_ASGI_SERVER, else
    uvicorn) until SIGTERM."""
    server = server or os.environ.get("BENCH_ASGI_SERVER", "uvicorn")
    host = os.environ.get("HOST", "127.0.0.1")
    port = os.environ.get("PORT", "8000")
    if server == "granian":
        argv = [
            sys.executable, "-m", "granian", "--interface", "asgi", "--factory",
            "--workers", "1", "--loop", "uvloop", "--http", "1", "--no-ws",
            "--host", host, "--port", port, "--log-level", "warning", "--no-access-log",
            target,
        ]  # fmt: skip
        os.execv(sys.executable, argv)  # noqa: S606 - our own interpreter, fixed arguments
    if server not in SERVERS:
        raise SystemExit(f"unknown server {server!r}: one of {', '.join(SERVERS)}")

    import uvicorn

    from service.settings import Settings
    from service.web.serving import server_config

    module, _, factory = target.partition(":")
    app = getattr(importlib.import_module(module), factory)()
    config = server_config(app, Settings.from_env(os.environ))
    if server == "uvicorn-h11":
        config.http = "h11"
    uvicorn.Server(config).run()


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit(__doc__)
    serve_target(argv[1], argv[0])


if __name__ == "__main__":
    main(sys.argv[1:])
