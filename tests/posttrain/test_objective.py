"""What a run trains, chosen once from train.objective: pretraining's text documents or SFT's
chat records, and the tokens a step puts through the model (a DPO pair is two rows)."""

from __future__ import annotations

from configs import phi3_dpo, phi3_sft, phi3_tiny
from phi3_jax import config as config_lib
from phi3_jax.posttrain import objective


def _config(name: str):
    """The tiny recipe of each objective, 4 rows of 32 tokens a step."""
    recipe = {"lm": phi3_tiny.get_config, "sft": phi3_sft.get_config, "dpo": phi3_dpo.get_config}
    config = recipe[name]() if name == "lm" else recipe[name]("tiny")
    config.train.update(global_batch_size=4, seq_len=32)
    assert config.train.objective == name
    return config_lib.freeze(config)


def test_tokens_per_step_count_both_rows_of_a_dpo_pair():
    assert objective.tokens_per_step(_config("lm")) == 4 * 32
    assert objective.tokens_per_step(_config("sft")) == 4 * 32
    assert objective.tokens_per_step(_config("dpo")) == 2 * 4 * 32


def test_pretraining_reads_text_documents():
    assert objective.records(_config("lm"), tokenizer=None) is None
