"""The params-only checkpoint: params and config written together and read back (the config
frozen, as saved), and `locate` telling one from a run given as WORKDIR, WORKDIR/checkpoints or
WORKDIR/checkpoints/STEP, with one error naming anything else."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
import pytest

from configs import phi3_tiny
from phi3_jax import config as config_lib
from phi3_jax.checkpoint import params as params_checkpoint


def test_params_and_config_read_back(tmp_path):
    config = config_lib.freeze(phi3_tiny.get_config())
    params = {"layer": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}, "b": np.ones(2)}
    out = str(tmp_path / "ckpt")
    params_checkpoint.save_params(out, config, params)
    loaded, restored = params_checkpoint.load_params_checkpoint(out)
    assert isinstance(loaded, ml_collections.FrozenConfigDict)
    assert config_lib.to_json(loaded) == config_lib.to_json(config)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(a, b)
    assert config_lib.to_json(params_checkpoint.init_config(out)) == config_lib.to_json(config)
    with pytest.raises(FileNotFoundError, match=r"config.json: not found"):
        params_checkpoint.load_config(str(tmp_path))


def test_locate_tells_a_params_checkpoint_from_a_run(tmp_path):
    (tmp_path / "p" / "params").mkdir(parents=True)
    (tmp_path / "p" / "config.json").write_text("{}")
    (tmp_path / "run" / "checkpoints" / "40").mkdir(parents=True)
    p, run = str(tmp_path / "p"), str(tmp_path / "run")
    assert params_checkpoint.locate(p) == ("params", p, None)
    assert params_checkpoint.locate(run) == ("run", run, None)
    assert params_checkpoint.locate(run, 20) == ("run", run, 20)
    assert params_checkpoint.locate(f"{run}/checkpoints") == ("run", run, None)
    assert params_checkpoint.locate(f"{run}/checkpoints/40") == ("run", run, 40)
    with pytest.raises(ValueError, match=r"^step 3: .*/p is a params checkpoint, which has no"):
        params_checkpoint.locate(p, 3)
    with pytest.raises(ValueError, match=r"^step 3: .*/40 is the checkpoint of step 40$"):
        params_checkpoint.locate(f"{run}/checkpoints/40", 3)
    with pytest.raises(FileNotFoundError, match=r"/elsewhere: not a phi3_jax checkpoint"):
        params_checkpoint.locate(str(tmp_path / "elsewhere"))
