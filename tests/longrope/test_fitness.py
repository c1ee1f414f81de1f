"""`phi3_jax.longrope.fitness`: candidates scored through one compiled function on an 8-device
mesh give the perplexity of a model whose config holds those factors (computed independently,
on one device, with numpy's log-softmax); long rows are cut as documented."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from phi3_jax import config as config_lib
from phi3_jax import model, sharding
from phi3_jax.longrope import factors as factors_lib
from phi3_jax.longrope import fitness

ORIGINAL, TARGET = 32, 128


def _tiny():
    config = config_lib.default_config()  # 2 layers, head_dim 16: 8 rotary pairs
    config.mesh.fsdp = 8
    return config


def _reference_nll(config, params, rows) -> np.ndarray:
    """Next-token NLL [rows, length - 1] in float64."""
    logits = jax.jit(lambda p, t: model.logits(config, p, t))(params, rows)
    logits = np.asarray(logits, np.float64)[:, :-1]
    logp = logits - np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1))[..., None]
    logp -= logits.max(-1, keepdims=True)
    return -np.take_along_axis(logp, rows[:, 1:, None], axis=-1)[..., 0]


def test_candidates_share_one_compile_and_match_the_configured_model():
    base = _tiny()
    config = fitness.extended_config(base, TARGET, ORIGINAL)
    assert (
        config.model.rope_scaling == "longrope" and config.model.max_position_embeddings == TARGET
    )
    params = jax.jit(lambda key: model.init_params(config, key))(jax.random.key(0))
    rows = (
        np.random.default_rng(0).integers(3, 500, (3, TARGET)).astype(np.int32)
    )  # 3 rows, 8 devices
    mesh = sharding.make_mesh(config.mesh)
    scorer = fitness.PositionNLL(config, params, rows, mesh)
    seeds = factors_lib.seeds(16, TARGET / ORIGINAL, config.model.rope_theta, ORIGINAL)
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, _, **kw: (
            compiles.append(event)
            if event == "/jax/core/compile/backend_compile_duration"
            else None
        )
    )
    got = {name: scorer(f) for name, f in seeds.items()}
    got["pi again"] = scorer(seeds["pi"])
    by_row = {name: scorer.row_nll(f) for name, f in seeds.items()}
    assert scorer.compiles == 1 and len(compiles) == 1
    np.testing.assert_array_equal(got["pi"], got["pi again"])
    assert len({round(float(v.mean()), 6) for v in got.values()}) == 3  # the factors matter
    for name in ("ntk", "yarn"):
        factors = seeds[name]
        fixed = fitness.extended_config(base, TARGET, ORIGINAL)
        fixed.model.rope_long_factor = tuple(float(f) for f in factors)
        want = _reference_nll(fixed, params, rows)
        np.testing.assert_allclose(got[name], want.mean(axis=0), rtol=2e-5, atol=2e-5)
        np.testing.assert_allclose(by_row[name], want.mean(axis=1), rtol=2e-5, atol=2e-5)
        assert by_row[name].shape == (3,)  # the padding rows left out
        assert scorer.perplexity(factors) == pytest.approx(np.exp(want.mean()), rel=2e-5)


def test_long_rows_whole_and_joined():
    def encode(text):
        return [int(w) for w in text.split()]

    texts = ["5 6 7 8 9 10", "11 12", "13 14 15 16 17 18 19"]
    whole = fitness.long_rows(texts, encode, 6, 2, bos=1, eos=2, mode=fitness.WHOLE)
    np.testing.assert_array_equal(whole, [[1, 5, 6, 7, 8, 9], [1, 13, 14, 15, 16, 17]])
    joined = fitness.long_rows(texts, encode, 5, None, bos=None, eos=2, mode=fitness.JOINED)
    np.testing.assert_array_equal(
        joined, [[5, 6, 7, 8, 9], [10, 2, 11, 12, 2], [13, 14, 15, 16, 17]]
    )
    with pytest.raises(fitness.FitnessError, match="2 documents of at least 6 tokens; 3 needed"):
        fitness.long_rows(texts, encode, 6, 3, bos=1, eos=2)


def test_row_parts_interleave():
    def encode(text):
        return [int(w) for w in text.split()]

    texts = [" ".join(str(10 + i) for i in range(20))]
    every = fitness.long_rows(texts, encode, 3, None, bos=None, eos=2, mode=fitness.JOINED)
    for part in ("0/2", "1/2", "2/3"):
        r, n = fitness.row_part(part)
        got = fitness.part_rows(texts, encode, 3, 2, (r, n), bos=None, eos=2, mode=fitness.JOINED)
        np.testing.assert_array_equal(got, every[r::n][:2])
    for bad in ("2/2", "1", "a/b", "-1/2"):
        with pytest.raises(fitness.FitnessError, match=f"rows='{bad}': expected R/N"):
            fitness.row_part(bad)


def test_held_out_uses_the_pipelines_hash():
    from phi3_jax.data import sources

    texts = [f"document {i}" for i in range(200)]
    kept = fitness.held_out(texts, 0.1)
    assert kept == [t for t in texts if sources.eval_fraction_of(t) < 0.1] and 5 < len(kept) < 40
    assert fitness.held_out(texts, 0.0) == texts


def test_bucket_perplexity():
    nll = np.log(np.array([1.0, 1.0, 4.0, 4.0]))
    assert fitness.bucket_perplexity(nll, 2) == [(1, 2, 1.0), (3, 4, pytest.approx(4.0))]
