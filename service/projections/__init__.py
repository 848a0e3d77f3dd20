"""Projections: per-identity, per-transfer and per-orchestration state folded from the journal.

`event.py` parses what a projection needs from a journal `event` row (the ordering key);
`identity.py`, `transfer.py`, `orchestration.py` are the pure folds that specify each
projection; `sql.py` applies a batch of journal rows to the tables with a few set-based
statements that give the same result; `runner.py` reads the journal gap-safely and keeps the
checkpoints; `rebuild.py` rebuilds a projection into shadow tables and swaps them in.
"""
