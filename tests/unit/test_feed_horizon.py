"""The feed's horizon bookkeeping: a sample is final once none of its writers still writes."""

from __future__ import annotations

from service.store.feed import Horizon, Sample


def sample(last: int, *writers: str) -> Sample:
    return Sample(last, frozenset(writers))


def test_a_sample_without_writers_is_final_at_once() -> None:
    horizon = Horizon()
    assert horizon.observe(sample(7)) == 7
    assert horizon.settled


def test_a_sample_waits_until_every_writer_it_saw_has_ended() -> None:
    horizon = Horizon()
    assert horizon.observe(sample(10, "3/1", "4/9")) == 0
    # 3/1 still writes (4/9 ended, 5/2 started later): 10 is not final yet.
    assert horizon.observe(sample(12, "3/1", "5/2")) == 0
    # 3/1 ended: 10 is final; 12 waits on 5/2.
    assert horizon.observe(sample(15, "5/2", "6/1")) == 10
    assert not horizon.settled
    assert horizon.observe(sample(15)) == 15
    assert horizon.settled


def test_the_horizon_never_moves_back() -> None:
    horizon = Horizon()
    horizon.observe(sample(20))
    assert horizon.observe(sample(20, "1/1")) == 20
    assert horizon.pending == []  # says nothing new


def test_pending_samples_are_bounded_and_dominated_ones_dropped() -> None:
    horizon = Horizon(max_pending=3)
    # A long writer (9/9) is in every sample, with a new short one each time.
    for n in range(10):
        horizon.observe(sample(100 + n, "9/9", f"1/{n}"))
    assert len(horizon.pending) <= 3
    # A sample seeing only the long writer makes every earlier one redundant.
    horizon.observe(sample(200, "9/9"))
    assert [s.last for s in horizon.pending] == [200]
    assert horizon.final == 0
    assert horizon.observe(sample(201, "2/2")) == 200
