"""What the CLI prints for a person at a terminal: whole command descriptions, dates as
midnight UTC, and log lines kept above a progress bar."""

from __future__ import annotations

import io
import re
import sys
from datetime import UTC, datetime

import click
import pytest
import structlog
from click.testing import CliRunner
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from service.cli import _configure_logs, _rfc3339, cli, first_sentence
from service.settings import Settings

pytestmark = pytest.mark.server_independent


def test_the_top_level_help_shows_each_command_s_whole_first_sentence() -> None:
    result = CliRunner().invoke(cli, ["--help"], terminal_width=80, prog_name="paxos-events")
    assert result.exit_code == 0, result.output
    commands = result.output.split("Commands:", 1)[1]
    assert "..." not in commands, commands
    # Wrapping may break a line at any space or hyphen: compare without the white space.
    flat = "".join(commands.split())
    for name, command in cli.commands.items():
        sentence = "".join(first_sentence(command.help or "").split())
        assert name + sentence in flat, (name, commands)
    assert "verifyRecomputetheauditsealchainfromthejournal;exit1onanyproblem." in flat


def test_first_sentence_stops_at_the_first_full_stop_of_the_first_paragraph() -> None:
    assert first_sentence("Do this.  Then that.\n\nMore.") == "Do this."
    assert first_sentence("One line\nacross two (e.g. this).") == "One line across two (e.g. this)."


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("2026-12-04", datetime(2026, 12, 4, tzinfo=UTC)),
        ("2026-12-04T10:00:00Z", datetime(2026, 12, 4, 10, tzinfo=UTC)),
    ],
)
def test_a_date_alone_is_midnight_utc(given: str, expected: datetime) -> None:
    assert _rfc3339(click.Context(cli), click.Option(["--since"]), given) == expected


@pytest.mark.parametrize("given", ["2026-12-04T10:00:00", "2026-12-32", "yesterday"])
def test_a_time_without_offset_or_no_time_is_refused(given: str) -> None:
    with pytest.raises(click.BadParameter):
        _rfc3339(click.Context(cli), click.Option(["--since"]), given)


def test_log_lines_print_above_a_progress_bar_not_into_it() -> None:
    """While a bar shows on a terminal, rich routes sys.stderr above it; the logs must write
    to sys.stderr as it is then, not to the stream that was there when logging began."""
    _configure_logs(Settings(log_level="info"))
    try:
        screen = io.StringIO()
        console = Console(file=screen, force_terminal=True, width=100)
        with Progress(TextColumn("rebuild"), BarColumn(), console=console) as bar:
            assert sys.stderr is not sys.__stderr__  # rich's proxy, above the bar
            bar.add_task("rebuild", total=10, completed=3)
            structlog.get_logger("test").info("a line for the log", n=1)
            sys.stderr.flush()
        shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())
    finally:
        structlog.reset_defaults()
    assert "a line for the log" in shown, shown
    line = next(x for x in shown.splitlines() if "a line for the log" in x)
    assert "rebuild" not in line  # a whole line of its own, not inside the bar's
