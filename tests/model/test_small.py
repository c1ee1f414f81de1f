"""Phi-3-small: logits against an independent NumPy reference of the published formulas (run on
Hugging Face-layout tensors), HF directory round trips, the 7.4B parameter count, cached decoding
against a full recompute, the analytic FLOPs against the mask, dropout, scan/unroll and remat
equivalence, and config errors."""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cli_fixtures import REPO, run_module
from hf_fixtures import tensors_of
from safetensors.numpy import save_file

from configs import phi3_small
from phi3_jax import config as config_lib
from phi3_jax import metrics
from phi3_jax import model as phi3
from phi3_jax.model import hf, hf_small, small

# ----------------------------------------------------------------------------------------------
# The NumPy reference: PHI3.md §3 written out on HF tensor names, in float64.


def np_layer_norm(x, weight, bias, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def np_gegelu(u, limit):
    gelu_in, linear_in = u[..., 0::2], u[..., 1::2]
    gelu_in = np.where(np.isinf(gelu_in), gelu_in, np.minimum(gelu_in, limit))
    linear_in = np.where(np.isinf(linear_in), linear_in, np.clip(linear_in, -limit, limit))
    return gelu_in / (1 + np.exp(-1.702 * gelu_in)) * (linear_in + 1)


def np_rotary(x, theta):
    """Rotate-half RoPE over all of head_dim, positions 0..T-1; x [b, t, heads, d]."""
    length, dim = x.shape[1], x.shape[-1]
    inv_freq = 1.0 / theta ** (np.arange(0, dim, 2) / dim)
    angles = np.arange(length)[:, None] * inv_freq
    angles = np.concatenate([angles, angles], -1)[None, :, None]
    first, second = x[..., : dim // 2], x[..., dim // 2 :]
    return x * np.cos(angles) + np.concatenate([-second, first], -1) * np.sin(angles)


def np_attention_mask(m, layer, length):
    """[heads, q, k]: causal; on blocksparse layers, the local blocks or the head's stripes."""
    i, j = np.arange(length)[:, None], np.arange(length)[None]
    causal = np.broadcast_to(j <= i, (m.num_heads, length, length))
    if (layer + 1) % m.dense_attention_every_n_layers == 0:
        return causal
    qb, kb = i // m.blocksparse_block_size, j // m.blocksparse_block_size
    h = np.arange(m.num_heads)[:, None, None]
    step = max(1, m.blocksparse_vert_stride // m.num_heads)
    vertical = (kb + h * step + 1) % m.blocksparse_vert_stride == 0
    return causal & ((qb - kb < m.blocksparse_num_local_blocks) | vertical)


def np_logits(m, tensors, tokens):
    w = {name: t.astype(np.float64) for name, t in tensors.items()}
    batch, length = tokens.shape
    nh, nkv = m.num_heads, m.num_kv_heads
    hd, g = m.hidden_size // nh, nh // nkv
    x = w["model.embed_tokens.weight"][tokens] * m.mup_embedding_multiplier
    for n in range(m.num_layers):
        p = f"model.layers.{n}."
        h = np_layer_norm(
            x, w[p + "input_layernorm.weight"], w[p + "input_layernorm.bias"], m.layer_norm_eps
        )
        mixed = h @ w[p + "self_attn.query_key_value.weight"].T
        mixed = (mixed + w[p + "self_attn.query_key_value.bias"]).reshape(
            batch, length, nkv, g + 2, hd
        )
        q = np_rotary(mixed[:, :, :, :g].reshape(batch, length, nh, hd), m.rope_theta)
        k = np.repeat(np_rotary(mixed[:, :, :, g], m.rope_theta), g, axis=2)
        v = np.repeat(mixed[:, :, :, g + 1], g, axis=2)
        scores = np.einsum("bqhd,bkhd->bhqk", q, k) * m.mup_attn_multiplier / hd
        scores = np.where(np_attention_mask(m, n, length), scores, -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        attn = np.einsum("bhqk,bkhd->bqhd", probs, v).reshape(batch, length, nh * hd)
        x = x + attn @ w[p + "self_attn.dense.weight"].T + w[p + "self_attn.dense.bias"]
        h = np_layer_norm(
            x,
            w[p + "post_attention_layernorm.weight"],
            w[p + "post_attention_layernorm.bias"],
            m.layer_norm_eps,
        )
        u = h @ w[p + "mlp.up_proj.weight"].T + w[p + "mlp.up_proj.bias"]
        mlp = np_gegelu(u, m.gegelu_limit) @ w[p + "mlp.down_proj.weight"].T
        x = x + mlp + w[p + "mlp.down_proj.bias"]
    x = np_layer_norm(
        x, w["model.final_layernorm.weight"], w["model.final_layernorm.bias"], m.layer_norm_eps
    )
    logits = x @ w["model.embed_tokens.weight"].T / m.mup_width_multiplier
    logits[..., list(m.dummy_token_ids)] = -np.inf
    return logits


# ----------------------------------------------------------------------------------------------


def tiny_config(**model_overrides):
    config = phi3_small.get_config("tiny")
    config.model.update(model_overrides)
    return config_lib.validate(config)


def random_params(config, seed=0):
    """Random params of the model's shapes (no init compile): weights N(0, 0.05), biases
    N(0, 0.05), norm scales 1 + N(0, 0.1), so biases and norms all matter."""
    rng = np.random.default_rng(seed)

    def draw(path, shape):
        noise = rng.normal(size=shape.shape).astype(np.float32)
        if jax.tree_util.keystr(path).endswith("['scale']"):
            return 1 + 0.1 * noise
        return 0.05 * noise

    return jax.tree_util.tree_map_with_path(draw, phi3.abstract_params(config))


def logits_fn(config):
    """phi3.logits jitted for one config (op-by-op execution of the scan is slow)."""
    return jax.jit(lambda params, tokens: phi3.logits(config, params, tokens))


# 48 tokens reach past the 2 local blocks of 8 into the vertical stripes (stride 4).
TOKENS = np.random.default_rng(0).integers(0, 496, (2, 50))


@pytest.mark.parametrize("flat_projections", [False, True])
def test_logits_equal_numpy_reference(flat_projections):
    config = tiny_config(flat_projections=flat_projections)
    params = random_params(config)
    ours = np.asarray(logits_fn(config)(params, TOKENS))
    want = np_logits(config.model, hf_small.params_to_hf(params, config.model), TOKENS)
    dummy = np.isinf(want)
    assert dummy.sum() == TOKENS.size * len(config.model.dummy_token_ids)
    np.testing.assert_array_equal(np.isneginf(ours), dummy)
    np.testing.assert_allclose(ours[~dummy], want[~dummy], rtol=0, atol=1e-4)


def test_blocksparse_layers_differ_from_dense():
    """The pattern is live at this length: all-dense layers give other logits."""
    config = tiny_config()
    params = random_params(config)
    sparse = np.asarray(logits_fn(config)(params, TOKENS))
    all_dense = tiny_config(blocksparse_num_local_blocks=64)  # local window covers every block
    dense = np.asarray(logits_fn(all_dense)(params, TOKENS))
    finite = ~np.isinf(dense)
    # The first 2 blocks of 8 lie inside every local window: the same up to rounding.
    np.testing.assert_allclose(sparse[:, :16], dense[:, :16], rtol=0, atol=1e-6)
    assert np.abs(sparse[finite] - dense[finite]).max() > 1e-3


def test_gegelu_clamps_as_published():
    values = np.array([-np.inf, -50.0, -20.0, -3.0, 0.0, 0.7, 19.0, 20.0, 35.0, np.inf])
    gate, up = np.meshgrid(values, values, indexing="ij")
    interleaved = np.stack([gate, up], -1).reshape(len(values), -1)
    with np.errstate(invalid="ignore", over="ignore"):
        want = np_gegelu(interleaved, 20.0)
    got = np.asarray(small.gegelu(jnp.asarray(gate), jnp.asarray(up), 20.0))
    # float32 against float64: a few roundings of 6e-8 each; nan where inf * 0 (as in torch).
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=0, equal_nan=True)


def test_full_size_parameter_count():
    assert phi3.param_count(phi3_small.get_config()) == 7_392_272_384


def test_summary_cli():
    result = run_module("phi3_jax.model.summary", "--config=configs/phi3_small.py")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "total: 7,392,272,384 parameters"
    assert any(
        line.split()[0] == "layers/block_1/self_attn/q_proj/bias"
        and "(16, 32, 128)" in line
        and "('layers', 'heads', 'head_dim')" in line
        for line in lines
    )


# ----------------------------------------------------------------------------------------------
# HF layout


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    config = tiny_config()
    params = random_params(config, seed=2)
    directory = tmp_path_factory.mktemp("small") / "hf"
    hf.save_hf(config, params, directory, max_shard_bytes=200_000)
    return config, params, directory


def test_export_layout(exported):
    config, _, directory = exported
    assert os.path.exists(directory / hf.INDEX_FILE)  # sharded at 200 kB
    tensors = tensors_of(directory)
    assert {k: v.shape for k, v in tensors.items()} == {
        k: v for k, v in hf_small.hf_tensor_shapes(config.model).items() if k != "lm_head.weight"
    }
    hf_config = json.loads((directory / hf.CONFIG_FILE).read_text())
    assert hf_config["model_type"] == "phi3small"
    assert hf_config["ff_intermediate_size"] == 96
    assert hf_config["rope_embedding_base"] == 1e6


def test_round_trip_bit_identical(exported, tmp_path):
    config, params, directory = exported
    loaded_config, loaded = hf_small.load_hf(directory)
    # Everything but the name and the compute dtype (a run choice, not in config.json).
    ignored = {"name": None, "dtype": None}
    assert {**loaded_config.model.to_dict(), **ignored} == {**config.model.to_dict(), **ignored}
    for got, want in zip(jax.tree.leaves(loaded), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(got, np.asarray(want))
    again = tmp_path / "again"
    hf.save_hf(loaded_config, loaded, again)
    first, second = tensors_of(directory), tensors_of(again)
    assert sorted(first) == sorted(second)
    for name in first:
        assert first[name].dtype == second[name].dtype
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)


def test_generic_entry_points_dispatch_to_small(exported, tmp_path):
    """hf.load_hf / hf.save_hf (the convert CLI's) handle Phi-3-small directories too."""
    config, params, directory = exported
    _, loaded = hf.load_hf(directory)
    hf.save_hf(config, loaded, tmp_path / "out")
    assert json.loads((tmp_path / "out" / hf.CONFIG_FILE).read_text())["model_type"] == "phi3small"
    first, second = tensors_of(directory), tensors_of(tmp_path / "out")
    assert sorted(first) == sorted(second)
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)


def write_single_file_dir(directory, hf_config, tensors):
    directory.mkdir()
    (directory / hf.CONFIG_FILE).write_text(json.dumps(hf_config))
    save_file(tensors, str(directory / hf.SINGLE_FILE))


def test_tied_lm_head_is_accepted_and_checked(exported, tmp_path):
    config, _, directory = exported
    hf_config = json.loads((directory / hf.CONFIG_FILE).read_text())
    tensors = tensors_of(directory)
    tied = dict(tensors, **{"lm_head.weight": tensors["model.embed_tokens.weight"]})
    write_single_file_dir(tmp_path / "tied", hf_config, tied)
    hf_small.load_hf(tmp_path / "tied")
    untied = dict(tensors, **{"lm_head.weight": tensors["model.embed_tokens.weight"] + 1})
    write_single_file_dir(tmp_path / "untied", hf_config, untied)
    with pytest.raises(hf.HFFormatError, match="lm_head.weight differs from model.embed_tokens"):
        hf_small.load_hf(tmp_path / "untied")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model_type": "phi3"}, "model_type='phi3': is not a Phi-3-small"),
        ({"hidden_act": "silu"}, "hidden_act='silu': Phi-3-small uses gegelu"),
        ({"rope_scaling": {"type": "su"}}, "rope_scaling=.*only the 8K"),
        (
            {"blocksparse_vert_stride": None},
            "model.blocksparse_vert_stride=None: must be a positive",
        ),
    ],
)
def test_bad_config_json(exported, tmp_path, change, message):
    _, _, directory = exported
    hf_config = json.loads((directory / hf.CONFIG_FILE).read_text()) | change
    write_single_file_dir(tmp_path / "bad", hf_config, tensors_of(directory))
    with pytest.raises(hf.HFFormatError, match=message):
        hf_small.load_hf(tmp_path / "bad")


def test_published_config_json_loads():
    """The released Phi-3-small-8k config.json gives the `small` variant's model section."""
    path = os.path.join(
        REPO, "..", "shared", "reference", "phi3_configs", "phi-3-small-8k-instruct.config.json"
    )
    if not os.path.exists(path):
        pytest.skip(f"{path} not present")
    with open(path) as f:
        model = hf_small.model_config_from_hf(json.load(f), path)
    want = phi3_small.get_config().model
    for key in want:
        if key != "name":
            assert model[key] == want[key], key


# ----------------------------------------------------------------------------------------------
# Cached decoding


def test_cached_decoding_equals_full_recompute_at_every_step():
    """Through phi3_jax.model.init_cache / decode (what generate calls): a 13-token prompt (past
    one block of 8), then chunks of 1 and 3 tokens up to 40, past the 2-block local window into
    the vertical stripes, on both dense and blocksparse layers with GQA (4 heads, 2 kv heads).
    Row 1 is left-padded by 3 slots: its blocks count from its own first token. Each call's
    logits equal a full forward pass over each row's own sequence (causal: one pass over the
    whole sequence gives every step's)."""
    config = tiny_config()
    m = config.model
    assert (m.num_heads, m.num_kv_heads, m.num_layers) == (4, 2, 4)
    params = random_params(config)
    rng = np.random.default_rng(1)
    total, pad = 40, 3
    rows = [rng.integers(0, 496, total), rng.integers(0, 496, total - pad)]
    want = [np.asarray(logits_fn(config)(params, row[None]))[0] for row in rows]
    slots = np.zeros((2, total), np.int32)  # each row's tokens at its cache slots
    slots[0], slots[1, pad:] = rows

    decode = jax.jit(functools.partial(phi3.decode, config))
    cache = phi3.init_cache(config, 2, total, start=np.array([0, pad]))
    chunks = [13, 1, 1, 3, 1, 1, 1, 3] + [1] * 16
    assert sum(chunks) == total
    done = 0
    for n in chunks:
        got, cache = decode(params, slots[:, done : done + n], cache)
        got = np.asarray(got)
        for b, start in enumerate((0, pad)):
            # Row b's cache slots done..done+n hold its positions done-start..; left padding
            # (slots before start) gives logits nobody reads.
            first = max(done, start)
            expected = want[b][first - start : done + n - start]
            np.testing.assert_allclose(got[b, first - done :], expected, rtol=0, atol=1e-5)
        done += n
    np.testing.assert_array_equal(np.asarray(cache["index"]), [total, total])


# ----------------------------------------------------------------------------------------------
# Analytic FLOPs


def test_analytic_flops_count_the_blocks_the_mask_keeps():
    """metrics' attention count per blocksparse layer, derived here from the NumPy reference
    mask of the published rule: a key block counts, whole, for a query block when the mask keeps
    any of their token pairs. Dense layers count the whole row (PaLM's convention, as for mini).
    50 tokens: 7 blocks of 8, the last one partial."""
    config = phi3_small.get_config("tiny")
    config.train.seq_len = length = 50
    config = config_lib.validate(config)
    m = config.model
    size, heads = m.blocksparse_block_size, m.num_heads
    blocks = -(-length // size)
    token_block = np.arange(length) // size
    keys = []
    for layer in range(m.num_layers):
        if (layer + 1) % m.dense_attention_every_n_layers == 0:
            keys.append(length)
            continue
        mask = np_attention_mask(m, layer, length)
        kept = np.zeros((heads, blocks, blocks), bool)
        for q in range(blocks):
            for k in range(blocks):
                pairs = mask[:, q * size : (q + 1) * size, k * size : (k + 1) * size]
                kept[:, q, k] = pairs.any(axis=(1, 2))
        keys.append(kept[:, token_block][:, :, token_block].sum() / (heads * length))
    assert 0 < keys[0] < length / 2  # the pattern drops most of this row's keys
    assert metrics.attention_keys(config) == pytest.approx(keys, rel=1e-12)
    # Tied embeddings: every parameter multiplies. 3x the forward attention (forward + backward).
    want = 6.0 * phi3.param_count(config) + 12.0 * m.hidden_size * sum(keys)
    assert metrics.flops_per_token(config) == {
        "model": pytest.approx(want, rel=1e-12),
        "remat": 0.0,
    }


# ----------------------------------------------------------------------------------------------
# Dropout, scan, remat, config


def test_dropout_only_with_an_rng():
    config = tiny_config()
    params = random_params(config)

    @jax.jit
    def train_logits(params, key):
        return phi3.logits(config, params, TOKENS, dropout_rng=key)

    plain = np.asarray(logits_fn(config)(params, TOKENS))
    first = np.asarray(train_logits(params, jax.random.key(1)))
    np.testing.assert_array_equal(first, np.asarray(train_logits(params, jax.random.key(1))))
    other = np.asarray(train_logits(params, jax.random.key(2)))
    finite = ~np.isinf(plain)
    assert np.abs(first[finite] - plain[finite]).max() > 1e-3
    assert np.abs(first[finite] - other[finite]).max() > 1e-3
    no_dropout = tiny_config(embedding_dropout=0.0, ffn_dropout=0.0)
    unchanged = jax.jit(lambda p, k: phi3.logits(no_dropout, p, TOKENS, dropout_rng=k))
    np.testing.assert_array_equal(np.asarray(unchanged(params, jax.random.key(1))), plain)


def loss_and_grads(config, params, tokens):
    def loss(p):
        logits = phi3.logits(config, p, tokens)
        return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    return jax.jit(jax.value_and_grad(loss))(params)


@functools.cache
def scanned_loss_and_grads():
    config = tiny_config()
    return loss_and_grads(config, random_params(config), TOKENS[:, :20])


@pytest.mark.parametrize(
    "scan_layers, remat",
    # Unrolling recompiles every layer's gradient: the slowest compile here.
    [pytest.param(False, "none", marks=pytest.mark.slow), (True, "full")],
)
def test_scan_unroll_and_remat_agree(scan_layers, remat):
    want_loss, want_grads = scanned_loss_and_grads()
    config = tiny_config(scan_layers=scan_layers, remat=remat)
    got_loss, got_grads = loss_and_grads(config, random_params(config), TOKENS[:, :20])
    np.testing.assert_allclose(got_loss, want_loss, rtol=0, atol=1e-6)
    for got, want in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_one_compiled_group_whatever_the_depth():
    """Layers are scanned in (blocksparse, dense) pairs: 4 and 32 layers lower to the same
    number of attention einsums."""
    tokens = jnp.zeros((1, 20), jnp.int32)

    def einsums(config):
        params = phi3.abstract_params(config)
        hlo = jax.jit(lambda p: phi3.logits(config, p, tokens)).lower(params).as_text()
        return hlo.count("dot_general")

    assert einsums(tiny_config()) == einsums(tiny_config(num_layers=32))


INVALID = [
    ("architecture", "phi4", "model.architecture='phi4': must be one of phi3, phi3small"),
    ("dense_attention_every_n_layers", 3, "model.dense_attention_every_n_layers=3: must divide"),
    ("blocksparse_block_size", 0, "model.blocksparse_block_size=0: must be a positive integer"),
    ("ffn_dropout", 1.0, "model.ffn_dropout=1.0: must lie in [0, 1)"),
    ("dummy_token_ids", (3, 600), "model.dummy_token_ids=600: must lie in [0, 512)"),
    ("mup_width_multiplier", 0.0, "model.mup_width_multiplier=0.0: must be positive"),
]


@pytest.mark.parametrize("key, value, message", INVALID, ids=[case[0] for case in INVALID])
def test_invalid_small_configs(key, value, message):
    config = phi3_small.get_config("tiny")
    config.model[key] = value
    with pytest.raises(config_lib.ConfigError) as error:
        config_lib.validate(config)
    assert str(error.value).startswith(message)
