"""Phases chained by batch index: batches [start_i, start_i+1) from the i-th dataset, a state
taken on either side of a switch restoring the same continuation, and a state of an earlier
phase refused once a later one has begun. (The run's two mixture phases: test_pipeline.py.)"""

from __future__ import annotations

import grain
import pytest

from phi3_jax.data.phases import PhasedIterDataset


def _phased() -> PhasedIterDataset:
    parents = [grain.MapDataset.range(start, start + 100).to_iter_dataset() for start in (0, 1000)]
    parents.append(grain.MapDataset.range(5000, 5100).to_iter_dataset())
    return PhasedIterDataset(parents, [0, 3, 5])


def _take(iterator, n: int) -> list[int]:
    return [int(next(iterator)) for _ in range(n)]


def test_each_phase_gives_its_batches():
    assert _take(iter(_phased()), 7) == [0, 1, 2, 1000, 1001, 5000, 5001]


@pytest.mark.parametrize("at", [2, 3, 4, 6])
def test_a_state_on_either_side_of_a_switch_restores(at):
    straight = iter(_phased())
    _take(straight, at)
    state = straight.get_state()
    assert state["step"] == at and list(state) == ["step", "phase1", "phase2", "phase3"]
    resumed = iter(_phased())
    resumed.set_state(state)
    assert _take(resumed, 4) == _take(straight, 4)


def test_an_earlier_phase_state_is_refused_once_a_later_one_began():
    early = iter(_phased())
    _take(early, 1)
    late = iter(_phased())
    _take(late, 4)
    with pytest.raises(ValueError, match="is in phase 1, but phase 2 has begun here"):
        late.set_state(early.get_state())


def test_starts_must_rise_from_zero():
    parents = [grain.MapDataset.range(3).to_iter_dataset()] * 2
    for starts in ([1, 3], [0, 0], [0, 3, 2]):
        with pytest.raises(ValueError, match="must rise from 0"):
            PhasedIterDataset(parents, starts)
