"""The intake's ceiling: the webhook path with everything but the store, for `bench.ingest`.

This is the service's own `POST /webhooks/paxos` (`IntakeApp` and its `IntakeEndpoint`:
the failed-authentication throttle, API-key authentication, content-type check, bounded body
read, `decode_notification`, the JSON answer) served by the same uvicorn setup as
`paxos-events serve` (one worker, uvloop and httptools when installed, no access log), but
with a committer that stores nothing and answers every notification "accepted" at once. Its
requests per second are the most the full path could reach if a durable commit cost nothing;
`bench.ingest` divides the real server's rate by this one.

It is a bench-only app, never a route of the service:

    PORT=8001 WEBHOOK_API_KEYS=bench-key-000000001 .venv/bin/python -m bench.ceiling

It reads the service's settings from the environment (only the webhook ones matter).
"""

from __future__ import annotations

import os

import uvicorn
from litestar import Litestar
from litestar.datastructures import State

from service.domain.notification import Notification
from service.intake.auth import ApiKeyAuthenticator
from service.intake.controller import webhook_handler
from service.intake.endpoint import IntakeApp, IntakeEndpoint
from service.settings import Settings
from service.telemetry.logs import configure
from service.web.problems import EXCEPTION_HANDLERS
from service.web.serving import server_config
from service.web.throttle import FailureThrottle, throttle_middleware


class NullCommitter:
    """Stands in for `GroupCommitter`: remembers nothing, calls every notification new."""

    async def submit(self, notification: Notification, body: str) -> bool:
        return True


def create_ceiling_app(settings: Settings) -> Litestar:
    """The intake route exactly as `create_app` mounts it, with `NullCommitter` behind it."""
    throttle = FailureThrottle(settings.auth_failure_limit, settings.auth_failure_window_s)

    def intake(state: State) -> IntakeEndpoint:
        return IntakeEndpoint(state, throttle, settings.webhook_max_body_bytes)

    return IntakeApp(
        intake=intake,
        route_handlers=[webhook_handler(settings.webhook_max_body_bytes)],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        logging_config=None,  # as in create_app
        state=State(
            {
                "settings": settings,
                "authenticator": ApiKeyAuthenticator(
                    settings.webhook_api_key_header, settings.webhook_api_keys
                ),
                "committer": NullCommitter(),
            }
        ),
        debug=False,
        # As in create_app: the failed-authentication throttle wraps the intake.
        middleware=[throttle_middleware(throttle)],
    )


def main() -> None:
    settings = Settings.from_env(os.environ)
    settings.check()
    configure(settings.log_level, settings.log_format)
    # The very uvicorn configuration of `paxos-events serve` (protocol with its request
    # limits included), so that the ratio compares the same server with and without a store.
    config = server_config(create_ceiling_app(settings), settings)
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
