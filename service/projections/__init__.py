"""Projections: per-identity, per-transfer and per-orchestration state folded from the journal.

The pure folds that specify each projection are in `service.domain` (`identity.py`,
`transfer.py`, `orchestration.py`); their set-based SQL, the checkpoints, the rebuild's tables
and the reads are in `service.store.projections`. Here: `runner.py` keeps every projection
caught up, `rebuild.py` rebuilds one into shadow tables and swaps them in, and `jobs.py` runs
a rebuild as a job.
"""
