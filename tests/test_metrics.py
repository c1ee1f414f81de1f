"""FLOPs per token (6N plus attention, the remat recompute apart) and the throughput line's
step time, tokens per second, MFU and HFU."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "train"))
from train_fixtures import small_config  # noqa: E402

from phi3_jax import metrics, model  # noqa: E402


def test_flops_per_token_counts_6n_plus_attention_and_remat_apart():
    config = small_config()
    m = config.model
    n = model.param_count(config) - m.vocab_size * m.hidden_size
    attention = 12 * m.num_layers * config.train.seq_len * m.hidden_size
    assert metrics.flops_per_token(config) == {"model": 6.0 * n + attention, "remat": 0.0}
    config.model.remat = "full"
    blocks = n - m.vocab_size * m.hidden_size
    assert metrics.flops_per_token(config)["remat"] == 2.0 * blocks + attention / 3
    # 500 tokens/s of 1000 model FLOPs (+ 500 recomputed) on a 1 MFLOP/s peak.
    assert metrics.throughput(2.0, 1000, {"model": 1000.0, "remat": 500.0}, 1e6) == {
        "step_time_s": 2.0,
        "tokens_per_s": 500.0,
        "mfu": 0.5,
        "hfu": 0.75,
    }
