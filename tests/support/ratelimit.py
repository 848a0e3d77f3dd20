"""Counting in time windows: how a test checks that a rate limit held."""

from __future__ import annotations


def max_in_any_window(times: list[float], window: float = 1.0) -> int:
    """The most events in any half-open window [t, t + window) starting at an event."""
    times = sorted(times)
    best, j = 0, 0
    for i, start in enumerate(times):
        while j < len(times) and times[j] < start + window:
            j += 1
        best = max(best, j - i)
    return best
