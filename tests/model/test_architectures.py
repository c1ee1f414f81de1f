"""The architecture table: it covers every architecture the config accepts, and every entry point
(`init_params`, `logits`, `decode`, `hidden_states`, `lm_head_logits`) runs each family's own
decoder or refuses with an error naming the architecture; none silently builds Phi-3."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from phi3_jax import config as config_lib
from phi3_jax import model as phi3
from phi3_jax.model import architectures

TOKENS = np.array([[5, 17, 3, 42, 8, 11]])


def tiny(variant: str):
    config = base.get_config(variant)
    config.model.update(num_layers=2, hidden_size=32, intermediate_size=64, num_heads=4)
    config.model.num_kv_heads = 2
    config.train.seq_len = 16
    return config_lib.validate(config)


def test_table_covers_the_configs_architectures():
    assert set(architectures.ARCHITECTURES) == set(config_lib.ARCHITECTURES)
    for name, arch in architectures.ARCHITECTURES.items():
        assert architectures.of_hf_model_type(arch.hf_model_type) is arch, name


@pytest.mark.parametrize("variant, architecture", [("tiny", "phi3"), ("small_tiny", "phi3small")])
def test_entry_points_use_each_familys_decoder(variant, architecture):
    config = tiny(variant)
    assert architectures.of(config).name == architecture
    params = phi3.init_params(config, jax.random.key(0))
    # Each family's own parameter tree: Phi-3 has an lm_head, Phi-3-small ties it.
    assert ("lm_head" in params) == (architecture == "phi3")
    full = np.asarray(phi3.logits(config, params, TOKENS))

    cache = phi3.init_cache(config, 1, 16)
    last, cache = phi3.decode(config, params, TOKENS[:, :-1], cache, last_only=True)
    np.testing.assert_allclose(np.asarray(last), full[:, -2], rtol=0, atol=1e-4)
    step, _ = phi3.decode(config, params, TOKENS[:, -1:], cache)
    np.testing.assert_allclose(np.asarray(step[:, 0]), full[:, -1], rtol=0, atol=1e-4)

    if architecture == "phi3":
        hidden = phi3.hidden_states(config, params, TOKENS)
        np.testing.assert_allclose(
            np.asarray(phi3.lm_head_logits(config, params, hidden)), full, rtol=0, atol=1e-5
        )
    else:
        with pytest.raises(ValueError, match=r"^hidden_states: model.architecture='phi3small'"):
            phi3.hidden_states(config, params, TOKENS)
        hidden = jnp.zeros((1, TOKENS.shape[1], config.model.hidden_size))
        with pytest.raises(ValueError, match=r"^lm_head_logits: model.architecture='phi3small'"):
            phi3.lm_head_logits(config, params, hidden)
