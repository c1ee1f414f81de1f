"""Phi-3's two training phases as one grain dataset: batches 0..start-1 from phase 1's pipeline,
the rest from phase 2's, so the switch happens at the same batch whatever the number of workers;
its state (JSON) is both phases' and restores either side of the switch."""

from __future__ import annotations

from typing import Any

import grain
import numpy as np


class PhasedIterDataset(grain.IterDataset):
    """Batches 0..start-1 from `phase1`, then `phase2`; each keeps its own workers and state."""

    def __init__(self, phase1: grain.IterDataset, phase2: grain.IterDataset, start: int):
        super().__init__([phase1, phase2])
        self._start = start

    def __iter__(self) -> grain.DatasetIterator:
        phase1, phase2 = self.parents
        return _PhasedIterator(iter(phase1), iter(phase2), self._start)

    def __str__(self) -> str:
        return f"PhasedIterDataset(phase2_start_step={self._start})"


class _PhasedIterator(grain.DatasetIterator):
    def __init__(self, phase1: grain.DatasetIterator, phase2: grain.DatasetIterator, start: int):
        super().__init__([phase1, phase2])
        self._phase1, self._phase2 = phase1, phase2
        self._start = start
        self._step = 0
        # Phase 1's state when it ended (None while it runs): kept for its counters.
        self._phase1_final: dict[str, Any] | None = None

    def _switch(self) -> None:
        self._phase1_final = self._phase1.get_state()
        # Its workers are no longer needed.
        self._phase1.close()

    def __next__(self) -> dict[str, np.ndarray]:
        if self._phase1_final is None and self._step >= self._start:
            self._switch()
        active = self._phase1 if self._phase1_final is None else self._phase2
        batch = next(active)
        self._step += 1
        return batch

    def start_prefetch(self) -> None:
        # Only the running phase: starting the other would spawn idle workers.
        (self._phase1 if self._phase1_final is None else self._phase2).start_prefetch()

    def get_state(self) -> dict[str, Any]:
        in_phase2 = self._phase1_final is not None
        return {
            "step": self._step,
            "phase1": self._phase1_final if in_phase2 else self._phase1.get_state(),
            "phase2": self._phase2.get_state() if in_phase2 else None,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self._step = state["step"]
        if state["phase2"] is None:
            self._phase1_final = None
            self._phase1.set_state(state["phase1"])
        else:
            self._phase1_final = state["phase1"]
            self._phase1.close()
            self._phase2.set_state(state["phase2"])

    def __str__(self) -> str:
        return f"PhasedIterator(step={self._step}, phase2_start_step={self._start})"
