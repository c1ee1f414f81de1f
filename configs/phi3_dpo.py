"""DPO on preference pairs: `--config=configs/phi3_dpo.py:SIZE` (tiny | mini | mini_128k | small |
medium) with `--config.checkpoint.init_from=CKPT` (the SFT model: a params checkpoint, e.g.
`convert`ed from an SFT run) and `--config.data.sources.pairs.globs=...` (jsonl, jsonl.zst or
parquet of {"prompt", "chosen", "rejected"}). The reference is init_from's params, frozen.

The report gives no DPO recipe (PHI3.md §5.3); these are the DPO paper's defaults (beta 0.1, lr
5e-7 with warmup, batch 64 pairs; Rafailov et al. 2023 §6) for the full sizes. `tiny` is `make
chat`'s few steps on the bundled pairs (data/chat/dpo.jsonl.zst).
"""

import ml_collections

from configs import base
from configs.phi3_sft import with_updates
from phi3_jax import config as config_lib

PAIR_DATA = dict(
    sources=ml_collections.ConfigDict(
        {"pairs": dict(globs="data/chat/dpo.jsonl.zst", format="jsonl", text_field="text")}
    ),
    phase1=ml_collections.ConfigDict({"pairs": 1.0}),
    phase2=ml_collections.ConfigDict(),
    phase2_start_step=0,
    eval_fraction=0.02,
)
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
    variant = arg or "tiny"
    config = base.get_config(variant)
    # Replaced, not merged: the pretraining sources and phases are not part of a DPO run.
    for key, value in PAIR_DATA.items():
        config.data[key] = value
    config = with_updates(config, TINY if variant == "tiny" else FULL_SIZE)
    return config_lib.validate(config)
