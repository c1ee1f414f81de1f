"""The tiny Phi-3-small trains from the CLI with its own tokenizer (tiktoken ranks with
Phi-3-small's special and dummy ids after them, data/tokenizer_small.tiktoken): every id of its
batches is one the tokenizer produces and decodes, below the vocabulary, never a masked dummy."""

from __future__ import annotations

import numpy as np
import pytest
from cli_fixtures import run_module

from configs import phi3_small
from phi3_jax import config as config_lib
from phi3_jax import metrics
from phi3_jax.data import pipeline
from phi3_jax.data.tokenizer import load_tokenizer
from phi3_jax.train import loop
from phi3_jax.train import restore as restore_lib

STEPS = 3
OVERRIDES = {
    "train.steps": STEPS,
    "train.seq_len": 64,
    "train.global_batch_size": 8,
    "optim.warmup_steps": 1,
    "data.num_workers": 0,
    "log.every_steps": 1,
    "eval.every_steps": 0,
    "checkpoint.every_steps": STEPS,
}


# 24-48 s on CI's 2 cores: kept out of the 15-minute default suite (make test-all runs it).
@pytest.mark.slow
def test_tiny_small_trains_from_the_cli_on_ids_its_tokenizer_produces(tmp_path):
    workdir = str(tmp_path / "run")
    result = run_module(
        "phi3_jax.train",
        "--config=configs/phi3_small.py:tiny",
        f"--workdir={workdir}",
        *(f"--config.{k}={v}" for k, v in OVERRIDES.items()),
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    config, _, step = restore_lib.restore_params_of_run(workdir)
    assert step == STEPS and config.data.tokenizer.kind == "tiktoken"
    tokenizer = load_tokenizer(config)
    vocab, dummies = config.model.vocab_size, list(config.model.dummy_token_ids)
    assert tokenizer.vocab_size == vocab == 512
    produced = tokenizer.decodable_mask(vocab)
    assert not produced[dummies].any() and produced.sum() == vocab - len(dummies)
    # A masked id as a target would make the loss infinite; at init it is log(unmasked ids).
    losses = [line["loss"] for line in metrics.read_metrics(workdir) if "loss" in line]
    assert len(losses) == STEPS and np.isfinite(losses).all()
    assert abs(losses[0] - np.log(vocab - len(dummies))) < 0.05
    # The run's batches: the batch order is a function of the saved config and the step.
    iterator = pipeline.train_iterator(config, tokenizer, 0, 1)
    seen = set()
    for _ in range(STEPS):
        batch = next(iterator)
        for key in ("tokens", "targets"):
            ids = batch[key]
            assert 0 <= ids.min() and ids.max() < vocab
            assert produced[ids].all() and not np.isin(ids, dummies).any()
            seen |= set(np.unique(ids).tolist())
        assert tokenizer.decode(batch["tokens"][0])
    # Byte-level BPE ids with merges, and the end of documents.
    assert max(seen - {tokenizer.eos_id}) >= 300 and tokenizer.eos_id in seen


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"data.tokenizer.kind": "sentencepiece", "data.tokenizer.path": "data/tokenizer.model"},
            r"^model\.vocab_size=512: smaller than the tokenizer's 32064 ids "
            r"\(data\.tokenizer=sentencepiece:data/tokenizer\.model\)",
        ),
        (
            {"model.dummy_token_ids": (417, 500)},
            r"^model\.dummy_token_ids: 417 is masked in the model but a token of the tokenizer "
            r"\(data\.tokenizer=tiktoken:data/tokenizer_small\.tiktoken\)",
        ),
    ],
)
def test_a_model_that_cannot_hold_its_tokenizers_ids_is_refused(overrides, message, tmp_path):
    config = phi3_small.get_config("tiny")
    config.update_from_flattened_dict(overrides)
    with pytest.raises(config_lib.ConfigError, match=message):
        loop.train(config, str(tmp_path / "run"), log=lambda _: None)
