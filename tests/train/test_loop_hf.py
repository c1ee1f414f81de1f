"""A whole run of the loop from a Hugging Face Phi-3 checkpoint, converted and trained in-process on
the 8 emulated CPU devices and the bundled corpus: its step-0 loss is transformers' loss. Needs
torch (skipped without it, as on Python 3.12: see the README's install section)."""

from __future__ import annotations

import numpy as np
import torch
import transformers
from train_fixtures import run_config

from phi3_jax import convert, metrics
from phi3_jax.data import pipeline
from phi3_jax.data.tokenizer import load_tokenizer
from phi3_jax.train import loop


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
