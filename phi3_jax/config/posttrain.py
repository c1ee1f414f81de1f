"""The `sft` and `dpo` sections: post-training on chat conversations and preference pairs."""

from __future__ import annotations

import ml_collections

from phi3_jax.config.checks import fail

# A conversation longer than a row (train.seq_len + 1 ids): dropped, or cut to the row (counted).
TOO_LONG = ("drop", "truncate")
# DPO losses: sigmoid (Rafailov et al. 2023; label_smoothing: cDPO), ipo (Azar et al. 2023), hinge.
DPO_LOSSES = ("sigmoid", "ipo", "hinge")


def default_sft_config() -> ml_collections.ConfigDict:
    """Supervised fine-tuning on {"messages": [...]} records in Phi-3's chat format."""
    s = ml_collections.ConfigDict()
    # The record field holding the conversation (a list of {"role", "content"}).
    s.messages_field = "messages"
    # Also train on each assistant message's "<|assistant|>\n" header (default: content + <|end|>).
    s.train_header = False
    # Also train on the <|endoftext|> that ends each conversation.
    s.train_eos = False
    # One of TOO_LONG: a conversation longer than a row is dropped or truncated; both are counted.
    s.too_long = "drop"
    return s


def default_dpo_config() -> ml_collections.ConfigDict:
    """Direct preference optimisation on {"prompt", "chosen", "rejected"} records."""
    d = ml_collections.ConfigDict()
    # Strength of the KL tie to the reference (beta; IPO's tau).
    d.beta = 0.1
    # One of DPO_LOSSES.
    d.loss = "sigmoid"
    # sigmoid only: the assumed probability that a pair's preference is flipped (cDPO).
    d.label_smoothing = 0.0
    # Reference log-probs from one pass over the data before training instead of a frozen copy
    # of the params beside the policy (saves the reference's memory).
    d.precompute_reference = False
    return d


def validate_posttrain(config: ml_collections.ConfigDict) -> None:
    """Raise ConfigError naming the first invalid sft or dpo key."""
    sft, dpo = config.sft, config.dpo
    if not sft.messages_field:
        fail("sft.messages_field", sft.messages_field, "must be non-empty")
    if sft.too_long not in TOO_LONG:
        fail("sft.too_long", sft.too_long, f"must be one of {', '.join(TOO_LONG)}")
    if not dpo.beta > 0:
        fail("dpo.beta", dpo.beta, "must be positive")
    if dpo.loss not in DPO_LOSSES:
        fail("dpo.loss", dpo.loss, f"must be one of {', '.join(DPO_LOSSES)}")
    if not 0 <= dpo.label_smoothing < 0.5:
        fail("dpo.label_smoothing", dpo.label_smoothing, "must lie in [0, 0.5)")
    if config.train.objective == "dpo" and config.data.phase2:
        fail("data.phase2", dict(config.data.phase2), "a DPO run has one phase: leave it empty")
    if dpo.precompute_reference:
        fail("dpo.precompute_reference", True, "not implemented yet (the reference is in memory)")
    if dpo.label_smoothing and dpo.loss != "sigmoid":
        fail("dpo.label_smoothing", dpo.label_smoothing, "applies to dpo.loss=sigmoid only")
