"""Bad meshes, batches, microbatches and rules: one-line errors naming the key, raised before
anything compiles (sharding.py)."""

from __future__ import annotations

import contextlib
import logging
import pathlib
import re
import sys

import jax
import pytest

from phi3_jax import sharding, train
from phi3_jax.config import ConfigError

sys.path.insert(0, str(pathlib.Path(__file__).parent / "train"))
from train_fixtures import small_config  # noqa: E402


class _Messages(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def raises_one_line(pattern: str):
    """Expects a one-line ConfigError matching `pattern`, raised before the init or train step
    is compiled (tiny eager ops such as making a PRNG key may compile)."""
    handler = _Messages()
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    try:
        with jax.log_compiles(), pytest.raises(ConfigError) as info:
            yield
    finally:
        logger.removeHandler(handler)
    message = str(info.value)
    assert "\n" not in message, message
    assert re.search(pattern, message), message
    compiled = [m for m in handler.messages if m.startswith("Finished XLA compilation")]
    assert not [m for m in compiled if "jit(step)" in m or "jit(_init)" in m], compiled


@pytest.mark.parametrize(
    ("mesh", "pattern"),
    [
        ((3, 1, 1), r"^mesh=.*data\*fsdp\*tensor = 3 but there are 8 devices"),
        ((2, 2, 1), r"^mesh=.*= 4 but there are 8 devices"),
        ((3, -1, 1), r"^mesh\.fsdp=-1: the other axes \(3\) do not divide 8"),
    ],
)
def test_mesh_not_matching_the_devices(mesh, pattern):
    with raises_one_line(pattern):
        sharding.make_mesh(small_config(mesh).mesh)


def test_dcn_factor_not_dividing_the_devices():
    config = small_config((1, -1, 1))
    config.mesh.dcn_fsdp = 3
    with raises_one_line(r"^mesh\.dcn_data \* mesh\.dcn_fsdp=3: must divide the device count 8"):
        sharding.make_mesh(config.mesh)


def test_dcn_mesh_on_one_process_needs_as_many_granules():
    config = small_config((1, 4, 1))
    config.mesh.dcn_data = 2
    with pytest.raises(ValueError, match="must equal the product of dcn_mesh_shape"):
        sharding.make_mesh(config.mesh)


def test_batch_not_divisible_by_the_data_parallel_size():
    config = small_config((8, 1, 1), global_batch_size=12)
    mesh = sharding.make_mesh(config.mesh)
    with raises_one_line(
        r"^train\.global_batch_size=12: must be a multiple of the data-parallel size 8"
    ):
        train.make_train_step(config, mesh)


def test_microbatches_not_splitting_over_the_data_parallel_size():
    config = small_config((2, 2, 2), microbatches=4)
    mesh = sharding.make_mesh(config.mesh)
    with raises_one_line(
        r"^train\.microbatches=4: microbatches of 2 rows do not split over the data-parallel size 4"
    ):
        train.make_train_step(config, mesh)


def test_a_logical_axis_without_a_rule_names_the_parameter():
    config = small_config((2, 2, 2))
    config.sharding.logical_axis_rules = tuple(
        rule for rule in config.sharding.logical_axis_rules if rule[0] != "mlp"
    )
    mesh = sharding.make_mesh(config.mesh)
    with raises_one_line(r"no rule for logical axis 'mlp' of layers/mlp/down_proj/kernel"):
        train.init_state(config, mesh)


def test_a_dimension_that_does_not_split_names_the_parameter():
    config = small_config((1, 1, 8))  # 4 heads cannot split 8 ways
    mesh = sharding.make_mesh(config.mesh)
    with raises_one_line(
        r"layers/self_attn/k_proj/kernel dim 4 does not divide over mesh axes tensor of size 8"
    ):
        train.make_train_step(config, mesh)
