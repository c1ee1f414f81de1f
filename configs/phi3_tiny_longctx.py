"""`make longctx`'s runs (phi3_jax.longrope.demo): a tiny Phi-3 trained at a short context, and
its extension run.

  configs/phi3_tiny_longctx.py          the short-context run: a two-block Phi-3 of width 64 with
                                        the 416-rank byte-level tokenizer (512 embedding rows, so
                                        a forward at 1024 tokens is cheap on 2 CPU cores), trained
                                        at 128 tokens per row (positions 0..127 only) on the
                                        phase-1 web text, a fifth of its documents held out
  configs/phi3_tiny_longctx.py:extend   the extension run: rows of 1024 tokens, a few steps at a
                                        lower learning rate; the demo adds the searched factors
                                        (--flagfile), init_from and the long documents' shards
"""

from configs import base
from phi3_jax import config as config_lib

SHORT_CONTEXT = 128
TARGET_CONTEXT = 8 * SHORT_CONTEXT
TIKTOKEN = "data/tokenizer_small.tiktoken"
ENDOFTEXT = 417  # the tokenizer's <|endoftext|>: its bos, eos and pad

SHORT = dict(
    model=dict(
        # Two narrow blocks with phi3_tiny's head_dim (32: 16 rotary pairs), so the whole demo
        # fits tens of minutes of a shared 2-core CPU.
        hidden_size=64,
        intermediate_size=192,
        num_layers=2,
        num_heads=2,
        num_kv_heads=2,
        vocab_size=512,
        bos_token_id=ENDOFTEXT,
        eos_token_id=ENDOFTEXT,
        pad_token_id=ENDOFTEXT,
        max_position_embeddings=SHORT_CONTEXT,
        original_max_position_embeddings=SHORT_CONTEXT,
    ),
    # 600 steps (about 5 epochs of the training documents): at 120 the model's perplexity did not
    # depend on position (plain RoPE 45.1 at 1x, 45.3 at 8x), so no rescaling could matter.
    train=dict(steps=600, global_batch_size=16, seq_len=SHORT_CONTEXT),
    optim=dict(lr=3e-3, warmup_steps=15),
    # Phase 1 only (the web text); the held-out fifth gives the long evaluation rows.
    data=dict(phase2_start_step=10**9, num_workers=1, eval_batches=2, eval_fraction=0.2),
    log=dict(every_steps=50),
    eval=dict(every_steps=200),
    checkpoint=dict(every_steps=200),
)
EXTEND = dict(
    train=dict(steps=20, global_batch_size=4, seq_len=TARGET_CONTEXT),
    optim=dict(lr=1e-3, warmup_steps=5),
    log=dict(every_steps=5),
    eval=dict(every_steps=20),
    checkpoint=dict(every_steps=20),
)


def get_config(arg: str | None = None):
    if arg not in (None, "", "extend"):
        raise config_lib.ConfigError(f"unknown argument {arg!r}; expected none or extend")
    config = base.get_config("tiny")
    config.data.tokenizer.update(kind="tiktoken", path=TIKTOKEN)
    for section, values in SHORT.items():
        config[section].update(values)
    if arg == "extend":
        for section, values in EXTEND.items():
            config[section].update(values)
        # The extension run's own rows must fit; the searched factors set the real window.
        config.model.max_position_embeddings = TARGET_CONTEXT
    return config_lib.validate(config)
