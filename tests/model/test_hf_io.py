"""HF directory I/O whatever the family: config.json and safetensors written whole (sharded past
the limit, with an index) and read back tensor by tensor against the shapes the config implies;
every fault one HFFormatError naming the file and tensor; the run config around a model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from configs import phi3_tiny
from phi3_jax import config as config_lib
from phi3_jax.model import hf_io
from phi3_jax.model.hf_io import HFFormatError

TENSORS = {
    "a.weight": np.arange(12, dtype=np.float32).reshape(3, 4),
    "b.weight": np.ones(8, np.float32),
    "c.weight": np.full((2, 2), 7, np.float32),
}
SHAPES = {name: array.shape for name, array in TENSORS.items()}


@pytest.mark.parametrize("max_shard_bytes", [hf_io.DEFAULT_MAX_SHARD_BYTES, 40])
def test_written_tensors_read_back_by_name(tmp_path, max_shard_bytes):
    out = str(tmp_path / "hf")
    also = []
    hf_io.write_checkpoint(out, {"model_type": "x"}, TENSORS, max_shard_bytes, also.append)
    assert len(also) == 1 and also[0] != out  # added in the temporary directory, then renamed
    assert hf_io.read_json(f"{out}/config.json") == {"model_type": "x"}
    sharded = (tmp_path / "hf" / hf_io.INDEX_FILE).exists()
    assert sharded == (max_shard_bytes == 40)
    if sharded:
        index = json.loads((tmp_path / "hf" / hf_io.INDEX_FILE).read_text())
        assert index["metadata"]["total_size"] == 48 + 32 + 16
        assert len(set(index["weight_map"].values())) == 3
    read = hf_io.checkpoint_reader(out, SHAPES)
    for name, array in TENSORS.items():
        np.testing.assert_array_equal(read(name), array)


def test_faults_name_the_file_and_tensor(tmp_path):
    out = str(tmp_path / "hf")
    hf_io.write_checkpoint(out, {}, TENSORS, 40)
    with pytest.raises(HFFormatError, match=r"tensor 'c.weight' is not part of a Phi-3 \(1 "):
        hf_io.checkpoint_reader(out, {k: SHAPES[k] for k in ("a.weight", "b.weight")})
    wrong = hf_io.checkpoint_reader(out, SHAPES | {"a.weight": (4, 3), "d.weight": (1,)})
    with pytest.raises(HFFormatError, match=r"tensor 'a.weight' has shape \(3, 4\), config.json"):
        wrong("a.weight")
    with pytest.raises(HFFormatError, match=r"tensor 'd.weight' is missing"):
        wrong("d.weight")
    (tmp_path / "hf" / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(HFFormatError, match=r"00002-of-00003.safetensors: shard listed in .* is"):
        hf_io.checkpoint_reader(out, SHAPES)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(HFFormatError, match=r"only PyTorch pickled weights \(pytorch_model.bin\)"):
        hf_io.checkpoint_reader(str(tmp_path / "empty"), SHAPES)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(HFFormatError, match=r"bad.json: invalid JSON"):
        hf_io.read_json(str(tmp_path / "bad.json"))
    with pytest.raises(HFFormatError, match=r"gone.json: not found"):
        hf_io.read_json(str(tmp_path / "gone.json"))


def test_the_run_config_around_a_model_is_frozen_and_fits_its_context():
    model = phi3_tiny.get_config().model
    model.max_position_embeddings = model.original_max_position_embeddings = 64
    config = hf_io.run_config(model)
    assert config.variant == "hf" and config.train.seq_len == 64
    assert config == config_lib.freeze(config)  # frozen: returned as is
    model.num_heads = 0
    with pytest.raises(HFFormatError, match=r"^config.json: model.num_heads=0"):
        hf_io.validated_model(model, "config.json")
