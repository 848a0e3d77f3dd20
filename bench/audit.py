"""Audit trail benchmark: sealing + signing + anchoring vs sealing alone, and verify with
anchors vs without, over the same 2,000,000-row journal, in one run.

    .venv/bin/python -m bench.audit            # loads (minutes), then measures
    .venv/bin/python -m bench.audit --reuse    # keep the loaded database from a last run
    .venv/bin/python -m bench.audit --events 500000

The journal is bench.export's (1,000,000 events, each with its notification and full event).
Each round seals the whole journal from scratch (the seals truncated, triggers off) twice:

- today's sealing: `seal_pending` without a key, no anchors;
- sealing + signing + anchoring: each 10,000-row seal signed (Ed25519) and, right after it,
  the head anchored to a file sink (`Anchorer.anchor_once`, interval 0: one anchor per seal,
  200 files each created exclusively and fsynced with its directory; the worst case: the
  service anchors at most once a minute);

then verifies: today's `verify` of the unsigned chain, and `verify` of the signed chain with
its signatures and the 200 anchors read back from the sink. Two rounds, best of each.
Targets: each ratio <= 1.2. Results go to stdout and bench/results/audit.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench import export
from bench.database import kept_or_recreated, load_events, server_url
from service.audit.anchoring import Anchorer
from service.db.engine import create_engine
from service.domain.signing import Signer
from service.store.audit.seals import horizon, seal_next, seal_pending
from service.store.audit.sinks import sink_for
from service.store.audit.verify import verify

DATABASE = "bench_audit"
ROOT = Path(__file__).resolve().parent.parent
TARGET_RATIO = 1.2
ROUNDS = 2


async def unseal(engine: AsyncEngine) -> None:
    """Back to an unsealed journal: seals and anchors' records gone (triggers off)."""
    async with engine.begin() as conn:
        await conn.execute(text("SET LOCAL session_replication_role = replica"))
        await conn.execute(text("TRUNCATE seals, audit_anchors, audit_anchor_sinks"))
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("VACUUM ANALYZE seals"))


async def seal_alone(engine: AsyncEngine) -> float:
    await unseal(engine)
    started = time.perf_counter()
    while await seal_pending(engine):
        pass
    return time.perf_counter() - started


async def seal_sign_anchor(
    engine: AsyncEngine, http: httpx.AsyncClient, signer: Signer, url: str
) -> tuple[float, int]:
    await unseal(engine)
    anchorer = Anchorer(engine, http, [sink_for(url)], interval_s=0)
    anchors = 0
    started = time.perf_counter()
    through = await horizon(engine)
    assert through is not None
    while await seal_next(engine, through, signer=signer) is not None:
        anchors += len(await anchorer.anchor_once())
    return time.perf_counter() - started, anchors


async def timed_verify(engine: AsyncEngine, **kwargs: object) -> tuple[float, int, bool]:
    started = time.perf_counter()
    report = await verify(engine, 3600, record=False, **kwargs)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - started
    if not report.ok:
        raise SystemExit(f"verify found problems: {report.problems[:3]}")
    return elapsed, report.rows_checked, report.ok


async def main(reuse: bool, server: str, events: int) -> None:
    url, exists = await kept_or_recreated(server, DATABASE, reuse)
    engine = create_engine(url, pool_size=2)
    signer = Signer.generate()
    keys = {signer.key_id: signer.public}
    figures: dict[str, list[float]] = {k: [] for k in ("seal", "seal_sign_anchor", "v0", "v1")}
    rows = anchors = 0
    try:
        if not exists:
            print(f"loading {events:,} events ({2 * events:,} journal rows) ...", flush=True)
            await load_events(url, export._LOAD, events, export.CHUNK)
        async with httpx.AsyncClient() as http:
            for n in range(ROUNDS):
                with tempfile.TemporaryDirectory(prefix="anchors-") as directory:
                    sink = f"file://{directory}"
                    figures["seal"].append(await seal_alone(engine))
                    elapsed, rows, _ = await timed_verify(engine, anchors=[])
                    figures["v0"].append(elapsed)
                    elapsed, anchors = await seal_sign_anchor(engine, http, signer, sink)
                    figures["seal_sign_anchor"].append(elapsed)
                    elapsed, _, _ = await timed_verify(engine, anchors=[sink], keys=keys)
                    figures["v1"].append(elapsed)
                print(
                    f"  round {n + 1}: seal {figures['seal'][-1]:.1f} s, seal+sign+anchor "
                    f"{figures['seal_sign_anchor'][-1]:.1f} s, verify {figures['v0'][-1]:.1f} s, "
                    f"verify+signatures+anchors {figures['v1'][-1]:.1f} s",
                    flush=True,
                )
    finally:
        await engine.dispose()
    best = {k: min(v) for k, v in figures.items()}
    seal_ratio = best["seal_sign_anchor"] / best["seal"]
    verify_ratio = best["v1"] / best["v0"]
    result = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "load_average_1m": os.getloadavg()[0],
        "journal_rows": rows,
        "anchors_written": anchors,
        "rounds": figures,
        "seal_s": round(best["seal"], 2),
        "seal_sign_anchor_s": round(best["seal_sign_anchor"], 2),
        "seal_ratio": round(seal_ratio, 3),
        "verify_s": round(best["v0"], 2),
        "verify_signatures_anchors_s": round(best["v1"], 2),
        "verify_ratio": round(verify_ratio, 3),
        "target_ratio": TARGET_RATIO,
        "ok": seal_ratio <= TARGET_RATIO and verify_ratio <= TARGET_RATIO,
    }
    out = ROOT / "bench" / "results" / "audit.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'sealing alone':<40} {rows:,} rows in {best['seal']:.1f} s")
    print(
        f"{'sealing + signing + anchoring (file)':<40} {best['seal_sign_anchor']:.1f} s, "
        f"{anchors} anchors: {seal_ratio:.2f}x (target <= {TARGET_RATIO})"
    )
    print(f"{'verify':<40} {best['v0']:.1f} s")
    print(
        f"{'verify + signatures + anchors':<40} {best['v1']:.1f} s: {verify_ratio:.2f}x "
        f"(target <= {TARGET_RATIO})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reuse", action="store_true", help="keep the loaded database")
    parser.add_argument("--events", type=int, default=export.EVENTS, help="events to load")
    args = parser.parse_args()
    asyncio.run(main(args.reuse, server_url(), args.events))
