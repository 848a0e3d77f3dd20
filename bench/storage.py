"""Storage benchmark: bytes per event before and after migration 0018, and what it costs.

    .venv/bin/python -m bench.storage                      # 1,000,000 events (~25 min quiet)
    .venv/bin/python -m bench.storage --events 200000 --runs 20   # a quick try
    .venv/bin/python -m bench.storage --baseline DIR       # "before" code from another checkout

Migration 0018 stores each full event once: `events.detail` goes (`/events`, the feed and push
read the journal's body) and the journal's `doc` keeps only what the folds read. One run, two
databases loaded alike with bench.growth's events (the same mix, bodies of about 960 bytes,
every index kept up to date as a live store's are, so their pages are as full as in service):

1. **before**: a database at 0017 (the schema before), measured by the code of the commit
   before 0018 (a `git worktree` of it, or `--baseline DIR`) in a process of its own:
   `/events` p50 and p95 for every filter case (bench.query), the rebuild of `identities`
   (events/s), a feed catch-up of the newest 1,000,000 events through a real `serve`, and the
   export CLI (events/s, peak RSS); then its bytes per event (bench.growth's `sizes`);
2. **after**: a database at head, the same figures by this checkout's code;
3. the migration: the first database migrated to head, timed (both tables are rewritten under
   an exclusive lock: the README's "Deploying" gives its time per million events), and its
   bytes per event then (indexes freshly built, so smaller than a live store keeps them).

The comparison prints each figure before and after and their ratio; results go to
bench/results/storage.json. Targets (issue #20): total bytes per event at least 40% less; no
query p95, rebuild rate, feed rate or export rate worse by more than 10% (the noise of one run
on two cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from bench import growth
from bench.database import drop, recreate, server_url
from service.db.engine import create_engine, plain_url
from service.db.migrations import upgrade

DATABASE = "bench_storage"
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "storage.json"
MIGRATION = "migrations/versions/20261205_0018_events_stored_once.py"
BEFORE_REVISION = "0017"
TARGET_CUT = 0.40
SLOWER = 1.1  # a time at most this much longer (a rate at least 1 / this)

# Run in the checkout under test (its `bench` and `service` first on the path): the figures
# its code gives on the database as it is. Only functions both checkouts have.
_MEASURE = """
import asyncio, json, sys
from dataclasses import asdict
from bench import growth, query

async def main(url, events, runs, out):
    figures = {}
    print("== queries", flush=True)
    figures["queries"] = [asdict(r) for r in await query.run(url, runs, show_plans=False)]
    print("== rebuild", flush=True)
    figures["rebuild"] = await growth.timed_rebuild(url)
    print("== feed", flush=True)
    figures["feed"] = await growth.feed_catch_up(url, events)
    print("== export", flush=True)
    figures["export"] = await asyncio.to_thread(growth.timed_export, url, events)
    with open(out, "w") as f:
        json.dump(figures, f)

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))
"""


def measure_with(checkout: Path, url: str, events: int, runs: int) -> dict[str, Any]:
    """The figures the code of `checkout` gives, in a process of its own."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        env = {**os.environ, "PYTHONPATH": str(checkout)}
        subprocess.run(  # noqa: S603 - our own code
            [sys.executable, "-c", _MEASURE, url, str(events), str(runs), out.name],
            cwd=checkout,
            env=env,
            check=True,
        )
        figures: dict[str, Any] = json.loads(Path(out.name).read_text())
        return figures


def _git(*args: str) -> str:
    done = subprocess.run(  # noqa: S603 - our own arguments
        ["git", "-C", str(ROOT), *args],  # noqa: S607 - git from PATH
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


@contextmanager
def baseline_checkout(given: Path | None) -> Iterator[tuple[Path, str]]:
    """The checkout whose code measures "before": `given`, or a worktree of the commit before
    the one that added migration 0018 (removed afterwards)."""
    if given is not None:
        yield given, str(given)
        return
    added = _git("log", "--diff-filter=A", "--format=%H", "--", MIGRATION).splitlines()
    if not added:
        raise SystemExit(f"{MIGRATION} is not committed: give --baseline DIR")
    commit = _git("rev-parse", f"{added[-1]}^")
    place = Path(tempfile.mkdtemp(prefix="bench-storage-baseline-"))
    _git("worktree", "add", "--detach", str(place), commit)
    try:
        yield place, commit[:12]
    finally:
        _git("worktree", "remove", "--force", str(place))


async def migrate(url: str, revision: str) -> float:
    engine = create_engine(url, pool_size=1)
    try:
        started = time.perf_counter()
        await upgrade(engine, revision)
        return time.perf_counter() - started
    finally:
        await engine.dispose()


async def vacuum(url: str) -> float:
    conn = await asyncpg.connect(plain_url(url))
    try:
        started = time.perf_counter()
        await conn.execute("VACUUM ANALYZE")
        return time.perf_counter() - started
    finally:
        await conn.close()


async def row_counts(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(plain_url(url))
    try:
        return {
            table: int(await conn.fetchval(f"SELECT count(*) FROM {table}"))  # noqa: S608
            for table in ("events", "journal")
        }
    finally:
        await conn.close()


def p95s(figures: dict[str, Any]) -> dict[str, float]:
    """Each case's worse p95 of its first and deep page."""
    return {
        r["case"]: max(p for p in (r["first_p95_ms"], r["deep_p95_ms"]) if p is not None)
        for r in figures["queries"]
    }


def compare(before: dict[str, Any], after: dict[str, Any]) -> tuple[list[str], bool]:
    """The printed comparison, a line per figure, and whether every target was met."""
    lines, ok = [], True

    def line(name: str, was: float, now: float, unit: str, good: bool) -> None:
        nonlocal ok
        ok = ok and good
        ratio = now / was if was else float("nan")
        mark = "ok" if good else "MISSED"
        lines.append(f"  {name:<44} {was:>10,.1f} -> {now:>10,.1f} {unit:<9} {ratio:5.2f}x  {mark}")

    b, a = before["sizes"], after["sizes"]
    line(
        "bytes per event, total",
        b["total_per_event"],
        a["total_per_event"],
        "B",
        a["total_per_event"] <= (1 - TARGET_CUT) * b["total_per_event"],
    )
    for table in b["tables"]:
        line(
            f"  {table}",
            b["tables"][table]["per_event"]["total"],
            a["tables"][table]["per_event"]["total"],
            "B",
            True,
        )
    was, now = p95s(before), p95s(after)
    for case in was:
        line(f"/events p95: {case}", was[case], now[case], "ms", now[case] <= SLOWER * was[case])
    for name in ("rebuild", "feed", "export"):
        rate_was = before[name]["events_per_s"]
        rate_now = after[name]["events_per_s"]
        line(f"{name} rate", rate_was, rate_now, "events/s", rate_now * SLOWER >= rate_was)
    line(
        "export peak RSS",
        before["export"]["peak_rss_mb"],
        after["export"]["peak_rss_mb"],
        "MB",
        True,
    )
    return lines, ok


async def phase(
    admin: str, name: str, revision: str, checkout: Path, events: int, runs: int
) -> tuple[str, dict[str, Any]]:
    """A database at `revision` loaded with `events` events; the figures `checkout`'s code
    gives on it, then its bytes per event (the projections as the rebuild left them)."""
    url = await recreate(admin, name, revision)
    print(f"== {name}: loading {events:,} events at revision {revision}", flush=True)
    figures: dict[str, Any] = {"load": await growth.grow(url, 1, events)}
    figures["rows"] = await row_counts(url)
    print(f"== {name}: the figures by {checkout}", flush=True)
    figures |= await asyncio.to_thread(measure_with, checkout, url, events, runs)
    figures["sizes"] = await growth.sizes(url, events)
    return url, figures


async def main(admin: str, events: int, runs: int, baseline: Path | None, keep: bool) -> None:
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "events": events,
        "runs": runs,
        "cpus": os.cpu_count(),
    }
    before_db, after_db = f"{DATABASE}_before", f"{DATABASE}_after"
    try:
        with baseline_checkout(baseline) as (checkout, name):
            report["baseline"] = name
            url, report["before"] = await phase(
                admin, before_db, BEFORE_REVISION, checkout, events, runs
            )
        _, report["after"] = await phase(admin, after_db, "head", ROOT, events, runs)
        print(f"== {before_db}: migration 0018", flush=True)
        load = growth.load_now()
        seconds = await migrate(url, "head")
        vacuum_s = await vacuum(url)
        millions = report["before"]["rows"]["events"] / 1e6
        report["migration"] = {
            "seconds": round(seconds, 1),
            "seconds_per_million_events": round(seconds / millions, 1),
            "vacuum_analyze_s": round(vacuum_s, 1),
            "load_1m": [load, growth.load_now()],
            "sizes": await growth.sizes(url, events),
        }
    finally:
        if not keep:
            for name in (before_db, after_db):
                await drop(admin, name)
    lines, ok = compare(report["before"], report["after"])
    report["targets_met"] = ok
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    migration = report["migration"]
    print(
        f"\n== {events:,} events ({report['before']['rows']['journal']:,} journal rows), "
        f"one run, before = {report['baseline']}\n"
        f"migration 0018: {migration['seconds']} s ({migration['seconds_per_million_events']} s "
        f"per million events), then VACUUM ANALYZE {migration['vacuum_analyze_s']} s; "
        f"{migration['sizes']['total_per_event']:,} bytes per event just after it"
    )
    print("\n".join(lines))
    print(f"\n{'every target met' if ok else 'a target was missed'}; {RESULTS}")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=50, help="timed calls per query case")
    parser.add_argument("--baseline", type=Path, help="the checkout whose code is 'before'")
    parser.add_argument("--keep", action="store_true", help=f"keep database {DATABASE}")
    args = parser.parse_args()
    admin = server_url()  # outside the event loop: the embedded server's start runs its own
    asyncio.run(main(admin, args.events, args.runs, args.baseline, args.keep))


if __name__ == "__main__":
    cli()
