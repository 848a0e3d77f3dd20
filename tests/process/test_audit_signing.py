"""Signed seals as processes: `paxos-events keygen`, a bad AUDIT_SIGNING_KEY stopping the start
with one line, and `paxos-events verify-export` and docs/verify_export.py checking a signed
export alone, where any one byte changed in any journal row is found and its line named."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine

from service.domain.anchor import Anchor, encode
from service.domain.signing import Signer, parse_public_keys, public_pem, read_signer
from service.store.audit.export import ExportQuery, export
from service.store.audit.seals import SealInfo, seal_pending
from tests.support.audit import WINDOW, add_events
from tests.support.paths import ROOT
from tests.support.processes import API_KEY, clean_env

SCRIPT = ROOT / "docs" / "verify_export.py"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own CLI and script
        [sys.executable, *args],
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_keygen_writes_a_private_key_0600_and_prints_its_public_key_and_id(
    tmp_path: Path,
) -> None:
    key = tmp_path / "seal.pem"
    done = run("-m", "service", "keygen", "-o", str(key))
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    signer = read_signer(key)
    assert public_pem(signer.public) in done.stdout
    assert f"key id: {signer.key_id}" in done.stdout
    assert list(parse_public_keys(done.stdout.encode())) == [signer.key_id]
    assert len(signer.key_id) == 64

    before = key.read_bytes()
    again = run("-m", "service", "keygen", "-o", str(key))
    assert again.returncode == 2
    assert "refusing to overwrite" in again.stderr
    assert key.read_bytes() == before


@pytest.mark.slow
def test_a_bad_signing_key_stops_the_start_with_one_line(database_url: str, tmp_path: Path) -> None:
    (tmp_path / "not-a-key.pem").write_text("hello\n")
    for path in (tmp_path / "missing.pem", tmp_path / "not-a-key.pem"):
        env = clean_env(
            DATABASE_URL=database_url, WEBHOOK_API_KEYS=API_KEY, AUDIT_SIGNING_KEY=str(path)
        )
        for command in (["serve"], ["verify"]):
            done = run("-m", "service", *command, env=env)
            assert done.returncode == 2, (command, done.stderr)
            lines = done.stderr.strip().splitlines()
            assert len(lines) == 1, done.stderr
            assert lines[0].startswith("paxos-events: configuration error: AUDIT_SIGNING_KEY:")
            assert str(path) in lines[0]


ROW_KINDS = ("notification", "event", "test_confirmation")


def _spans(line: bytes) -> list[tuple[int, int]]:
    """The byte ranges of a record line that the seals protect: the event_id's value and each
    journal row's object."""
    record = msgspec.json.decode(line)
    spans = []
    event_id = msgspec.json.encode(record["event_id"])
    start = line.index(b'"event_id":' + event_id) + len(b'"event_id":')
    spans.append((start, start + len(event_id)))
    for kind in ROW_KINDS:
        if record[kind] is None:
            continue
        encoded = msgspec.json.encode(record[kind])
        start = line.index(f'"{kind}":'.encode() + encoded) + len(kind) + 3
        spans.append((start, start + len(encoded)))
    return spans


@pytest.mark.slow
async def test_any_byte_changed_in_any_row_of_a_1000_row_export_is_found_and_named(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    signer = Signer.generate()
    await add_events(engine, 500)  # 1,000 journal rows
    assert await seal_pending(engine, max_rows=300, signer=signer)
    query = ExportQuery(
        since=datetime.fromisoformat(WINDOW["since"].replace("Z", "+00:00")),
        until=datetime.fromisoformat(WINDOW["until"].replace("Z", "+00:00")),
    )
    original = b"".join([chunk async for chunk in export(engine, query)]).splitlines(keepends=True)
    assert len(original) == 501
    keys = tmp_path / "keys.pem"
    keys.write_text(public_pem(signer.public))
    exported = tmp_path / "export.jsonl"
    exported.write_bytes(b"".join(original))
    spans = [_spans(line) for line in original[:-1]]

    # The untouched export verifies, by the command and by the standalone script.
    for args in (
        ["-m", "service", "verify-export", str(exported), "--public-key", str(keys)],
        [str(SCRIPT), str(exported), "--public-key", str(keys)],
    ):
        done = run(*args)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "1000 rows" in done.stdout

    @settings(
        max_examples=int(os.environ.get("VERIFY_EXPORT_EXAMPLES", "25")),
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(st.data())
    def one_byte_changed(data: st.DataObject) -> None:
        index = data.draw(st.integers(0, len(spans) - 1), label="event line")
        start, end = data.draw(st.sampled_from(spans[index]), label="protected field")
        offset = data.draw(st.integers(start, end - 1), label="byte")
        line = bytearray(original[index])
        line[offset] = data.draw(
            st.integers(0, 255).filter(lambda b: b != line[offset] and b != 0x0A), label="new"
        )
        changed = [*original[:index], bytes(line), *original[index + 1 :]]
        exported.write_bytes(b"".join(changed))
        for args in (
            ["-m", "service", "verify-export", str(exported), "--public-key", str(keys)],
            [str(SCRIPT), str(exported), "--public-key", str(keys)],
        ):
            done = run(*args)
            assert done.returncode == 1, (args[1], done.stdout, done.stderr)
            assert f"line {index + 1}" in done.stdout, (args[1], done.stdout)

    one_byte_changed()


@pytest.mark.slow
def test_verify_export_needs_no_database_or_settings(tmp_path: Path) -> None:
    """A cut-short export (no trailer) fails by itself, with nothing configured."""
    signer = Signer.generate()
    keys = tmp_path / "keys.pem"
    keys.write_text(public_pem(signer.public))
    exported = tmp_path / "export.jsonl"
    exported.write_text("")
    env = clean_env(DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    for args in (
        ["-m", "service", "verify-export", str(exported), "--public-key", str(keys)],
        [str(SCRIPT), str(exported), "--public-key", str(keys)],
    ):
        done = run(*args, env=env)
        assert done.returncode == 1, done.stderr
        assert "no trailer" in done.stdout


@pytest.mark.slow
async def test_verify_export_against_anchors(engine: AsyncEngine, tmp_path: Path) -> None:
    """The covering seals must match their anchors (file:///dir of anchor documents), and at
    least one must be anchored."""
    signer = Signer.generate()
    await add_events(engine, 5)
    sealed = await seal_pending(engine, max_rows=4, signer=signer)
    assert len(sealed) == 3
    query = ExportQuery(
        since=datetime.fromisoformat(WINDOW["since"].replace("Z", "+00:00")),
        until=datetime.fromisoformat(WINDOW["until"].replace("Z", "+00:00")),
    )
    exported = tmp_path / "export.jsonl"
    exported.write_bytes(b"".join([chunk async for chunk in export(engine, query)]))
    keys = tmp_path / "keys.pem"
    keys.write_text(public_pem(signer.public))
    anchors = tmp_path / "anchors"
    anchors.mkdir()

    def anchor(seal: SealInfo, seal_hash: str) -> None:
        document = Anchor(
            seal_id=seal.seal_id,
            first_position=seal.first_position,
            last_position=seal.last_position,
            seal_hash=seal_hash,
            signature=seal.signature_hex,
            key_id=seal.key_id,
            anchored_at=datetime.now(UTC),
        )
        (anchors / document.name).write_bytes(encode(document))

    def both() -> list[subprocess.CompletedProcess[str]]:
        common = [str(exported), "--public-key", str(keys), "--anchors", anchors.as_uri()]
        return [
            run("-m", "service", "verify-export", *common),
            run(str(SCRIPT), *common),
        ]

    for done in both():  # nothing anchored yet
        assert done.returncode == 1, done.stdout + done.stderr
        assert "not_anchored" in done.stdout
    anchor(sealed[2], sealed[2].hash_hex)
    for done in both():
        assert done.returncode == 0, done.stdout + done.stderr
    anchor(sealed[1], "00" * 32)  # an anchor the chain no longer matches
    for done in both():
        assert done.returncode == 1, done.stdout + done.stderr
        assert "anchor_mismatch" in done.stdout and "seal 2" in done.stdout
