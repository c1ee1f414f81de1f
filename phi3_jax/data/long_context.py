"""Long-context data: whole long documents mixed with short rows, and a schedule of context lengths.

Context extension (LongRoPE, the Phi-3 report's "mixed context window") trains one run on two kinds
of rows of the same length (one compiled shape):

- long rows: documents of at least `min_tokens` ids, kept whole up to the row length (a longer one
  is cut at the row length, its pieces packed like documents), so their positions reach past the
  original context and they train the long rotary factors;
- short rows: the other documents, cut at the original context (`short_len`) and packed, so every
  document in them stays within it and trains the short factors.

Rows come from the two buckets by weight (`long_fraction` of them long, grain's deterministic
mixing). Which factors a token uses is the model's choice, per document (`model/rope.py`): a
document whose last position is past the original context uses the long factors, any other the
short ones, whichever row it is packed into.

A progressive schedule (`train.context_schedule`: (first step, row length) pairs, e.g. 4K → 32K →
128K) and the two mixture phases cut the run into segments; each segment is its own pipeline
(`phases.PhasedIterDataset`), its row length, mixture and seed fixed, and the batch order stays a
function of the iterator's state, so a resumed run is bitwise the uninterrupted one. A new segment
reads its sources from their start (in the shard order of its own seed): documents of an earlier
segment come again, as in a new epoch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import grain
import numpy as np

from phi3_jax.errors import BadInputError


@dataclasses.dataclass(frozen=True)
class Segment:
    """Steps [start, next segment's start) of a run: one mixture, one row length, one seed."""

    start: int
    weights: Mapping[str, float]
    seq_len: int
    seed: int


def context_length_at(schedule: Sequence[Sequence[int]], seq_len: int, step: int) -> int:
    """The row length of train step `step` (counted from 0): the schedule's last entry whose first
    step is at most `step`; `seq_len` without a schedule."""
    length = seq_len
    for first, entry_len in schedule:
        if first <= step:
            length = entry_len
    return length


def tokens_through(schedule: Sequence[Sequence[int]], seq_len: int, rows: int, steps: int) -> int:
    """Tokens in the first `steps` train steps of `rows` rows each, under the schedule."""
    starts = [first for first, _ in schedule] or [0]
    total = 0
    for i, first in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else steps
        total += (
            max(0, min(end, steps) - first) * rows * context_length_at(schedule, seq_len, first)
        )
    return total


def segments(
    phase1: Mapping[str, float],
    phase2: Mapping[str, float],
    phase2_start: int,
    schedule: Sequence[Sequence[int]],
    seq_len: int,
    seed: int,
) -> list[Segment]:
    """The run's segments, cut at the phase-2 start (when there is a phase 2) and at each schedule
    entry. The k-th schedule entry's segments read with seed `seed + k` (k = 0 without one), so a
    run without a schedule reads exactly as before."""
    cuts = {0} | {first for first, _ in schedule}
    if phase2:
        cuts.add(phase2_start)
    out = []
    for start in sorted(cuts):
        entry = sum(1 for first, _ in schedule if first <= start) - 1
        weights = phase2 if phase2 and start >= phase2_start else phase1
        out.append(
            Segment(
                start=start,
                weights=weights,
                seq_len=context_length_at(schedule, seq_len, start),
                seed=seed + max(entry, 0),
            )
        )
    return out


# Documents in a row outside a bucket after which it is taken to have none (the sources loop
# over their epochs, so a bucket no document falls into would otherwise read forever).
MAX_PASSED_OVER = 100_000


class InBucket(grain.transforms.Filter):
    """Keeps the documents (`{"ids"}`) of one length bucket: at least `min_tokens` ids (long) or
    fewer (short). A BadInputError once MAX_PASSED_OVER documents in a row fall outside it."""

    def __init__(self, min_tokens: int, long: bool):
        self.min_tokens, self.long = min_tokens, long
        self._passed_over = 0

    def filter(self, element: dict[str, np.ndarray]) -> bool:
        if (len(element["ids"]) >= self.min_tokens) == self.long:
            self._passed_over = 0
            return True
        self._passed_over += 1
        if self._passed_over >= MAX_PASSED_OVER:
            which = "at least" if self.long else "fewer than"
            raise BadInputError(
                f"data.long_context.min_tokens={self.min_tokens}: {MAX_PASSED_OVER} documents in "
                f"a row, and none with {which} {self.min_tokens} ids (the "
                f"{'long' if self.long else 'short'} bucket may be empty)"
            )
        return False


def mix_buckets(
    long_rows: grain.IterDataset, short_rows: grain.IterDataset, long_fraction: float
) -> grain.IterDataset:
    """Packed rows, `long_fraction` of them from the long bucket (grain's deterministic mixing)."""
    return grain.IterDataset.mix([long_rows, short_rows], [long_fraction, 1.0 - long_fraction])
