"""The command-line composition root: `paxos-events serve | migrate | ...`."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import os
import re
import signal
import socket
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn, TextIO, cast

import click
import structlog

from service.db.runtime import run, run_with_engine
from service.settings import Settings, SettingsError

if TYPE_CHECKING:
    # Only for annotations: commands import what they use when they run, so `--help` is quick.
    from sqlalchemy.ext.asyncio import AsyncEngine

log = structlog.get_logger(__name__)


def _fail(message: str) -> NoReturn:
    click.echo(f"paxos-events: {message}", err=True)
    sys.exit(2)


def load_settings(*, check: bool = True) -> Settings:
    """Settings from the environment, or exit with one line naming the bad one."""
    settings = _read_settings()
    if check:
        _check(settings, demo=False)
    _configure_logs(settings)
    return settings


def _read_settings() -> Settings:
    try:
        return Settings.from_env(os.environ)
    except SettingsError as exc:
        _fail(f"configuration error: {exc}")


def _check(settings: Settings, *, demo: bool) -> None:
    try:
        settings.check(demo=demo)
    except SettingsError as exc:
        _fail(f"configuration error: {exc}")
    _check_audit_keys(settings)


def _check_audit_keys(settings: Settings) -> None:
    """AUDIT_SIGNING_KEY and AUDIT_PUBLIC_KEYS readable and Ed25519, or exit with one line."""
    from service.domain.signing import trusted_keys

    try:
        trusted_keys(settings.audit_signing_key, settings.audit_public_keys)
    except ValueError as exc:
        _fail(f"configuration error: {exc}")


def _configure_logs(settings: Settings) -> None:
    from service.telemetry.logs import configure

    configure(settings.log_level, settings.log_format, stream=cast(TextIO, CurrentStderr()))


class CurrentStderr(io.TextIOBase):
    """`sys.stderr` as it is at each write, for the logs. While a progress bar shows, rich puts
    a proxy there that prints above the bar: log lines then never cut into it (a stream
    captured once would keep writing beneath the bar, one mangled line each)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def database_url(settings: Settings) -> str:
    """DATABASE_URL, or the embedded server's (started if needed) when it is unset."""
    if settings.database_url:
        return settings.database_url
    from service.db.engine import EmbeddedPostgresMissing, start_embedded_postgres

    try:
        return start_embedded_postgres(settings.data_dir)
    except EmbeddedPostgresMissing as exc:
        _fail(str(exc))


class _Commands(click.Group):
    """A group whose help lists each command with its whole first sentence (click cuts it
    to fit one line, mid-phrase), wrapped to the terminal."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.short_help or first_sentence(command.help or "")))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def first_sentence(text: str) -> str:
    """The first sentence of a docstring's first paragraph, on one line."""
    paragraph = " ".join(text.strip().split("\n\n")[0].split())
    # A full stop ends the sentence only before a capital: "(e.g. this)" goes on.
    return re.split(r"(?<=\.) (?=[A-Z])", paragraph, maxsplit=1)[0]


@click.group(
    cls=_Commands,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120},
)
@click.version_option(package_name="paxos-event-store", prog_name="paxos-events")
def cli() -> None:
    """Paxos Event Store: durable intake of Paxos webhooks and their full events."""


@cli.command()
@click.option(
    "--demo",
    is_flag=True,
    help="Demo mode: a built-in Paxos simulator to fetch from and sample webhooks from it; "
    "missing tokens and keys are made up and printed. The default only on the embedded "
    "database with nothing configured (no Paxos credentials, API tokens or webhook "
    "credentials); never with DATABASE_URL unless asked for.",
)
@click.option(
    "--no-background",
    is_flag=True,
    help="Serve HTTP only; leave fetching to `paxos-events worker` processes.",
)
def serve(demo: bool, no_background: bool) -> None:
    """Run the HTTP service (with the fetcher, unless --no-background)."""
    from service.app import create_app
    from service.web.serving import Server
    from service.web.serving import server_config as guarded_server_config

    settings = _read_settings()
    # Demo mode writes made-up events into an append-only journal: only when asked for, or on
    # a first `make run` (the embedded database, nothing configured). Never implied on a
    # DATABASE_URL, where the journal may be a real deployment's.
    demo = demo or settings.configures_nothing
    made_up: frozenset[str] = frozenset()
    if demo:
        from service.simulator.demo import fill_in

        settings, made_up = fill_in(settings)
    _check(settings, demo=demo)
    _configure_logs(settings)
    # What can keep the service from starting is found before anything is printed: the port,
    # then the database and its migrations. Once running, outages are retried instead.
    sock = _listen(settings)
    database_setting = settings.database_url
    try:
        url = database_url(settings)
        _check_database(url, migrate=not settings.database_url)
        settings = settings.replace(database_url=url)
        if not demo:
            _warn_unreadable(settings)

        def new_server(settings: Settings) -> Server:
            # Timeouts and size limits against hostile clients: service.web.serving.
            app = create_app(settings, background=not no_background)
            return Server(guarded_server_config(app, settings))

        if demo:
            from service.simulator.demo import serve_demo

            run(serve_demo(settings, made_up, new_server, sock, database_setting=database_setting))
        else:
            _log_listening(settings)
            new_server(settings).run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # SIGINT or SIGTERM before the server took them over: a clean stop as well
    finally:
        sock.close()


def _listen(settings: Settings) -> socket.socket:
    """The service's listening socket, or exit with one line naming the cause."""
    from service.web.serving import listening_socket

    try:
        return listening_socket(settings.host, settings.port)
    except OSError as exc:
        hint = (
            "another process listens there: stop it, or set PORT"
            if exc.errno == errno.EADDRINUSE
            else "set HOST and PORT"
        )
        _fail(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}; {hint}")


def _check_database(url: str, *, migrate: bool) -> None:
    """The database answers and is at this code's migration, or exit with one line saying
    what to do. With `migrate` (the embedded database, ours alone) it is migrated instead."""
    from service.db.migrations import head_revision, revision_of, upgrade

    async def check(engine: AsyncEngine) -> str | None:
        if migrate:
            await upgrade(engine)
            return head_revision()
        async with engine.connect() as conn:
            return await revision_of(conn)

    revision = run_with_engine(url, check)  # unreachable: main() says so in one line
    if revision != head_revision():
        _fail(
            f"the database is at migration {revision or 'none'}, this version needs "
            f"{head_revision()}: run `paxos-events migrate` first"
        )


def _warn_unreadable(settings: Settings) -> None:
    """Warn when nobody can read what the service stores (no read or admin token)."""
    if not settings.api_read_tokens and not settings.api_admin_tokens:
        log.warning(
            "no API_READ_TOKENS or API_ADMIN_TOKENS: the read API, /metrics and the console "
            "refuse everyone; webhooks are still stored"
        )
    elif not settings.api_admin_tokens:
        log.warning("no API_ADMIN_TOKENS: the admin routes and console actions refuse everyone")


def _log_listening(settings: Settings) -> None:
    log.info(f"listening on http://{settings.host}:{settings.port} (Ctrl-C or SIGTERM stops)")


@cli.command()
def worker() -> None:
    """Run the background parts only (the fetcher); as many copies as load needs."""
    from service.background import running_background
    from service.db.runtime import opened_engine
    from service.web.client import new_http_client

    settings = load_settings(check=False)
    _check_audit_keys(settings)
    try:
        settings = _paxos_or_demo(settings, "the worker")
        url = database_url(settings)
        _check_database(url, migrate=not settings.database_url)
        settings = settings.replace(database_url=url)

        async def run_worker() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            async with (
                opened_engine(settings.database_url or "", pool_size=10) as engine,
                new_http_client(settings.paxos_max_connections) as http,
                running_background(settings, engine, http),
            ):
                log.info("worker started")
                await stop.wait()
            log.info("worker stopped")

        run(run_worker())
    except KeyboardInterrupt:
        pass  # a signal before the worker took them over: a clean stop as well


def _paxos_or_demo(settings: Settings, who: str) -> Settings:
    """`settings` if they have Paxos credentials; else pointed at the simulator of a demo
    running on the same DATA_DIR and database; else exit with one line saying what to do."""
    if settings.has_paxos_credentials:
        return settings
    from service.simulator.demo_files import running_demo_paxos

    demo = running_demo_paxos(settings)
    if demo is not None:
        log.info("no Paxos credentials: using the running demo's simulator")
        return demo
    _fail(
        f"configuration error: PAXOS_CLIENT_ID: {who} needs PAXOS_CLIENT_ID and "
        "PAXOS_CLIENT_SECRET (or a demo running on the same DATA_DIR: `make run`)"
    )


def _rfc3339(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """An RFC 3339 time with its offset, or a date alone: midnight UTC of that day."""
    if value is None:
        return None
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            return datetime.fromisoformat(value).replace(tzinfo=UTC)
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an RFC 3339 time such as 2026-01-07T00:00:00Z, nor a date "
            "such as 2026-01-07 (midnight UTC)"
        ) from None
    if moment.tzinfo is None:
        raise click.BadParameter(f"{value!r} has no offset: add Z or +hh:mm")
    return moment


@cli.command()
@click.option("--since", callback=_rfc3339, help="Start of the window (inclusive), RFC 3339.")
@click.option("--until", callback=_rfc3339, help="End of the window (exclusive), RFC 3339.")
@click.option("--type", "types", multiple=True, help="Only this event type (repeatable).")
@click.option("--include-test", is_flag=True, help="Also list test events.")
@click.option(
    "--pending",
    is_flag=True,
    help="Instead: make every unfetched event (pending, failed, not_found) due now.",
)
def backfill(
    since: datetime | None,
    until: datetime | None,
    types: tuple[str, ...],
    include_test: bool,
    pending: bool,
) -> None:
    """List Events over a window and store what is missing; or, with --pending, fetch again
    what is not fetched yet.

    A backfill stopped halfway resumes where it got to when run again with the same window.
    """
    if pending:
        if since or until or types or include_test:
            raise click.UsageError("--pending takes no window: use it alone")
        _make_pending_due()
        return
    if since is None or until is None:
        raise click.UsageError("give --since and --until (or --pending)")
    if until <= since:
        raise click.BadParameter("must be later than --since", param_hint="--until")
    _backfill_window(since, until, types, include_test)


def _make_pending_due() -> None:
    from service.store.fetch_queue import make_due

    async def make_all_due(engine: AsyncEngine) -> int:
        async with engine.begin() as conn:
            return len(await make_due(conn))

    made_due = run_with_engine(database_url(load_settings(check=False)), make_all_due)
    click.echo(f"{made_due} events made due for a new Get Event")


def _backfill_window(
    since: datetime, until: datetime, types: tuple[str, ...], include_test: bool
) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from service.paxos.client import build_client
    from service.reconciling.reconciler import resume_or_start_backfill, run_pass
    from service.store.reconcile import PassState, Window
    from service.web.client import new_http_client

    settings = _paxos_or_demo(load_settings(check=False), "a backfill")
    url = database_url(settings)
    window = Window(since, until, tuple(dict.fromkeys(types)), include_test)
    span = (until - since).total_seconds()

    async def backfill_window(engine: AsyncEngine) -> PassState:
        async with new_http_client(settings.paxos_max_connections) as http:
            client = build_client(settings, engine, http)
            state, resumed = await resume_or_start_backfill(engine, window)
            if resumed:
                click.echo(
                    f"resuming backfill pass {state.pass_id} "
                    f"({state.counts.found} events already listed)",
                    err=True,
                )
            with Progress(
                TextColumn("[bold]backfill"),
                BarColumn(),
                TextColumn("{task.fields[what]}"),
                TimeElapsedColumn(),
                disable=not sys.stderr.isatty(),
                console=None,
            ) as bar:
                task = bar.add_task("backfill", total=span * len(window.listings()), what="")

                def report(state: PassState, reached: str | None) -> None:
                    done_listings = sum(1 for v in state.resume.values() if v.get("done"))
                    within = 0.0
                    if reached:
                        within = (datetime.fromisoformat(reached) - since).total_seconds()
                    c = state.counts
                    bar.update(
                        task,
                        completed=done_listings * span + max(0.0, within),
                        what=f"{c.found} found, {c.missing} missing, {c.known} known",
                    )

                try:
                    await run_pass(engine, client, state, progress=report)
                finally:
                    await client.close()
            return state

    state = run_with_engine(url, backfill_window, pool_size=2)
    c = state.counts
    click.echo(
        f"backfill pass {state.pass_id}: {c.found} events found in {c.pages} pages, "
        f"{c.missing} missing (stored now), {c.known} already known"
    )


@cli.command()
@click.argument("name", default="all")
def rebuild(name: str) -> None:
    """Rebuild a projection (identities, transfers, orchestrations, or all) from the journal,
    without stopping reads; a rebuild that was killed resumes where it stopped."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from service.db.sessions import SessionLost
    from service.projections.rebuild import Progress as RebuildProgress
    from service.projections.rebuild import RebuildBusy
    from service.projections.rebuild import rebuild as rebuild_projection
    from service.store.projections.registry import PROJECTIONS

    if name != "all" and name not in PROJECTIONS:
        _fail(f"no projection named {name!r}; known are {', '.join(PROJECTIONS)}, all")
    names = list(PROJECTIONS) if name == "all" else [name]
    url = database_url(load_settings(check=False))

    async def rebuild_all(engine: AsyncEngine) -> list[RebuildProgress]:
        results = []
        try:
            with Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[phase]}"),
                disable=not sys.stderr.isatty(),
            ) as bar:
                for projection in names:
                    task = bar.add_task(projection, total=None, phase="")

                    async def report(p: RebuildProgress, task: object = task) -> None:
                        bar.update(task, completed=p.done, total=p.total, phase=p.phase)  # type: ignore[arg-type]

                    results.append(
                        await rebuild_projection(engine, PROJECTIONS[projection], progress=report)
                    )
            return results
        except RebuildBusy as exc:
            _fail(str(exc))
        except SessionLost as exc:
            _fail(f"{exc}; run `rebuild` again to resume it")

    for result in run_with_engine(url, rebuild_all, pool_size=2):
        resumed = f" (resumed from {result.resumed_from})" if result.resumed_from else ""
        click.echo(f"{result.projection}: rebuilt from {result.done} journal events{resumed}")


@cli.command()
@click.option("--head", "show_head", is_flag=True, help="Only print the newest seal's hash.")
@click.option(
    "--expect-head",
    metavar="HASH",
    help="A seal hash recorded earlier (from --head): it must still be in the chain.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--anchors",
    metavar="URL",
    help="Anchor sinks to check the chain against (file:///dir, s3://bucket/prefix; "
    "comma-separated); default AUDIT_ANCHOR_URL.",
)
def verify(show_head: bool, expect_head: str | None, as_json: bool, anchors: str | None) -> None:
    """Recompute the audit seal chain from the journal; exit 1 on any problem.

    With --head, print the newest seal hash instead, to record outside the database.
    """
    import msgspec

    from service.audit.report import problem_lines
    from service.store.audit.seals import head
    from service.store.audit.verify import verify as verify_chain

    settings = load_settings(check=False)
    _check_audit_keys(settings)
    url = database_url(settings)
    if expect_head is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", expect_head):
        raise click.BadParameter("must be a 64-digit hex SHA-256", param_hint="--expect-head")
    if anchors is not None:
        from service.store.audit.sinks import sink_for

        for anchor_url in anchors.split(","):
            try:
                sink_for(anchor_url.strip())
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint="--anchors") from None

    async def check(engine: AsyncEngine) -> Any:
        if show_head:
            async with engine.connect() as conn:
                return await head(conn)
        return await verify_chain(
            engine,
            settings,
            expect_head=expect_head,
            anchors=None if anchors is None else [u.strip() for u in anchors.split(",") if u],
        )

    result = run_with_engine(url, check)
    if show_head:
        if result is None:
            _fail("no seals yet: the journal has not been sealed")
        click.echo(result.hash_hex)
        click.echo(
            f"seal {result.seal_id}, positions {result.first_position}..{result.last_position}, "
            f"sealed at {result.sealed_at.isoformat()}",
            err=True,
        )
        return
    if as_json:
        click.echo(msgspec.json.encode(result.as_dict()).decode())
    else:
        for line in problem_lines(result):
            click.echo(line)
        verdict = "ok" if result.ok else f"{len(result.problems)} problems"
        click.echo(
            f"{verdict}: {result.rows_checked} sealed rows checked, sealed through position "
            f"{result.sealed_through}, head {result.head_hash}"
        )
    if not result.ok:
        sys.exit(1)


@cli.command()
@click.option("--since", callback=_rfc3339, required=True, help="Event time from (inclusive).")
@click.option("--until", callback=_rfc3339, required=True, help="Event time to (exclusive).")
@click.option("--identity", "identity_id", help="Only this identity's events.")
@click.option(
    "--format", "form", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True
)
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), help="File.")
def export(
    since: datetime, until: datetime, identity_id: str | None, form: str, output: str | None
) -> None:
    """Export events with their evidence (see docs/audit.md), streamed; to -o or stdout."""
    from service.store.audit.export import ExportQuery
    from service.store.audit.export import export as export_events

    if until <= since:
        raise click.BadParameter("must be later than --since", param_hint="--until")
    settings = load_settings(check=False)
    # Read-only: a standby serves it as well as the primary (DATABASE_READ_URL).
    url = settings.database_read_url or database_url(settings)
    query = ExportQuery(since=since, until=until, identity_id=identity_id, format=form)

    trailers: list[dict[str, Any]] = []

    async def write(engine: AsyncEngine) -> None:
        sink = open(output, "wb") if output else sys.stdout.buffer  # noqa: SIM115, ASYNC230
        try:
            async for chunk in export_events(engine, query, on_trailer=trailers.append):
                sink.write(chunk)
            sink.flush()
        finally:
            if output:
                sink.close()

    try:
        run_with_engine(url, write)
    except BrokenPipeError:
        _closed_pipe()
    except OSError as exc:
        _fail(f"cannot write the export: {exc.strerror or exc}")
    if trailers:
        click.echo(_export_summary(trailers[0], output), err=True)


def _export_summary(trailer: dict[str, Any], output: str | None) -> str:
    """One line for the person at the terminal: what was exported, and how sealed it is."""
    positions = trailer["journal_positions"]
    where = f" to {output}" if output else ""
    line = f"exported {trailer['events']} events{where}"
    if positions["first"] is not None:
        line += (
            f" ({trailer['journal_rows']} journal rows, positions "
            f"{positions['first']}..{positions['last']})"
        )
    last_seal = (trailer["seals"] or {}).get("last")
    if trailer["all_sealed"]:
        line += "; all sealed" + (f" (through seal {last_seal['seal_id']})" if last_seal else "")
    else:
        line += (
            f"; {trailer['unsealed_rows']} rows not sealed yet (export again after the sealer "
            "has run, every SEAL_INTERVAL_S, for a fully sealed export)"
        )
    return line


def _closed_pipe() -> NoReturn:
    """The reader went away (`export | head`): end quietly, as Unix tools do."""
    # Python would complain once more when it flushes stdout on the way out.
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    sys.exit(141)  # 128 + SIGPIPE, what a shell reports for a writer killed by the pipe


@cli.command()
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="The private key file to create (refused if it exists).",
)
def keygen(output: str) -> None:
    """Write a new Ed25519 seal signing key (PEM, mode 0600) for AUDIT_SIGNING_KEY; print its
    public key (PEM, for AUDIT_PUBLIC_KEYS and auditors) and its key id."""
    from service.domain.signing import Signer, private_pem, public_pem

    signer = Signer.generate()
    try:
        # O_EXCL: never overwrite a key (old seals stay verifiable only with their key).
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        _fail(f"{output} exists: refusing to overwrite a signing key")
    except OSError as exc:
        _fail(f"cannot create {output}: {exc.strerror or exc}")
    with os.fdopen(fd, "wb") as sink:
        sink.write(private_pem(signer.private))
        sink.flush()
        os.fsync(sink.fileno())
    click.echo(public_pem(signer.public), nl=False)
    click.echo(f"key id: {signer.key_id}")


@cli.command("verify-export")
@click.argument("file", type=click.File("rb"))
@click.option(
    "--public-key",
    "public_key",
    required=True,
    type=click.Path(dir_okay=False, exists=True),
    help="PEM file of the trusted Ed25519 public keys (one or several).",
)
@click.option(
    "--anchors",
    metavar="URL",
    help="Anchor sinks (file:///dir, s3://bucket/prefix; comma-separated): the covering seals "
    "must match their anchors.",
)
@click.option(
    "--s3-endpoint",
    "s3_endpoint",
    envvar="AUDIT_ANCHOR_S3_ENDPOINT",
    metavar="URL",
    help="The S3 API of s3:// anchors (default AUDIT_ANCHOR_S3_ENDPOINT, else AWS); "
    "credentials from the standard AWS variables.",
)
def verify_export(file: Any, public_key: str, anchors: str | None, s3_endpoint: str | None) -> None:
    """Check a JSON Lines export alone, without the database or service settings: every row's
    hash, the covering seals' hashes, chain and signatures, and with --anchors the link to
    the anchored heads. One line per problem; exit 1 on any (docs/audit.md)."""
    from pathlib import Path

    from service.audit.offline import verify_export as check_export
    from service.audit.offline_anchors import anchor_sinks, read_anchors
    from service.domain.signing import read_public_keys

    try:
        keys = read_public_keys(Path(public_key))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--public-key") from None
    try:
        sinks = None if anchors is None else anchor_sinks(anchors, s3_endpoint=s3_endpoint)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--anchors") from None
    # The anchors are read with the sinks' own reader, the one `verify` uses.
    read = asyncio.run(read_anchors(sinks)) if sinks else None
    report = check_export(file, keys, None if read is None else read.anchors)
    unreadable = [] if read is None else read.unreadable
    for line in unreadable:
        click.echo(line)
    for problem in report.problems:
        click.echo(str(problem))
    count = len(report.problems) + len(unreadable)
    verdict = f"{count} problems" if count else "ok"
    click.echo(f"{verdict}: {report.rows_checked} rows checked, {report.seals_checked} seals")
    if count:
        sys.exit(1)


@cli.command()
@click.option(
    "--test-events-older-than",
    "days",
    type=click.IntRange(min=0),
    required=True,
    metavar="DAYS",
    help="Remove test events whose event time is older than this many days.",
)
def prune(days: int) -> None:
    """Remove old test events, through the audited path (docs/audit.md); nothing else
    is ever deleted."""
    from service.store.audit.prune import prune_test_events

    url = database_url(load_settings(check=False))
    result = run_with_engine(url, lambda engine: prune_test_events(engine, days))
    ids = ", ".join(str(i) for i in result.prune_ids) or "none"
    click.echo(
        f"pruned {result.events} test events ({result.journal_rows} journal rows) with event "
        f"time before {result.cutoff.isoformat()}; prune records: {ids}"
    )
    if result.skipped_unsealed:
        click.echo(
            f"{result.skipped_unsealed} older test events kept: their journal rows are not "
            "sealed yet",
            err=True,
        )
    if result.skipped_unconfirmed:
        click.echo(
            f"{result.skipped_unconfirmed} older events notified as test events kept: Paxos "
            "has not confirmed them as test events (docs/audit.md)",
            err=True,
        )


@cli.command()
@click.option(
    "--grant-to",
    metavar="ROLE",
    help="Then give ROLE, the role the service runs as, what it needs and no more: it owns "
    "no evidence, so append-only holds against its credentials (docs/deploying.md).",
)
def migrate(grant_to: str | None) -> None:
    """Apply database migrations (alembic upgrade head) to DATABASE_URL, as the role that owns
    the tables."""
    from service.db.migrations import NotTheOwner, current_revision, upgrade
    from service.store.privileges import (
        Granted,
        ServiceRoleError,
        check_service_role,
        grant_service_role,
    )

    async def upgrade_to_head(engine: AsyncEngine) -> tuple[str | None, Granted | None]:
        if grant_to is not None:
            async with engine.connect() as conn:  # before anything changes
                await check_service_role(conn, grant_to)
        await upgrade(engine)
        if grant_to is None:
            return await current_revision(engine), None
        async with engine.begin() as conn:
            granted = await grant_service_role(conn, grant_to)
        return await current_revision(engine), granted

    try:
        revision, granted = run_with_engine(
            database_url(load_settings(check=False)), upgrade_to_head
        )
    except (NotTheOwner, ServiceRoleError) as exc:
        _fail(str(exc))
    click.echo(f"database at revision {revision}")
    if granted is not None:
        click.echo(
            f"granted {granted.role} the service's privileges on {len(granted.tables)} tables; "
            f"it owns {', '.join(granted.owned)}; {granted.migration_role} owns the rest"
        )


@cli.command("rotate-webhook-key")
def rotate_webhook_key() -> None:
    """Replace the database key of the webhook OAuth tokens (WEBHOOK_AUTH=oauth): every token
    issued before is refused, and Paxos gets a new one from /oauth/token."""
    from service.intake.oauth import KEY_MAX_AGE_S, rotate_signing_key

    run_with_engine(database_url(load_settings(check=False)), rotate_signing_key)
    click.echo(
        "webhook token key replaced: tokens issued before are refused (by running processes "
        f"within {KEY_MAX_AGE_S:g} s); Paxos gets a new token from /oauth/token"
    )


@cli.command()
@click.option("--type", "types", multiple=True, help="Only this type, or prefix.* (repeatable).")
@click.option(
    "--after",
    type=click.IntRange(min=0),
    help="Start after this journal position (0: from the start); default: from now on.",
)
@click.option("--include-test", is_flag=True, help="Also show test events.")
def tail(types: tuple[str, ...], after: int | None, include_test: bool) -> None:
    """Follow the feed on the terminal: one line per full event (position, time, type, id,
    identity or object), in journal order, gap-safe, until Ctrl-C."""
    from service.api.tail import tail as follow_feed
    from service.store.feed import FeedFilter
    from service.web.problems import InvalidParameter
    from service.web.query import parse_types

    try:
        exact, prefixes = parse_types(list(types))
    except InvalidParameter as exc:
        raise click.BadParameter(exc.detail.partition(": ")[2], param_hint="--type") from None
    where = FeedFilter(types=exact, type_prefixes=prefixes, is_test=None if include_test else False)
    url = database_url(load_settings(check=False))

    def write(text: str) -> None:
        click.echo(text)

    try:
        run_with_engine(
            url,
            lambda engine: follow_feed(engine, url, where, after=after, write=write),
            pool_size=2,
        )
    except KeyboardInterrupt:
        sys.exit(130)


@cli.command()
@click.argument(
    "noun",
    metavar="identity|transfer|orchestration",
    type=click.Choice(["identity", "transfer", "orchestration"]),
)
@click.argument("subject_id", metavar="ID")
@click.option("--as-of", help="Its state from the events that happened by then (RFC 3339).")
@click.option("--known-at", help="Its state from what the store had recorded by then (RFC 3339).")
@click.option(
    "--history", "with_history", is_flag=True, help="Also its history, one line per event."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the API's shapes).")
def show(
    noun: str,
    subject_id: str,
    as_of: str | None,
    known_at: str | None,
    with_history: bool,
    as_json: bool,
) -> None:
    """An identity, transfer or orchestration: its state now, or as of a time and as known at
    a time (docs/projections.md#time-travel), and with --history the state after each event."""
    from service.api.show import bounds
    from service.api.show import show as show_subject
    from service.web.problems import InvalidParameter

    try:
        when = bounds(as_of, known_at)
    except InvalidParameter as exc:
        name = exc.extensions["parameter"]
        hint = "--" + name.replace("_", "-")
        raise click.BadParameter(exc.detail.partition(": ")[2], param_hint=hint) from None
    url = database_url(load_settings(check=False))
    found = run_with_engine(
        url,
        lambda engine: show_subject(
            engine,
            noun,
            subject_id,
            when,
            with_history=with_history,
            as_json=as_json,
            write=click.echo,
        ),
    )
    if not found:
        what = f"no {noun} with id {subject_id}"
        if when is not None:
            what = f"no event of {noun} {subject_id} qualifies (--as-of, --known-at)"
        click.echo(f"paxos-events: {what}", err=True)
        sys.exit(1)


def _register_simulate() -> None:
    from service.simulator.commands import simulate

    cli.add_command(simulate)


_register_simulate()


def main() -> None:
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    # SIGTERM as SIGINT: an exception that unwinds (the exit handlers then stop the embedded
    # PostgreSQL a command started) rather than the default, a death that skips them. `serve`
    # and `worker` take both over while running, and stop cleanly on either.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        cli(prog_name="paxos-events")
    except BrokenPipeError:  # `paxos-events tail | head`: the reader went away
        _closed_pipe()
    except (DBAPIError, PoolTimeout, ConnectionError, TimeoutError) as exc:
        # One line, never a trace (nor the URL: it may carry the password). The driver's own
        # message names host and port at most.
        cause = getattr(exc, "orig", None) or exc
        first = (str(cause).splitlines() or [""])[0]
        _fail(
            f"database unreachable: {type(cause).__name__}: {first} (check DATABASE_URL, and "
            "that PostgreSQL runs and lets this host in)"
        )


def _interrupt(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt
