"""`paxos-events simulate api | send`: a stand-in Paxos, and Paxos's webhook delivery.

Both commands build the same universe from `--seed`, `--events`/`--count`, `--test-ratio` and
`--until`, so the events `simulate send` delivers are the events `simulate api` serves: run
them with the same values (the `api` banner prints the matching `send` command).
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import sys
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import click

from service.simulator.universe import Universe, generate_universe, parse_rfc3339_ns

WINDOW = timedelta(hours=24)
_PROBABILITY = click.FloatRange(0.0, 1.0)
_POSITIVE = click.FloatRange(min=0.0, min_open=True)


def _until_default() -> datetime:
    # The current hour, so that an `api` and a `send` started apart in time agree on it.
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


def _parse_until(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime:
    if value is None:
        return _until_default()
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        value += "T00:00:00Z"  # a date alone: midnight UTC, as every time option reads it
    try:
        ns = parse_rfc3339_ns(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an RFC 3339 time such as 2025-01-07T14:00:00Z"
        ) from None
    return datetime.fromtimestamp(ns // 1_000_000_000, UTC)


def _not_blank(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise click.BadParameter("must not be empty")
    return value


def _http_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise click.BadParameter(f"{value!r} is not an http(s) URL with a host")
    return value


def build_universe(events: int, test_ratio: float, seed: int, until: datetime) -> Universe:
    """The universe both commands agree on: `events` events over the 24 hours before `until`."""
    return generate_universe(
        events, start=until - WINDOW, end=until, test_ratio=test_ratio, seed=seed
    )


def _until_text(until: datetime) -> str:
    return until.strftime("%Y-%m-%dT%H:%M:%SZ")


@click.group()
def simulate() -> None:
    """Stand-ins for Paxos: its REST API, and its webhook delivery."""


@simulate.command("api")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option(
    "--port", type=click.IntRange(1, 65535), default=8099, show_default=True, help="Port."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the universe.")
@click.option(
    "--events",
    type=click.IntRange(min=0),
    default=500,
    show_default=True,
    help="Events in the universe, test events included.",
)
@click.option(
    "--test-ratio",
    type=_PROBABILITY,
    default=0.05,
    show_default=True,
    help="Share of test events (Dashboard Test button).",
)
@click.option(
    "--until",
    callback=_parse_until,
    help="End of the universe's 24-hour window, RFC 3339. [default: the current hour]",
)
@click.option(
    "--error-rate", type=_PROBABILITY, default=0.0, show_default=True, help="Share of 5xx."
)
@click.option(
    "--latency",
    type=click.FloatRange(min=0.0),
    default=0.0,
    show_default=True,
    help="Seconds added to every call.",
)
@click.option(
    "--rate",
    type=_POSITIVE,
    default=50.0,
    show_default=True,
    help="API calls allowed per second (Paxos: 50); above it, 429.",
)
@click.option(
    "--token-ttl",
    type=_POSITIVE,
    default=3600.0,
    show_default=True,
    help="Token lifetime in seconds.",
)
@click.option("--no-cursor", is_flag=True, help="Emulate the older List Events without cursors.")
@click.option(
    "--client-id", default="sim-client", show_default=True, callback=_not_blank, help="OAuth id."
)
@click.option(
    "--client-secret",
    default="sim-secret",
    show_default=True,
    callback=_not_blank,
    envvar="SIMULATE_CLIENT_SECRET",
    help="OAuth secret (or SIMULATE_CLIENT_SECRET).",
)
def api(
    host: str,
    port: int,
    seed: int,
    events: int,
    test_ratio: float,
    until: datetime,
    error_rate: float,
    latency: float,
    rate: float,
    token_ttl: float,
    no_cursor: bool,
    client_id: str,
    client_secret: str,
) -> None:
    """Run a stand-in Paxos API: token endpoint, Get Event, List Events."""
    import uvicorn

    from service.simulator.server import Faults, SimulatorConfig, create_simulator

    universe = build_universe(events, test_ratio, seed, until)
    config = SimulatorConfig(
        universe=universe,
        client_id=client_id,
        client_secret=client_secret,
        token_ttl_s=token_ttl,
        api_rps=rate,
        cursors=not no_cursor,
        faults=Faults(error_rate=error_rate, latency_s=latency),
        seed=seed,
    )
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104 - a comparison
    base = f"http://{shown}:{port}"
    tests = sum(1 for e in universe if e.is_test)
    lines = [
        f"Paxos simulator on {base}: {len(universe) - tests} events and {tests} test events "
        f"from {_until_text(until - WINDOW)} to {_until_text(until)}",
        "",
        f"PAXOS_API_URL={base}/v2",
        f"PAXOS_TOKEN_URL={base}/oauth2/token",
        f"PAXOS_CLIENT_ID={client_id}",
        f"PAXOS_CLIENT_SECRET={client_secret}",
        "",
        "Deliver these events as webhooks:",
        f"  paxos-events simulate send --target http://127.0.0.1:8000/webhooks/paxos "
        f"--count {events} --test-ratio {test_ratio} --seed {seed} --until {_until_text(until)}"
        " --api-key KEY",
        "",
        f"Faults at run time: curl -X PATCH {base}/_simulator/faults "
        "-H 'Content-Type: application/json' -d '{\"error_rate\": 0.1}'; "
        f"counts at {base}/_simulator/stats",
        "",
    ]
    click.echo("\n".join(lines), err=True)
    uvicorn.run(create_simulator(config), host=host, port=port, log_level="warning")


@simulate.command("send")
@click.option("--target", required=True, callback=_http_url, help="The consumer's webhook URL.")
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Events in the universe, test events included.",
)
@click.option(
    "--rate",
    type=_POSITIVE,
    default=10.0,
    show_default=True,
    help="Delivery attempts per second, retries included (Paxos: 1 to 100).",
)
@click.option(
    "--duplicates", type=_PROBABILITY, default=0.0, show_default=True, help="Chance of a 2nd copy."
)
@click.option("--shuffle", is_flag=True, help="Deliver in random order (Paxos promises none).")
@click.option(
    "--test-ratio", type=_PROBABILITY, default=0.0, show_default=True, help="Share of test events."
)
@click.option(
    "--drop",
    type=_PROBABILITY,
    default=0.0,
    show_default=True,
    help="Chance that an event is never delivered.",
)
@click.option(
    "--auth",
    type=click.Choice(["api_key", "oauth", "none"]),
    help="How to authenticate. [default: api_key with --api-key, oauth with --token-url]",
)
@click.option(
    "--api-key-header",
    default="X-Api-Key",
    show_default=True,
    callback=_not_blank,
    help="Header name for --auth api_key.",
)
@click.option(
    "--api-key",
    envvar="SIMULATE_API_KEY",
    callback=_not_blank,
    help="Header value for --auth api_key (or SIMULATE_API_KEY).",
)
@click.option("--token-url", callback=_http_url, help="Token URL for --auth oauth.")
@click.option("--client-id", callback=_not_blank, help="Client id for --auth oauth.")
@click.option(
    "--client-secret",
    envvar="SIMULATE_CLIENT_SECRET",
    callback=_not_blank,
    help="Client secret for --auth oauth (or SIMULATE_CLIENT_SECRET).",
)
@click.option("--seed", type=int, help="Seed of the universe and of the dice. [default: random]")
@click.option(
    "--until",
    callback=_parse_until,
    help="End of the universe's 24-hour window, RFC 3339. [default: the current hour]",
)
@click.option(
    "--time-scale",
    type=_POSITIVE,
    default=1.0,
    show_default=True,
    help="Multiplies retry delays and the 24-hour horizon (0.01: first retry after 50 ms).",
)
@click.option(
    "--timeout",
    type=_POSITIVE,
    default=10.0,
    show_default=True,
    help="Seconds to wait for an answer before counting it as none.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
def send_command(
    target: str,
    count: int,
    rate: float,
    duplicates: float,
    shuffle: bool,
    test_ratio: float,
    drop: float,
    auth: str | None,
    api_key_header: str,
    api_key: str | None,
    token_url: str | None,
    client_id: str | None,
    client_secret: str | None,
    seed: int | None,
    until: datetime,
    time_scale: float,
    timeout: float,
    as_json: bool,
) -> None:
    """Deliver webhooks to a consumer as Paxos does, retries included; exit 1 if any gave up."""
    from service.simulator.sender import ApiKeyAuth, Auth, OAuthAuth, RetryPolicy, send

    oauth_options = {
        "--token-url": token_url,
        "--client-id": client_id,
        "--client-secret": client_secret,
    }
    if auth is None:
        auth = "api_key" if api_key else "oauth" if token_url else "none"
    credentials: Auth | None = None
    if auth == "api_key":
        if not api_key:
            raise click.UsageError("--auth api_key needs --api-key (or SIMULATE_API_KEY)")
        given = [name for name, value in oauth_options.items() if value]
        if given:
            raise click.UsageError(f"{given[0]} applies only to --auth oauth")
        credentials = ApiKeyAuth(api_key_header, api_key)
    elif auth == "oauth":
        missing = [name for name, value in oauth_options.items() if not value]
        if missing:
            raise click.UsageError(f"--auth oauth needs {', '.join(missing)}")
        if api_key:
            raise click.UsageError("--api-key applies only to --auth api_key")
        credentials = OAuthAuth(token_url or "", client_id or "", client_secret or "")
    elif api_key or any(oauth_options.values()):
        raise click.UsageError("credentials were given with --auth none")

    seed = secrets.randbits(32) if seed is None else seed
    universe = build_universe(count, test_ratio, seed, until)
    report = asyncio.run(
        send(
            universe.notifications(),
            target,
            auth=credentials,
            rate=rate,
            duplicates=duplicates,
            shuffle=shuffle,
            drop=drop,
            retry=RetryPolicy().scaled(time_scale),
            timeout_s=timeout,
            seed=seed,
        )
    )
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(f"{target}: {report.summary()}")
        if report.token_requests:
            click.echo(f"token requests: {report.token_requests}")
        if report.given_up:
            click.echo(
                f"gave up on: {', '.join(report.given_up[:10])}"
                + (" ..." if len(report.given_up) > 10 else "")
            )
    if report.given_up:
        sys.exit(1)


__all__ = ["build_universe", "simulate"]
