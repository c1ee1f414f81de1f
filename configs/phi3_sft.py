"""SFT in Phi-3's chat format: `--config=configs/phi3_sft.py:SIZE` (tiny | mini | mini_128k |
small | medium), usually with `--config.checkpoint.init_from=CKPT` (a pretraining run's params, or
a converted Hugging Face Phi-3) and, at full size where it is required (only tiny has bundled
data), `--config.data.sources.chat.globs=...` (jsonl, jsonl.zst or parquet of {"messages": [...]}).

The report gives no SFT recipe (PHI3.md §5.3); these are common choices for full fine-tuning:
AdamW at a peak lr of 2e-5 (1e-3 for the tiny demo), 3% warmup, cosine decay to 0, no weight
decay on norms, 2% of the conversations held out. `tiny` is `make chat`'s run on the bundled
instruction set (data/chat/sft.jsonl.zst).
"""

from configs import base

FULL_SIZE = dict(
    train=dict(steps=2000, global_batch_size=128, seq_len=4096, objective="sft"),
    optim=dict(lr=2e-5, warmup_steps=60, min_lr_ratio=0.0, weight_decay=0.0),
    log=dict(every_steps=10),
    eval=dict(every_steps=200),
    checkpoint=dict(every_steps=200),
)
TINY = dict(
    train=dict(steps=40, global_batch_size=16, seq_len=128, objective="sft"),
    optim=dict(lr=1e-3, warmup_steps=4, min_lr_ratio=0.0, weight_decay=0.0),
    data=dict(num_workers=1, eval_batches=2),
    log=dict(every_steps=5),
    eval=dict(every_steps=20),
    checkpoint=dict(every_steps=20),
)


def get_config(arg: str | None = None):
    return base.posttraining(arg, "chat", "data/chat/sft.jsonl.zst", TINY, FULL_SIZE)
