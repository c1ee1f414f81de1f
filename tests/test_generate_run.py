"""After a training run: generation from a run trained sequence-parallel, and the run exported to
a Hugging Face directory that transformers loads (model and tokenizer) with the run's logits and
token ids. One tiny run (2 steps on the 8 emulated devices, mesh.sequence=2) serves every test."""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import numpy as np
import pytest
import transformers

from configs import phi3_tiny
from phi3_jax import config as config_lib
from phi3_jax import convert, generate
from phi3_jax import model as phi3
from phi3_jax.data.tokenizer import load_tokenizer
from phi3_jax.train import loop
from phi3_jax.train import restore as restore_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = "Hello world!  Two  spaces\n\tand a tab <|user|>\nfine<|end|>"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> str:
    """A run of 2 steps, checkpointed at each, trained with the sequence split over 2 devices."""
    config = phi3_tiny.get_config()
    config.model.update(num_layers=2, hidden_size=64, intermediate_size=128)
    config.mesh.update(sequence=2)
    config.train.update(seq_len=32, global_batch_size=8, steps=2)
    config.optim.warmup_steps = 1
    config.data.num_workers = 0
    config.log.update(every_steps=1, peak_flops=1e10)
    config.eval.every_steps = 0
    config.checkpoint.every_steps = 1
    workdir = str(tmp_path_factory.mktemp("run"))
    loop.train(config_lib.validate(config), workdir, log=lambda _: None)
    return workdir


def test_generation_after_a_sequence_parallel_run(run_dir):
    config, params, step = restore_lib.restore_params_of_run(run_dir)
    assert step == 2 and config.mesh.sequence == 1
    tokenizer = load_tokenizer(config)
    prompts = [[tokenizer.bos_id, *tokenizer.encode(t)] for t in ("The list", "A dict maps")]
    out = generate.generate_batch(
        config,
        params,
        prompts,
        max_new_tokens=6,
        decodable=tokenizer.decodable_mask(config.model.vocab_size),
    )
    assert [len(row) for row in out] == [6, 6]
    assert out[0] == generate.generate(config, params, prompts[0], 6)


def convert_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "phi3_jax.convert", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cpu"},
        timeout=300,
    )


@functools.cache
def exported_model(out: str):
    torch = pytest.importorskip("torch")  # absent on Python 3.12 (README: Install)
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    return model.eval(), transformers.AutoTokenizer.from_pretrained(out)


def assert_export_reproduces(out: str, run_dir: str, step: int) -> None:
    config, params, _ = restore_lib.restore_params_of_run(run_dir, step)
    config = config_lib.replace(config, model=dict(dtype="float32"))
    tokenizer = load_tokenizer(config)
    model, hf_tokenizer = exported_model(out)
    ids = tokenizer.encode(TEXT)
    assert hf_tokenizer.encode(TEXT, add_special_tokens=False) == ids
    assert hf_tokenizer.decode(ids) == tokenizer.decode(ids)
    tokens = np.asarray([[tokenizer.bos_id, *ids]])
    torch = pytest.importorskip("torch")
    with torch.no_grad():
        theirs = model(torch.as_tensor(tokens)).logits.numpy()
    ours = np.asarray(phi3.logits(config, params, tokens))
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)


def test_a_run_exports_with_its_tokenizer(run_dir, tmp_path):
    """--ckpt=RUN exports the latest step; in-process, --ckpt=RUN/checkpoints/1 that step."""
    out = str(tmp_path / "latest")
    result = convert_cli("orbax-to-hf", f"--ckpt={run_dir}", f"--out={out}")
    assert result.returncode == 0, result.stderr
    assert_export_reproduces(out, run_dir, 2)
    first = str(tmp_path / "step1")
    convert.orbax_to_hf(os.path.join(run_dir, "checkpoints", "1"), first)
    assert_export_reproduces(first, run_dir, 1)
    # The two steps differ, so the step chosen matters.
    second = restore_lib.restore_params_of_run(run_dir, 2)[1]
    assert not np.array_equal(
        np.asarray(restore_lib.restore_params_of_run(run_dir, 1)[1]["lm_head"]["kernel"]),
        np.asarray(second["lm_head"]["kernel"]),
    )


def test_a_wrong_path_or_step_is_one_line(run_dir, tmp_path):
    missing = tmp_path / "nowhere"
    result = convert_cli("orbax-to-hf", f"--ckpt={missing}", f"--out={tmp_path / 'out'}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"orbax-to-hf: {missing}: not a phi3_jax checkpoint (a params checkpoint holds "
        "config.json and params/; a run is WORKDIR, WORKDIR/checkpoints or "
        "WORKDIR/checkpoints/STEP)"
    ]
    with pytest.raises(FileNotFoundError, match=r"no checkpoint of step 7 \(steps: \[1, 2\]\)$"):
        convert.orbax_to_hf(run_dir, str(tmp_path / "out"), step=7)
    with pytest.raises(ValueError, match=r"step 2: .*/checkpoints/1 is the checkpoint of step 1$"):
        convert.orbax_to_hf(os.path.join(run_dir, "checkpoints", "1"), str(tmp_path / "out"), 2)
    assert not (tmp_path / "out").exists()
