"""convert's two commands in-process: an HF directory to a params checkpoint and back gives the
same config.json and tensors (a params checkpoint names no tokenizer: no tokenizer files), and a
path that is neither a checkpoint nor a run is an error naming it. (The CLI on a model from
transformers: tests/model/test_hf.py.)"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from configs import phi3_tiny
from phi3_jax import config as config_lib
from phi3_jax import convert, model
from phi3_jax.model import hf


def test_hf_to_orbax_and_back_keeps_every_tensor(tmp_path):
    config = phi3_tiny.get_config()
    config.model.update(num_layers=2, hidden_size=64, intermediate_size=128)
    config = config_lib.freeze(config)
    # Random values of the params' shapes (no init compile: the test is about the files).
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda a: rng.standard_normal(a.shape).astype(a.dtype), model.abstract_params(config)
    )
    source, ckpt, back = (str(tmp_path / name) for name in ("hf", "ckpt", "back"))
    hf.save_hf(config, params, source)
    convert.hf_to_orbax(source, ckpt)
    convert.orbax_to_hf(ckpt, back)
    assert sorted(os.listdir(back)) == sorted(os.listdir(source))
    with open(f"{source}/config.json") as a, open(f"{back}/config.json") as b:
        assert json.load(a) == json.load(b)
    first, second = load_file(f"{source}/model.safetensors"), load_file(f"{back}/model.safetensors")
    assert sorted(first) == sorted(second)
    for name, array in first.items():
        np.testing.assert_array_equal(array, second[name], err_msg=name)


def test_a_path_that_is_no_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing-here: not a phi3_jax checkpoint"):
        convert.orbax_to_hf(str(tmp_path / "nothing-here"), str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")
