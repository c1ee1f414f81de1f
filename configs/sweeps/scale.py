"""Scale sweep: tiny -> mini -> small -> medium, each trained on 20 tokens per parameter.

`python -m launch.sweep configs/sweeps/scale.py --launcher=tpu_vm ...` runs them on the v5p-128
preset of each config (the tiny model has no preset: FSDP over every device). The token budget
is Chinchilla's compute-optimal 20 tokens per parameter (Hoffmann et al. 2022, arXiv:2203.15556);
each size's batch and peak learning rate are GPT-3's for the nearest model size (Brown et al.
2020, arXiv:2005.14165, Table 2.1), with its 375M-token linear warmup (appendix B).
"""

# (config, parameters, GPT-3 row: batch in tokens, peak lr)
_LADDER = (
    # tiny, 9.1M parameters: GPT-3 Small (125M): 0.5M tokens, 6.0e-4.
    ("configs/phi3_tiny.py", 9_061_504, 512, 2**19, 6.0e-4),
    # mini, 3.8B: GPT-3 2.7B: 1M tokens, 1.6e-4.
    ("configs/phi3_mini.py:tpu=v5p-128", 3_821_079_552, 4096, 2**20, 1.6e-4),
    # small, 7.4B: GPT-3 6.7B: 2M tokens, 1.2e-4.
    ("configs/phi3_small.py:tpu=v5p-128", 7_392_272_384, 8192, 2**21, 1.2e-4),
    # medium, 14B: GPT-3 13B: 2M tokens, 1.0e-4.
    ("configs/phi3_medium.py:tpu=v5p-128", 13_960_238_080, 4096, 2**21, 1.0e-4),
)
TOKENS_PER_PARAMETER = 20
WARMUP_TOKENS = 375_000_000


def runs() -> list[dict]:
    """One run per size."""
    out = []
    for config, parameters, seq_len, batch_tokens, lr in _LADDER:
        steps = -(-TOKENS_PER_PARAMETER * parameters // batch_tokens)
        out.append(
            dict(
                config=config,
                overrides={
                    "train.seq_len": seq_len,
                    "train.global_batch_size": batch_tokens // seq_len,
                    "train.steps": steps,
                    "optim.lr": lr,
                    # The warmup may not outlast a short run: at most a tenth of it.
                    "optim.warmup_steps": min(WARMUP_TOKENS // batch_tokens, steps // 10),
                    "data.phase2_start_step": steps * 9 // 10,
                },
            )
        )
    return out
