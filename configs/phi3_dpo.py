"""DPO on preference pairs: `--config=configs/phi3_dpo.py:SIZE` (tiny | mini | mini_128k | small |
medium) with `--config.checkpoint.init_from=CKPT` (the SFT model: a params checkpoint, e.g.
`convert`ed from an SFT run) and, at full size where it is required (only tiny has bundled data),
`--config.data.sources.pairs.globs=...` (jsonl, jsonl.zst or parquet of {"prompt", "chosen",
"rejected"}). The reference is init_from's params, frozen.

The report gives no DPO recipe (PHI3.md §5.3); the full sizes use common choices, not the
report's: beta 0.1 (the DPO paper's), a small peak lr (5e-7) after 150 warmup steps, 64 pairs per
batch. `tiny` is `make chat`'s few steps on the bundled pairs (data/chat/dpo.jsonl.zst).
"""

from configs import base

FULL_SIZE = dict(
    train=dict(steps=1000, global_batch_size=64, seq_len=2048, objective="dpo"),
    optim=dict(lr=5e-7, warmup_steps=150, schedule="cosine", min_lr_ratio=0.0, weight_decay=0.0),
    dpo=dict(beta=0.1, loss="sigmoid"),
    log=dict(every_steps=10),
    eval=dict(every_steps=100),
    checkpoint=dict(every_steps=100),
)
TINY = dict(
    train=dict(steps=12, global_batch_size=8, seq_len=128, objective="dpo"),
    optim=dict(lr=3e-4, warmup_steps=1, min_lr_ratio=0.0, weight_decay=0.0),
    dpo=dict(beta=0.1, loss="sigmoid"),
    data=dict(num_workers=1, eval_batches=2),
    log=dict(every_steps=2),
    eval=dict(every_steps=6),
    checkpoint=dict(every_steps=6),
)


def get_config(arg: str | None = None):
    return base.posttraining(arg, "pairs", "data/chat/dpo.jsonl.zst", TINY, FULL_SIZE)
