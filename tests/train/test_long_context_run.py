"""A progressive-context run with the long-document bucket, through the CLI: SIGKILLed after its
checkpoint at step 6 and resumed, it equals the uninterrupted run bitwise across the switch of row
length at step 8 (rows of 16, 32, then 64 tokens; documents of 200+ ids in long rows, the
others cut at the 32-token original context)."""

from __future__ import annotations

import pytest
from test_loop import OVERRIDES, STEPS, kill_after_checkpoint_then_resume, straight_run

from phi3_jax import metrics

LONG_CONTEXT = {
    "train.seq_len": 64,
    "train.context_schedule": "((0, 16), (4, 32), (8, 64))",
    "model.original_max_position_embeddings": 32,
    "data.long_context.min_tokens": 200,
}


@pytest.mark.slow  # three CLI runs of three row lengths each (~2 min idle)
def test_progressive_context_with_long_documents_resumes_bitwise(tmp_path_factory, worker_id):
    straight = straight_run(tmp_path_factory, worker_id, "straight_long_context", **LONG_CONTEXT)
    kill_after_checkpoint_then_resume(
        straight, tmp_path_factory.mktemp("killed") / "run", STEPS, **LONG_CONTEXT
    )
    # tokens_seen counts each step at its own length: 4 steps each of 16, 32 and 64 tokens a row.
    seen = {m["step"]: m["tokens_seen"] for m in metrics.read_metrics(str(straight)) if "loss" in m}
    assert seen[STEPS] == OVERRIDES["train.global_batch_size"] * 4 * (16 + 32 + 64)
