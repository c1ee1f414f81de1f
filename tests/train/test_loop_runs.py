"""Whole runs of the loop, in-process on the 8 emulated CPU devices and the bundled corpus: a
Hugging Face Phi-3 converted and trained (its step-0 loss is transformers' loss), and the tiny
model's held-out loss falling."""

from __future__ import annotations

import os

import numpy as np
import torch
import transformers

from configs import phi3_tiny
from phi3_jax import config as config_lib
from phi3_jax import convert, metrics
from phi3_jax.data import pipeline
from phi3_jax.data.tokenizer import load_tokenizer
from phi3_jax.train import loop

# Measured on this run's configuration (40 steps): held-out loss 10.413 at step 0, 7.228 at step
# 40, a drop of 3.18 nats; the test asks for 2.5 (fp32 summation order may move it slightly).
HELD_OUT_DROP = 2.5


def run_config(**overrides):
    """configs/phi3_tiny.py for in-process runs: 8 rows (one per device) of 32 tokens."""
    config = phi3_tiny.get_config()
    config.train.update(seq_len=32, global_batch_size=8)
    config.data.num_workers = 0
    config.log.update(every_steps=1, peak_flops=1e10)
    for key, value in overrides.items():
        section, name = key.split(".")
        config[section][name] = value
    return config_lib.validate(config)


def random_hf_phi3(path: str) -> transformers.Phi3ForCausalLM:
    """A random small Phi3ForCausalLM with the bundled tokenizer's 32064 rows, saved to `path`."""
    torch.manual_seed(0)
    hf_config = transformers.Phi3Config(
        vocab_size=32064,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        original_max_position_embeddings=512,
        sliding_window=None,
        bos_token_id=1,
        eos_token_id=32000,
        pad_token_id=32000,
    )
    hf_config._attn_implementation = "eager"
    model = transformers.Phi3ForCausalLM(hf_config).eval()
    model.save_pretrained(path)
    return model


def hf_loss(model: transformers.Phi3ForCausalLM, batch: dict[str, np.ndarray]) -> float:
    """transformers' mean cross-entropy over the loss-masked tokens of a packed batch: each
    document of a row through the model on its own (its positions restart at 0)."""
    total, count = 0.0, 0.0
    for row in range(batch["tokens"].shape[0]):
        segments = batch["segment_ids"][row]
        for segment in np.unique(segments[segments > 0]):
            where = np.flatnonzero(segments == segment)
            np.testing.assert_array_equal(batch["positions"][row, where], np.arange(len(where)))
            with torch.no_grad():
                logits = model(
                    torch.as_tensor(batch["tokens"][row, where][None], dtype=torch.long)
                ).logits[0]
            ce = torch.nn.functional.cross_entropy(
                logits.double(),
                torch.as_tensor(batch["targets"][row, where], dtype=torch.long),
                reduction="none",
            ).numpy()
            mask = batch["loss_mask"][row, where]
            total += float(np.sum(ce * mask))
            count += float(np.sum(mask))
    return total / count


def test_hf_checkpoint_converts_and_trains_with_transformers_step0_loss(tmp_path):
    hf_dir, ckpt = str(tmp_path / "hf"), str(tmp_path / "ckpt")
    hf_model = random_hf_phi3(hf_dir)
    convert.hf_to_orbax(hf_dir, ckpt)
    overrides = {"checkpoint.init_from": ckpt, "train.steps": 2, "optim.warmup_steps": 0}
    config = run_config(**overrides, **{"eval.every_steps": 0})
    log: list[str] = []
    loop.train(config, str(tmp_path / "run"), log=log.append)
    assert any("starting from the params checkpoint" in line for line in log)

    resolved = loop.with_init_model(config)
    assert (resolved.model.hidden_size, resolved.model.num_kv_heads) == (64, 2)
    batch = next(pipeline.train_iterator(resolved, load_tokenizer(config), 0, 1))
    lines = metrics.read_metrics(str(tmp_path / "run"))
    assert [line["step"] for line in lines] == [1, 2]
    expected = hf_loss(hf_model, batch)
    assert abs(lines[0]["loss"] - expected) <= 1e-4, (lines[0]["loss"], expected)
    assert np.isfinite(lines[1]["loss"]) and lines[1]["loss"] != lines[0]["loss"]


def test_tiny_model_held_out_loss_falls_on_the_bundled_corpus(tmp_path):
    steps = 40
    config = run_config(
        **{
            "model.num_layers": 2,
            "train.steps": steps,
            "train.seq_len": 64,
            "optim.lr": 3e-3,
            "optim.warmup_steps": 5,
            "log.every_steps": 20,
            "eval.every_steps": steps,
            "data.eval_batches": 1,
            "checkpoint.every_steps": steps,
        }
    )
    workdir = str(tmp_path / "run")
    final = loop.train(config, workdir, log=lambda _: None)
    evals = [line for line in metrics.read_metrics(workdir) if "eval_loss" in line]
    assert [line["step"] for line in evals] == [0, steps]
    drop = evals[0]["eval_loss"] - evals[1]["eval_loss"]
    assert drop >= HELD_OUT_DROP, (evals[0]["eval_loss"], evals[1]["eval_loss"])
    assert final["eval_loss"] == evals[1]["eval_loss"]
    assert os.listdir(os.path.join(workdir, metrics.TB_DIR))
