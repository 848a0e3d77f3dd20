"""A verification report as a terminal shows it."""

from __future__ import annotations

from collections.abc import Iterator

from service.store.audit.verify import VerifyReport


def problem_lines(report: VerifyReport) -> Iterator[str]:
    """The report for a terminal, one line per problem."""
    for p in report.problems:
        where = f" position {p.position}" if p.position is not None else ""
        where += f" seal {p.seal_id}" if p.seal_id is not None and p.position is None else ""
        yield f"{p.kind}{where}: {p.detail}"
