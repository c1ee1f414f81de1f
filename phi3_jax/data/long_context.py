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


@dataclasses.dataclass(frozen=True)
class InBucket:
    """Whether a document's ids fall in one length bucket: at least `min_tokens` of them (long)
    or fewer (short). Each bucket is its own reading of the sources (`sources.ReadOptions.keep`),
    which counts only the documents it keeps; a bucket a source's documents never fall into ends
    its first epoch with none, a BadInputError naming the key."""

    min_tokens: int
    long: bool

    def __call__(self, ids: np.ndarray) -> bool:
        return (len(ids) >= self.min_tokens) == self.long

    def __str__(self) -> str:
        which = "at least" if self.long else "fewer than"
        return (
            f"with {which} {self.min_tokens} ids (data.long_context.min_tokens={self.min_tokens}: "
            f"the {'long' if self.long else 'short'} bucket is empty)"
        )


def mix_buckets(
    long_rows: grain.IterDataset, short_rows: grain.IterDataset, long_fraction: float
) -> grain.IterDataset:
    """Packed rows, `long_fraction` of them from the long bucket (grain's deterministic mixing)."""
    return grain.IterDataset.mix([long_rows, short_rows], [long_fraction, 1.0 - long_fraction])
