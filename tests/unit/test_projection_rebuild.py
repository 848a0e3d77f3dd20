"""A resumed rebuild's staging plan, on its own: every block not staged yet is staged once."""

from __future__ import annotations

import itertools
from typing import NamedTuple

from hypothesis import given
from hypothesis import strategies as st

from service.projections.rebuild import _resumed


class _Chunk(NamedTuple):
    lo: int
    hi: int
    events: int


@given(
    blocks=st.integers(0, 60),
    cuts=st.lists(st.integers(0, 60), max_size=20),
    kept=st.lists(st.booleans(), min_size=21, max_size=21),
    batch=st.integers(1, 50),
)
def test_a_resumed_staging_stages_every_block_not_staged_exactly_once(
    blocks: int, cuts: list[int], kept: list[bool], batch: int
) -> None:
    """Two workers finish chunks out of order, so a killed staging may have kept any of
    them: what is left to stage, chunk by chunk, is every other block of the plan, once."""
    bounds = sorted({0, blocks, *(c for c in cuts if c < blocks)})
    chunks = [
        _Chunk(lo, hi, hi - lo)
        for (lo, hi), keep in zip(itertools.pairwise(bounds), kept, strict=False)
        if keep
    ]
    staging = _resumed(horizon=9, filenode=1, blocks=blocks, batch=batch, staged=chunks)
    assert staging.events == sum(c.events for c in chunks)
    handed: list[int] = []
    while (chunk := staging.take()) is not None:
        assert chunk[0] < chunk[1]
        handed.extend(range(*chunk))
    staged = [b for c in chunks for b in range(c.lo, c.hi)]
    assert sorted(handed + staged) == list(range(blocks))
