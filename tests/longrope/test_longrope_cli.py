"""`python -m phi3_jax.longrope search` end to end on a tiny random model: two generations, one
compile, the outputs (override flags that the train CLI reads, result, plot), the short-window
re-search of an extended model, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from phi3_jax import config as config_lib
from phi3_jax import model, sharding
from phi3_jax.checkpoint import params as params_checkpoint
from phi3_jax.longrope import __main__ as cli
from phi3_jax.longrope import evolution, fitness
from phi3_jax.longrope import factors as factors_lib

TIKTOKEN = "data/tokenizer_small.tiktoken"  # 416 ranks: ids fit the tiny model's 512 rows


@pytest.fixture(scope="module")
def tiny_params(tmp_path_factory):
    root = tmp_path_factory.mktemp("longrope")
    config = config_lib.default_config()  # 2 layers, head_dim 16
    config.model.max_position_embeddings = config.model.original_max_position_embeddings = 32
    config.train.seq_len = 32
    config.data.tokenizer.update(kind="tiktoken", path=TIKTOKEN)
    config.data.eval_fraction = 0.5
    params = jax.jit(lambda key: model.init_params(config, key))(jax.random.key(0))
    params_checkpoint.save_params(str(root / "params"), config, params)
    docs = root / "docs.jsonl"
    lines = [
        json.dumps({"text": f"Document {i}: " + "the cat sat on the mat. " * (5 + i)})
        for i in range(30)
    ]
    docs.write_text("\n".join(lines) + "\n")
    return root


def test_search_two_generations_writes_its_outputs(tiny_params, monkeypatch):
    problem = cli.prepare(
        str(tiny_params / "params"), 128, [str(tiny_params / "docs.jsonl")], samples=2
    )
    assert problem.which == "long" and problem.data_info["held_out_documents"] < 30
    assert problem.scorer.rows.shape == (2, 128)
    settings = evolution.Settings(population=6, generations=2, mutations=2, crossovers=2)
    out = tiny_params / "search"
    lines = []
    result = cli.run_search(problem, settings, str(out), lines.append)
    assert [line.split(" |")[0] for line in lines[:3]] == [
        f"longrope: generation {g}/2" for g in range(3)
    ]
    assert result["compiles"] == 1 and result["generation"] == 2
    assert result["best_ppl"] <= min(result["seed_ppl"].values())
    assert result["best_per_generation"][-1] == result["best_ppl"]
    assert (out / cli.PLOT_FILE).stat().st_size > 0
    keys = json.loads((out / cli.OVERRIDE_JSON).read_text())
    assert keys["model.rope_long_factor"] == result["best_factors"]
    assert keys["model.rope_short_factor"] == [1.0] * 8
    assert keys["model.max_position_embeddings"] == 128
    # The flags file is what the train CLI takes: --flagfile gives a valid config with the factors.
    values = flags.FlagValues()
    holder = config_flags.DEFINE_config_file("config", flag_values=values, lock_config=True)
    argv = [
        "train",
        "--config=configs/phi3_tiny.py",
        "--config.model.hidden_size=64",  # head_dim 16, as the searched model's
        f"--flagfile={out / cli.OVERRIDE_FLAGS}",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    values(argv)
    config = config_lib.validate(holder.value)
    assert list(config.model.rope_long_factor) == result["best_factors"]
    assert config.model.rope_scaling == "longrope" and config.model.max_position_embeddings == 128


def test_short_factor_research_of_an_extended_model(tiny_params):
    # The model of the fixture extended 4x with NTK-aware long factors (what a long search and
    # extension run leave): a target within its original window re-searches the short factors.
    config, params = params_checkpoint.load_params_checkpoint(str(tiny_params / "params"))
    long = factors_lib.ntk_aware(16, 4.0)
    extended = fitness.extended_config(config, 128, 32)
    extended.model.rope_long_factor = tuple(float(f) for f in long)
    params_checkpoint.save_params(str(tiny_params / "extended"), extended, params)

    problem = cli.prepare(
        str(tiny_params / "extended"), 32, [str(tiny_params / "docs.jsonl")], samples=2
    )
    assert problem.which == "short" and problem.scorer.rows.shape == (2, 32)
    assert list(problem.seeds) == [cli.IDENTITY, *factors_lib.SEEDS]
    settings = evolution.Settings(population=6, generations=2, mutations=2, crossovers=2)
    out = tiny_params / "short_search"
    result = cli.run_search(problem, settings, str(out), lambda line: None)
    assert result["which"] == "short" and result["generation"] == 2
    assert result["compiles"] == 1
    assert result["best_ppl"] <= min(result["seed_ppl"].values())
    # The seeds differ in what they score: the candidate is the short factors of rows of 32.
    assert len({round(v, 6) for v in result["seed_ppl"].values()}) == 4
    keys = json.loads((out / cli.OVERRIDE_JSON).read_text())
    assert keys["model.rope_short_factor"] == result["best_factors"]
    assert keys["model.rope_long_factor"] == [float(f) for f in long]
    assert keys["model.max_position_embeddings"] == 128
    assert keys["model.original_max_position_embeddings"] == 32
    # The model with those keys scores the best perplexity with its own factors.
    searched = fitness.extended_config(config, 128, 32)
    searched.model.rope_long_factor = tuple(keys["model.rope_long_factor"])
    searched.model.rope_short_factor = tuple(keys["model.rope_short_factor"])
    own = fitness.PositionNLL(
        searched, params, problem.scorer.rows, sharding.make_mesh(searched.mesh)
    )
    assert own.perplexity() == pytest.approx(result["best_ppl"], rel=1e-6)
    assert np.all(np.diff(result["best_factors"]) >= 0)


def test_cli_bad_input_is_one_line(tiny_params):
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "phi3_jax.longrope",
            "search",
            f"--workdir={tiny_params / 'params'}",
            "--target_length=4096",
            "--samples=2",
            f"--data={tiny_params / 'docs.jsonl'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 1
    assert (
        run.stderr.strip()
        .splitlines()[-1]
        .startswith("phi3_jax.longrope: 0 documents of at least 4096 tokens")
    )
    with pytest.raises(fitness.FitnessError, match="within the original window 32"):
        cli.prepare(str(tiny_params / "params"), 32, [str(tiny_params / "docs.jsonl")])
