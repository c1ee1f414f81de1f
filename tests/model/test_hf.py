"""HF -> phi3_jax -> HF round trips, the convert CLI, and clear errors for bad HF directories."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
import torch
import transformers
from cli_fixtures import run_module
from hf_fixtures import hf_logits, random_hf_model, random_tokens, tensors_of

from phi3_jax import config as config_lib
from phi3_jax import model as phi3
from phi3_jax.model import hf


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hf") / "gqa"
    model = random_hf_model(hidden_size=128, num_attention_heads=8, num_key_value_heads=2)
    model.save_pretrained(directory)
    return directory


def assert_same_tensors(a, b):
    ta, tb = tensors_of(a), tensors_of(b)
    assert sorted(ta) == sorted(tb)
    for name in ta:
        assert ta[name].dtype == tb[name].dtype, name
        np.testing.assert_array_equal(ta[name], tb[name], err_msg=name)


@pytest.mark.parametrize("max_shard_bytes", [hf.DEFAULT_MAX_SHARD_BYTES, 100_000])
def test_round_trip_bit_identical_and_loads_in_transformers(hf_dir, tmp_path, max_shard_bytes):
    config, params = hf.load_hf(hf_dir)
    out = tmp_path / "out"
    hf.save_hf(config, params, out, max_shard_bytes=max_shard_bytes)
    sharded = os.path.exists(out / hf.INDEX_FILE)
    assert sharded == (max_shard_bytes < hf.DEFAULT_MAX_SHARD_BYTES)
    assert_same_tensors(hf_dir, out)
    # The exported directory loads in transformers and gives our logits.
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
    tokens = random_tokens(128, 2, 12)
    config = config_lib.replace(config, model=dict(dtype="float32"))
    ours = np.asarray(phi3.logits(config, params, tokens))
    np.testing.assert_allclose(hf_logits(reloaded.eval(), tokens), ours, rtol=0, atol=1e-4)
    # And reading our own sharded output back gives the same params.
    _, again = hf.load_hf(out)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def run_convert(*args):
    return run_module("phi3_jax.convert", *args)


def test_convert_cli_round_trip(hf_dir, tmp_path):
    ckpt, back = tmp_path / "ckpt", tmp_path / "back"
    result = run_convert("hf-to-orbax", f"--hf_dir={hf_dir}", f"--out={ckpt}")
    assert result.returncode == 0, result.stderr
    assert os.path.isfile(ckpt / "config.json") and os.path.isdir(ckpt / "params")
    result = run_convert("orbax-to-hf", f"--ckpt={ckpt}", f"--out={back}")
    assert result.returncode == 0, result.stderr
    assert_same_tensors(hf_dir, back)


def copy_dir(src, dst):
    os.makedirs(dst)
    for name in os.listdir(src):
        with open(os.path.join(src, name), "rb") as f:
            data = f.read()
        with open(os.path.join(dst, name), "wb") as f:
            f.write(data)


def test_not_a_phi3_directory(tmp_path):
    with pytest.raises(hf.HFFormatError, match=r"config\.json: not found"):
        hf.load_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(hf.HFFormatError, match=r"model_type='llama' is not a Phi-3"):
        hf.load_hf(tmp_path)


def test_convert_of_a_directory_with_only_pytorch_model_bin_is_one_line(hf_dir, tmp_path):
    pickled = tmp_path / "pickled"
    copy_dir(hf_dir, pickled)
    os.remove(pickled / "model.safetensors")
    torch.save({"lm_head.weight": torch.zeros(2, 2)}, pickled / "pytorch_model.bin")
    result = run_convert("hf-to-orbax", f"--hf_dir={pickled}", f"--out={tmp_path / 'out'}")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"hf-to-orbax: {pickled}: holds only PyTorch pickled weights (pytorch_model.bin), which "
        "are not read (unpickling can run any code); save the model as safetensors first "
        "(transformers: save_pretrained(DIR, safe_serialization=True))"
    )
    assert not os.path.exists(tmp_path / "out")


def test_missing_shard(hf_dir, tmp_path):
    config, params = hf.load_hf(hf_dir)
    out = tmp_path / "sharded"
    hf.save_hf(config, params, out, max_shard_bytes=100_000)
    shards = sorted(name for name in os.listdir(out) if name.endswith(".safetensors"))
    assert len(shards) > 2
    os.remove(out / shards[1])
    with pytest.raises(hf.HFFormatError, match=rf"{shards[1]}: shard listed"):
        hf.load_hf(out)


def test_truncated_shard(hf_dir, tmp_path):
    broken = tmp_path / "truncated"
    copy_dir(hf_dir, broken)
    file = broken / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(hf.HFFormatError, match=r"model\.safetensors"):
        hf.load_hf(broken)


def test_shape_disagrees_with_config(hf_dir, tmp_path):
    broken = tmp_path / "shape"
    copy_dir(hf_dir, broken)
    config = json.loads((broken / "config.json").read_text())
    config["intermediate_size"] = 64
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        hf.HFFormatError, match=r"tensor 'model\.layers\.0\.mlp\.gate_up_proj\.weight' has shape"
    ):
        hf.load_hf(broken)


def test_save_refuses_to_overwrite(hf_dir, tmp_path):
    config, params = hf.load_hf(hf_dir)
    with pytest.raises(FileExistsError, match="already exists"):
        hf.save_hf(config, params, hf_dir)
