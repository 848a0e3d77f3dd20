"""`serve --demo`: the service against a built-in Paxos, fed a steady stream of webhooks.

Nothing leaves the machine: the simulator listens on a loopback port of its own, the service
fetches from it exactly as it would from Paxos (tokens, rate limit, Get Event), and a sender
delivers the simulator's notifications to our own `/webhooks/paxos` as Paxos would. Within
seconds of start, `GET /events` shows fetched events. The demo also follows its own store: a
subscription named `demo-receiver` pushes every event to a receiver on another loopback port
of this process, which checks each delivery's signature and counts it, so
`GET /admin/subscriptions/demo-receiver` shows deliveries happening.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import secrets
import socket
import sys
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import structlog
import uvicorn

from service.db.outages import STORE_ERRORS
from service.db.runtime import opened_engine
from service.settings import Settings, WebhookAuth
from service.simulator.demo_files import (
    SECRETS_FILE,
    kept_secrets,
    record_running,
    write_private,
)
from service.simulator.sender import ApiKeyAuth, Auth, OAuthAuth, send
from service.simulator.server import SimulatorConfig, create_simulator
from service.simulator.universe import SimEvent, format_rfc3339_ns, generate_universe, to_ns
from service.store import subscriptions as store
from service.web.standard_webhooks import new_secret, signature

log = structlog.get_logger(__name__)

DEMO_EVENTS = 20_000  # about three hours of webhooks at the demo's rate
DEMO_RATE = 2.0  # webhooks per second
DEMO_CLIENT_ID = "demo-client"
DEMO_DROP = 0.02  # webhooks "lost" on purpose, for the reconciler to find
DEMO_RECONCILE_INTERVAL_S = 60
DEMO_SUBSCRIPTION = "demo-receiver"  # the demo's own push subscription (every event type)


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling and the "Started server process" lines
    to the main server of the process."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn's own serve, less its process lines: the service's server logs those once.
        if not self.config.loaded:
            self.config.load()
        self.lifespan = self.config.lifespan_class(self.config)
        await self.startup(sockets=sockets)
        if not self.should_exit:
            await self.main_loop()
        if self.started:
            await self.shutdown(sockets=sockets)


def _loopback_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def fill_in(settings: Settings) -> tuple[Settings, frozenset[str]]:
    """What a demo needs and was not set, made up: a read token, an admin token and (with
    WEBHOOK_AUTH=api_key) a webhook key. Also the names of the settings made up: the banner
    shows their values, and only theirs.

    Made-up values are kept in DATA_DIR/demo-secrets.json (mode 0600) and reused on the next
    start: a token printed once stays valid until DATA_DIR is removed (`make clean`)."""
    kept = kept_secrets(settings.data_dir)
    changes: dict[str, object] = {}
    made_up: set[str] = set()

    def make_up(name: str, field: str) -> None:
        value = kept.get(name) or secrets.token_urlsafe(24)
        kept[name] = value
        changes[field] = (value,)
        made_up.add(name)

    if not settings.api_read_tokens:
        make_up("API_READ_TOKENS", "api_read_tokens")
    if not settings.api_admin_tokens:
        make_up("API_ADMIN_TOKENS", "api_admin_tokens")
    if settings.webhook_auth is WebhookAuth.API_KEY and not settings.webhook_api_keys:
        make_up("WEBHOOK_API_KEYS", "webhook_api_keys")
    if made_up:
        write_private(settings.data_dir / SECRETS_FILE, kept)
    return settings.replace(**changes), frozenset(made_up)


def demo_settings(settings: Settings, paxos_port: int, client_secret: str) -> Settings:
    """`settings` pointed at the built-in Paxos on `paxos_port`, with subscription URLs to
    loopback allowed (the demo's own receiver listens there)."""
    base = f"http://127.0.0.1:{paxos_port}"
    return settings.replace(
        paxos_api_url=f"{base}/v2",
        paxos_token_url=f"{base}/oauth2/token",
        paxos_client_id=DEMO_CLIENT_ID,
        paxos_client_secret=client_secret,
        reconcile_interval_s=min(settings.reconcile_interval_s, DEMO_RECONCILE_INTERVAL_S),
        subscription_allow_private_urls=True,
    )


def _sender_auth(settings: Settings) -> Auth | None:
    base = f"http://{settings.host}:{settings.port}"
    match settings.webhook_auth:
        case WebhookAuth.API_KEY:
            return ApiKeyAuth(settings.webhook_api_key_header, settings.webhook_api_keys[0])
        case WebhookAuth.OAUTH:
            return OAuthAuth(
                f"{base}/oauth/token",
                settings.webhook_oauth_client_id or "",
                settings.webhook_oauth_client_secret or "",
            )
        case _:
            return None


def example_event(now: datetime) -> SimEvent:
    """The event of the banner's "send a webhook" line: a test event (as the Dashboard's Test
    button sends) that the simulator knows and the sample stream never sends, so the webhook
    the person sends is fetched like any other; test events are not what the reconciler lists.
    """
    ns = to_ns(now)
    event_id = str(uuid.uuid4())
    return SimEvent(
        id=event_id,
        type="identity.approved",
        object_type="identity_summary_status_change",
        object={
            "id": str(uuid.uuid4()),
            "identity_id": str(uuid.uuid4()),
            "old_summary_status": "PENDING",
            "new_summary_status": "APPROVED",
        },
        created_at=format_rfc3339_ns(ns),
        undelivered_webhooks=0,
        is_test=True,
        created_at_ns=ns,
        subject_id=event_id,
    )


async def serve_demo(
    settings: Settings,
    made_up: frozenset[str],
    new_server: Callable[[Settings], uvicorn.Server],
    sock: socket.socket,
    *,
    database_setting: str | None,
) -> None:
    """Print the banner, then run the simulator, the service (on `sock`) and the webhook
    stream until stopped.

    `new_server` builds the service's server from the settings pointed at the simulator;
    `database_setting` is DATABASE_URL as configured (None: the embedded database).
    """
    secret = secrets.token_urlsafe(24)
    now = datetime.now(UTC)
    # Events happen as the demo runs: each is created about when its webhook is sent (never
    # after: the stream waits for each event's time), so the reconciler (every minute here)
    # finds exactly the webhooks the demo drops on purpose.
    universe = generate_universe(
        DEMO_EVENTS,
        start=now + timedelta(seconds=2),
        end=now + timedelta(seconds=DEMO_EVENTS / DEMO_RATE),
        test_ratio=0.02,
        seed=secrets.randbelow(2**31),
    )
    notifications = universe.notifications()
    example = example_event(now)
    universe.add(example)  # known to the simulator, never in the stream
    simulator = create_simulator(
        SimulatorConfig(universe=universe, client_id=DEMO_CLIENT_ID, client_secret=secret)
    )
    paxos_sock = _loopback_socket()
    settings = demo_settings(settings, paxos_sock.getsockname()[1], secret)
    paxos = _QuietServer(
        uvicorn.Config(simulator, log_config=None, access_log=False, lifespan="off")
    )
    # The banner is for the person at the terminal, not for the log stream; it shows only
    # the secrets the demo made up, never a configured one.
    print(banner(settings, made_up, example), file=sys.stderr, flush=True)
    running = record_running(settings, database_setting)
    paxos_task = asyncio.create_task(paxos.serve(sockets=[paxos_sock]), name="demo-paxos")
    receiver = DemoReceiver()
    receiver_sock = _loopback_socket()
    receiver_server = _QuietServer(
        uvicorn.Config(receiver, log_config=None, access_log=False, lifespan="off")
    )
    receiver_task = asyncio.create_task(
        receiver_server.serve(sockets=[receiver_sock]), name="demo-receiver"
    )
    service = new_server(settings)
    stream = asyncio.create_task(_stream(settings, service, notifications), name="demo-webhooks")
    receiver_url = f"http://127.0.0.1:{receiver_sock.getsockname()[1]}/hook"
    subscribe = asyncio.create_task(
        _subscribe(settings, service, receiver, receiver_url), name="demo-subscription"
    )
    try:
        await service.serve(sockets=[sock])
    finally:
        running.unlink(missing_ok=True)
        stream.cancel()
        subscribe.cancel()
        paxos.should_exit = True
        receiver_server.should_exit = True
        await asyncio.gather(stream, subscribe, paxos_task, receiver_task, return_exceptions=True)
        paxos_sock.close()
        receiver_sock.close()


_Scope = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class DemoReceiver:
    """The demo's push receiver (an ASGI app): checks each delivery's Standard Webhooks
    signature against the secret the demo set, answers 204 (or 401 when it does not match)
    and counts what it got."""

    def __init__(self) -> None:
        self.secret: bytes | None = None  # set once the subscription exists
        self.received = 0
        self.verified = 0

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        self.received += 1
        status = 204 if self.verify(headers, body) else 401
        if status == 204:
            self.verified += 1
            if self.verified == 1 or self.verified % 1000 == 0:
                log.info("demo: push deliveries received and verified", count=self.verified)
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def verify(self, headers: dict[str, str], body: bytes) -> bool:
        """Whether one of the delivery's signatures is ours."""
        if self.secret is None:
            return False
        try:
            msg_id = headers["webhook-id"]
            timestamp = int(headers["webhook-timestamp"])
        except (KeyError, ValueError):
            return False
        expected = signature(self.secret, msg_id, timestamp, body)
        offered = headers.get("webhook-signature", "").split()
        return any(hmac.compare_digest(expected, s) for s in offered)


async def _subscribe(
    settings: Settings, service: uvicorn.Server, receiver: DemoReceiver, url: str
) -> None:
    """Point the demo's subscription at this run's receiver, once the service is up: created
    on a first run (every event type, from the beginning); on a later run the same subscription,
    with this run's URL, active again and a new secret that only this run's receiver knows."""
    while not service.started:  # noqa: ASYNC110 - uvicorn offers a flag, not an event
        await asyncio.sleep(0.05)
    secret = new_secret()
    receiver.secret = secret
    try:
        async with opened_engine(settings.database_url or "") as engine, engine.begin() as conn:
            created = await store.create_subscription(
                conn,
                name=DEMO_SUBSCRIPTION,
                url=url,
                types=[],
                include_test=True,
                max_in_flight=16,
                secret=secret,
                start="beginning",
            )
            if not created:
                await store.update_subscription(
                    conn, DEMO_SUBSCRIPTION, url=url, types=[], include_test=True, state="active"
                )
                await store.rotate_secret(conn, DEMO_SUBSCRIPTION, secret, 0)
            await store.notify_changed(conn)
    except STORE_ERRORS as exc:
        log.warning("demo: its push subscription could not be set up", error=str(exc))
        return
    log.info(
        "demo: push subscription ready", subscription=DEMO_SUBSCRIPTION, created=created, url=url
    )


async def _stream(
    settings: Settings, service: uvicorn.Server, notifications: list[dict[str, object]]
) -> None:
    """Deliver the demo's notifications once the service is up."""
    if settings.webhook_auth is WebhookAuth.JWT:
        log.warning("demo: no sample webhooks with WEBHOOK_AUTH=jwt (no identity provider here)")
        return
    while not service.started:  # noqa: ASYNC110 - uvicorn offers a flag, not an event
        await asyncio.sleep(0.05)
    target = f"http://{settings.host}:{settings.port}/webhooks/paxos"
    async with httpx.AsyncClient() as client:
        report = await send(
            notifications,
            target,
            client=client,
            auth=_sender_auth(settings),
            rate=DEMO_RATE,
            duplicates=0.05,
            drop=DEMO_DROP,
            # Never before the event's own time: a webhook does not announce the future.
            paced_by_time=True,
        )
    log.info("demo: every sample webhook delivered", delivered=len(report.delivered))


def banner(settings: Settings, made_up: frozenset[str], example: SimEvent | None = None) -> str:
    """What `serve --demo` shows the person at the terminal: where, the tokens, curl lines,
    what the demo does on purpose, where its secrets are kept and how to stop and reset it.

    Only the secrets `fill_in` made up (named in `made_up`) are shown; a configured one is
    named by its setting, never printed: the terminal may be a container's log. `example` is
    the event of the "send a webhook" line (`example_event`)."""

    def shown(name: str, values: tuple[str, ...]) -> tuple[str, str]:
        # (for the list, for the curl lines)
        if name in made_up:
            return values[0], values[0]
        return f"(from {name})", f"<a value of {name}>"

    base = f"http://{settings.host}:{settings.port}"
    read, read_in_curl = shown("API_READ_TOKENS", settings.api_read_tokens)
    lines = [
        "",
        f"Paxos Event Store (demo) on {base}",
        "  fetching from a built-in Paxos simulator, which also sends it sample webhooks",
        f"  about {DEMO_DROP:.0%} of them are dropped on purpose, as a lost delivery would be: "
        "the reconciler",
        f"  (List Events, every {DEMO_RECONCILE_INTERVAL_S} s here) finds them and logs "
        '"missed webhook"',
        f"  pushing every event to a receiver of its own: subscription {DEMO_SUBSCRIPTION}",
        f"  read token:  {read}",
        f"  admin token: {shown('API_ADMIN_TOKENS', settings.api_admin_tokens)[0]}",
    ]
    if settings.webhook_auth is WebhookAuth.API_KEY:
        header = settings.webhook_api_key_header
        key, key_in_curl = shown("WEBHOOK_API_KEYS", settings.webhook_api_keys)
        lines.append(f"  webhook key: {header}: {key}")
        if example is not None:
            body = json.dumps(example.notification())
            lines += [
                "",
                "Send a webhook (a test event the simulator knows: fetched within seconds; "
                'sent again: "duplicate"):',
                f"  curl -s {base}/webhooks/paxos -H 'Content-Type: application/json' "
                f"-H '{header}: {key_in_curl}' -d '{body}'",
            ]
    lines += [
        "",
        "List events:",
        f"  curl -s -H 'Authorization: Bearer {read_in_curl}' '{base}/events?limit=10'",
        "",
    ]
    if made_up:
        where = settings.data_dir / SECRETS_FILE
        lines += [
            f"The tokens and key above are kept in {where} (mode 0600) and reused on the next",
            "start. Stop with Ctrl-C (the embedded PostgreSQL stops too); reset everything,",
            "once stopped, with `make clean` (removes DATA_DIR and .venv).",
            "",
        ]
    return "\n".join(lines)
