"""The projections' SQL: the registry of projections and their tables, the set-based fold,
checkpoints and lag, the rebuild's shadow and staging tables, and the reads.

`registry.py` names the projections and their tables; `fold.py` builds the statements that
apply journal rows to them (the pure folds in `service.domain` specify what they compute);
`checkpoints.py` applies a batch under its checkpoint's lock and measures the lag;
`rebuild.py` holds a rebuild's DDL and statements; `read.py` reads the tables for the API
and the console.
"""
