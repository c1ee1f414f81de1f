"""A tiny model (2 layers, the bundled tokenizer) served on 127.0.0.1 by the test itself."""

from __future__ import annotations

import contextlib
import functools

import jax

from configs import phi3_tiny
from phi3_jax import config as config_lib
from phi3_jax import model
from phi3_jax.data.tokenizer import load_tokenizer
from phi3_jax.eval.source import Loaded
from phi3_jax.serve.api import make_app
from phi3_jax.serve.background import BackgroundServer
from phi3_jax.serve.engine import Engine

MODEL = "tiny-test"


@functools.cache
def tiny_loaded(context: int = 128) -> Loaded:
    config = phi3_tiny.get_config()
    config.model.update(
        num_layers=2,
        hidden_size=64,
        intermediate_size=128,
        max_position_embeddings=context,
        original_max_position_embeddings=context,
    )
    config = config_lib.validate(config)
    # Sharper logits than at init, so greedy choices are not near-ties.
    params = jax.tree.map(lambda x: 6 * x, model.init_params(config, jax.random.key(3)))
    return Loaded(config, params, load_tokenizer(config), True, {"test": "tiny"})


@contextlib.contextmanager
def served(wait_s: float = 0.01, max_rows: int = 32, context: int = 128, mesh=None):
    """(base URL, engine) of the tiny model (`context` positions) served while the block runs."""
    engine = Engine(tiny_loaded(context), wait_s=wait_s, max_rows=max_rows, mesh=mesh)
    with BackgroundServer(make_app(engine, MODEL)) as url:
        yield url, engine
