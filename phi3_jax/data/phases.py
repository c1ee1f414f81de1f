"""The phases of a run as one grain dataset: batches start_i..start_{i+1}-1 from the i-th pipeline
(Phi-3's two mixture phases; more where `train.context_schedule` changes the row length, see
`long_context.phases`), so each switch happens at the same batch whatever the number of workers;
its state (JSON) is every phase's and restores on either side of a switch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grain


class PhasedIterDataset(grain.IterDataset):
    """Batches [start_i, start_{i+1}) from parent i; each parent keeps its own workers and state.

    The state is {"step", "phase1", "phase2", ...}: a finished phase's final state (kept for its
    counters), the running one's, and None for those not begun (with two phases, the format of
    the two-phase dataset this generalises, so older checkpoints restore).
    """

    def __init__(self, parents: Sequence[grain.IterDataset], starts: Sequence[int]):
        if list(starts) != sorted(set(starts)) or starts[0] != 0:
            raise ValueError(f"phase starts {list(starts)} must rise from 0")
        super().__init__(list(parents))
        self._starts = tuple(starts)

    def __iter__(self) -> grain.DatasetIterator:
        return _PhasedIterator([iter(p) for p in self.parents], self._starts)

    def __str__(self) -> str:
        return f"PhasedIterDataset(starts={list(self._starts)})"


def _key(index: int) -> str:
    return f"phase{index + 1}"


class _PhasedIterator(grain.DatasetIterator):
    def __init__(self, parents: list[grain.DatasetIterator], starts: tuple[int, ...]):
        super().__init__(parents)
        self._iterators = parents
        self._starts = starts
        self._step = 0
        self._active = 0
        # The final states of the phases before the active one.
        self._finished: list[dict[str, Any]] = []

    def _phase_of(self, step: int) -> int:
        return sum(1 for start in self._starts if start <= step) - 1

    def __next__(self) -> Any:
        while self._active < self._phase_of(self._step):
            # Its workers are no longer needed.
            self._finished.append(self._iterators[self._active].get_state())
            self._iterators[self._active].close()
            self._active += 1
        batch = next(self._iterators[self._active])
        self._step += 1
        return batch

    def start_prefetch(self) -> None:
        # Only the running phase: starting the others would spawn idle workers.
        self._iterators[self._active].start_prefetch()

    def get_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"step": self._step}
        for i, iterator in enumerate(self._iterators):
            if i < self._active:
                state[_key(i)] = self._finished[i]
            else:
                state[_key(i)] = iterator.get_state() if i == self._active else None
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        self._step = state["step"]
        begun = [i for i in range(len(self._iterators)) if state[_key(i)] is not None]
        active = begun[-1] if begun else 0
        if active < self._active:
            raise ValueError(
                f"iterator state at step {self._step} is in phase {active + 1}, but phase "
                f"{self._active + 1} has begun here (its predecessors' workers are closed)"
            )
        for i in range(self._active, active):
            self._iterators[i].close()
        self._finished = [state[_key(i)] for i in range(active)]
        self._active = active
        self._iterators[active].set_state(state[_key(active)])

    def __str__(self) -> str:
        return f"PhasedIterator(step={self._step}, starts={list(self._starts)})"
