"""The tiny Phi-3-small trains from the CLI with its own tokenizer (tiktoken ranks with
Phi-3-small's special and dummy ids after them, data/tokenizer_small.tiktoken): every id of its
batches is one the tokenizer produces and decodes, below the vocabulary, never a masked dummy."""

from __future__ import annotations

import numpy as np
from cli_fixtures import run_module

from phi3_jax import checkpoint, metrics
from phi3_jax.data import pipeline
from phi3_jax.data.tokenizer import load_tokenizer

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


def test_tiny_small_trains_from_the_cli_on_ids_its_tokenizer_produces(tmp_path):
    workdir = str(tmp_path / "run")
    result = run_module(
        "phi3_jax.train",
        "--config=configs/phi3_small.py:tiny",
        f"--workdir={workdir}",
        *(f"--config.{k}={v}" for k, v in OVERRIDES.items()),
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    config, _, step = checkpoint.restore_params_of_run(workdir)
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
