"""A packed row in the train step's format: padding shown as pad_id and out of the loss, the
packer's segment ids and positions as int32, and only the trained tokens in the loss mask."""

from __future__ import annotations

import numpy as np

from phi3_jax.data.batch import BATCH_KEYS, train_row

# Two documents then padding (the packer pads with zeros).
ROW = {
    "tokens": np.asarray([5, 6, 7, 8, 9, 0, 0]),
    "targets": np.asarray([6, 7, 2, 9, 2, 0, 0]),
    "tokens_segment_ids": np.asarray([1, 1, 1, 2, 2, 0, 0]),
    "tokens_positions": np.asarray([0, 1, 2, 0, 1, 0, 0]),
}


def test_a_pretraining_row():
    row = train_row(ROW, pad_id=3)
    assert tuple(row) == BATCH_KEYS
    assert row["tokens"].tolist() == [5, 6, 7, 8, 9, 3, 3]
    assert row["targets"].tolist() == [6, 7, 2, 9, 2, 3, 3]
    assert row["segment_ids"].tolist() == [1, 1, 1, 2, 2, 0, 0]
    assert row["positions"].tolist() == [0, 1, 2, 0, 1, 0, 0]
    assert row["loss_mask"].tolist() == [1, 1, 1, 1, 1, 0, 0]
    assert {k: v.dtype for k, v in row.items()} == dict(
        tokens=np.int32,
        targets=np.int32,
        segment_ids=np.int32,
        positions=np.int32,
        loss_mask=np.float32,
    )


def test_only_trained_tokens_count_in_an_sft_row():
    # SFT: the prompt's tokens are context, the answer's train.
    row = train_row(ROW | {"trained": np.asarray([0, 1, 1, 0, 1, 1, 1])}, pad_id=3)
    assert row["loss_mask"].tolist() == [0, 1, 1, 0, 1, 0, 0]
