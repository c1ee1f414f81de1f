"""SFT in Phi-3's chat format: `--config=configs/phi3_sft.py:SIZE` (tiny | mini | mini_128k |
small | medium), usually with `--config.checkpoint.init_from=CKPT` (a pretraining run's params, or
a converted Hugging Face Phi-3) and `--config.data.sources.chat.globs=...` (jsonl, jsonl.zst or
parquet of {"messages": [...]}).

The report gives no SFT recipe (PHI3.md §5.3); these are common choices for full fine-tuning:
AdamW at a peak lr of 2e-5 (1e-3 for the tiny demo), 3% warmup, cosine decay to 0, no weight
decay on norms, 2% of the conversations held out. `tiny` is `make chat`'s run on the bundled
instruction set (data/chat/sft.jsonl.zst).
"""

import ml_collections

from configs import base
from phi3_jax import config as config_lib

CHAT_DATA = dict(
    # One source, the conversations; no phase 2.
    sources=ml_collections.ConfigDict(
        {"chat": dict(globs="data/chat/sft.jsonl.zst", format="jsonl", text_field="text")}
    ),
    phase1=ml_collections.ConfigDict({"chat": 1.0}),
    phase2=ml_collections.ConfigDict(),
    phase2_start_step=0,
    eval_fraction=0.02,
)
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


def with_updates(config: ml_collections.ConfigDict, updates: dict) -> ml_collections.ConfigDict:
    for section, values in updates.items():
        config[section].update(values)
    return config


def get_config(arg: str | None = None):
    variant = arg or "tiny"
    config = base.get_config(variant)
    # Replaced, not merged: the pretraining sources and phases are not part of an SFT run.
    for key, value in CHAT_DATA.items():
        config.data[key] = value
    config = with_updates(config, TINY if variant == "tiny" else FULL_SIZE)
    return config_lib.validate(config)
