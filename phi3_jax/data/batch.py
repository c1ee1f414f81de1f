"""The batch format of training, as the data pipeline makes it and the train step reads it.

Per process: `tokens`, `targets`, `segment_ids` (1, 2, ... per document in a row, 0 on padding),
`positions` (restart at 0 per document) as int32 [batch, seq_len], and `loss_mask` float32 (1
where `targets` is a real next token of the same document and trains, 0 on padding).
"""

from __future__ import annotations

import numpy as np

BATCH_KEYS = ("tokens", "targets", "segment_ids", "positions", "loss_mask")


def train_row(row: dict[str, np.ndarray], pad_id: int) -> dict[str, np.ndarray]:
    """A packed row in the train step's format (segment ids/positions are those of `tokens`)."""
    segment_ids = row["tokens_segment_ids"].astype(np.int32)
    real = segment_ids > 0
    trained = real & (row["trained"] > 0) if "trained" in row else real
    return {
        # Both packers pad with zeros; padding shows as pad_id, masked out of the loss.
        "tokens": np.where(real, row["tokens"], pad_id).astype(np.int32),
        "targets": np.where(real, row["targets"], pad_id).astype(np.int32),
        "segment_ids": segment_ids,
        "positions": row["tokens_positions"].astype(np.int32),
        "loss_mask": trained.astype(np.float32),
    }
