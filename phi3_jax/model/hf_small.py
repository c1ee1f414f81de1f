"""Hugging Face <-> phi3_jax for Phi-3-small: its config.json keys and checkpoint names.

transformers has no built-in Phi-3-small; the layout is that of its remote code
(`modeling_phi3_small.py`, PHI3.md §3):
  * `self_attn.query_key_value` is fused per KV group: rows [q_0 .. q_{g-1}, k, v] x kv_heads,
    each head_dim wide; phi3_jax keeps q/k/v apart (query head j*g+i is group j's i-th).
  * `mlp.up_proj` interleaves the GEGELU halves by row: even rows feed the gelu, odd rows the
    linear "+1" half; phi3_jax keeps them as `gate_proj` and `up_proj`.
  * every linear has a bias, the LayerNorms a weight and a bias; `lm_head` is tied to
    `model.embed_tokens` (written without it; read with it only if equal to the embedding).
  * HF layer N is block_{N % n} of scanned group N // n (n = dense_attention_every_n_layers).
Directory reading and atomic writing are `hf_io`'s.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from phi3_jax import config as config_lib
from phi3_jax.model import hf_io
from phi3_jax.model.hf_io import HFFormatError
from phi3_jax.vocab import PHI3_SMALL_DUMMY_TOKEN_IDS

FAMILY = "Phi-3-small"
LM_HEAD = "lm_head.weight"
# Not a Phi-3-small config key: phi3_jax writes its dummy ids so that a directory round-trips.
DUMMY_IDS_KEY = "dummy_token_ids"


# ----------------------------------------------------------------------------------------------
# config.json


def _intermediate_size(hf_config: Mapping) -> int:
    """HF's `intermediate_size` property: ff_intermediate_size, else derived from the multiplier."""
    if hf_config.get("ff_intermediate_size") is not None:
        return hf_config["ff_intermediate_size"]
    size = int(hf_config["ff_dim_multiplier"] * (hf_config["hidden_size"] // 3) * 2)
    if hf_config.get("gegelu_pad_to_256", True):
        size = -(-size // 256) * 256
    return size


def _check_supported(hf_config: Mapping, where: str) -> None:
    def refuse(key, why):
        raise HFFormatError(f"{where}: {key}={hf_config.get(key)!r}: {why}")

    if hf_config.get("model_type") != "phi3small":
        refuse("model_type", "is not a Phi-3-small ('phi3small')")
    if hf_config.get("hidden_act", "gegelu") != "gegelu":
        refuse("hidden_act", "Phi-3-small uses gegelu")
    if not hf_config.get("tie_word_embeddings", True):
        refuse("tie_word_embeddings", "Phi-3-small ties lm_head to the embeddings")
    if hf_config.get("rope_scaling"):
        refuse("rope_scaling", "only the 8K Phi-3-small (no rope scaling) is supported")
    if hf_config.get("rope_position_scale", 1.0) != 1.0:
        refuse("rope_position_scale", "only 1.0 is supported")
    if hf_config.get("attention_dropout_prob", 0.0):
        refuse("attention_dropout_prob", "attention dropout is not implemented (Phi-3-small: 0)")


def model_config_from_hf(hf_config: Mapping, where: str) -> ml_collections.ConfigDict:
    """The `model` section for a Phi-3-small config.json dict (`where` names it in errors)."""
    _check_supported(hf_config, where)
    try:
        model = config_lib.default_model_config()
        heads = hf_config["num_attention_heads"]
        vocab = hf_config["vocab_size"]
        eos = hf_config["eos_token_id"]
        dummy = hf_config.get(DUMMY_IDS_KEY)
        if dummy is None:
            dummy = [i for i in PHI3_SMALL_DUMMY_TOKEN_IDS if i < vocab]
        model.update(
            name=hf_config.get("_name_or_path") or "hf",
            architecture="phi3small",
            vocab_size=vocab,
            hidden_size=hf_config["hidden_size"],
            intermediate_size=_intermediate_size(hf_config),
            num_layers=hf_config["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=hf_config.get("num_key_value_heads") or heads,
            max_position_embeddings=hf_config["max_position_embeddings"],
            original_max_position_embeddings=hf_config["max_position_embeddings"],
            rope_theta=float(hf_config.get("rope_embedding_base", 1e6)),
            layer_norm_eps=float(hf_config.get("layer_norm_epsilon", 1e-5)),
            initializer_range=float(hf_config.get("initializer_range", 0.02)),
            gegelu_limit=float(hf_config["gegelu_limit"]),
            mup_embedding_multiplier=float(hf_config.get("mup_embedding_multiplier") or 0.0),
            mup_attn_multiplier=float(hf_config["mup_attn_multiplier"]),
            mup_use_scaling=bool(hf_config["mup_use_scaling"]),
            mup_width_multiplier=float(hf_config["mup_width_multiplier"]),
            blocksparse_block_size=hf_config["blocksparse_block_size"],
            blocksparse_num_local_blocks=hf_config["blocksparse_num_local_blocks"],
            blocksparse_vert_stride=hf_config["blocksparse_vert_stride"],
            blocksparse_homo_head_pattern=bool(hf_config["blocksparse_homo_head_pattern"]),
            dense_attention_every_n_layers=hf_config["dense_attention_every_n_layers"],
            embedding_dropout=float(hf_config.get("embedding_dropout_prob", 0.0)),
            ffn_dropout=float(hf_config.get("ffn_dropout_prob", 0.0)),
            bos_token_id=hf_config.get("bos_token_id", eos),
            eos_token_id=eos,
            pad_token_id=hf_config.get("pad_token_id") or eos,
            dummy_token_ids=tuple(int(i) for i in dummy),
        )
    except KeyError as e:
        raise HFFormatError(f"{where}: missing key {e.args[0]!r}") from None
    return hf_io.validated_model(model, where)


def model_config_to_hf(model: ml_collections.ConfigDict) -> dict:
    """A config.json dict with Phi-3-small's keys (as its remote code reads them)."""
    return {
        "architectures": ["Phi3SmallForCausalLM"],
        "model_type": "phi3small",
        "vocab_size": model.vocab_size,
        "hidden_size": model.hidden_size,
        "ff_intermediate_size": model.intermediate_size,
        "ff_dim_multiplier": None,
        "gegelu_limit": model.gegelu_limit,
        "gegelu_pad_to_256": True,
        "hidden_act": "gegelu",
        "num_hidden_layers": model.num_layers,
        "num_attention_heads": model.num_heads,
        "num_key_value_heads": model.num_kv_heads,
        "max_position_embeddings": model.max_position_embeddings,
        "rope_embedding_base": model.rope_theta,
        "rope_position_scale": 1.0,
        "layer_norm_epsilon": model.layer_norm_eps,
        "initializer_range": model.initializer_range,
        "mup_attn_multiplier": model.mup_attn_multiplier,
        "mup_embedding_multiplier": model.mup_embedding_multiplier,
        "mup_use_scaling": model.mup_use_scaling,
        "mup_width_multiplier": model.mup_width_multiplier,
        "blocksparse_block_size": model.blocksparse_block_size,
        "blocksparse_num_local_blocks": model.blocksparse_num_local_blocks,
        "blocksparse_vert_stride": model.blocksparse_vert_stride,
        "blocksparse_homo_head_pattern": model.blocksparse_homo_head_pattern,
        "blocksparse_triton_kernel_block_size": model.blocksparse_block_size,
        "dense_attention_every_n_layers": model.dense_attention_every_n_layers,
        "attention_dropout_prob": 0.0,
        "embedding_dropout_prob": model.embedding_dropout,
        "ffn_dropout_prob": model.ffn_dropout,
        "pad_sequence_to_multiple_of_64": True,
        "reorder_and_upcast_attn": False,
        "bos_token_id": model.bos_token_id,
        "eos_token_id": model.eos_token_id,
        "pad_token_id": model.pad_token_id,
        "tie_word_embeddings": True,
        "torch_dtype": model.param_dtype,
        DUMMY_IDS_KEY: list(model.dummy_token_ids),
    }


# ----------------------------------------------------------------------------------------------
# Tensor layout

_NORMS = ("input_layernorm", "post_attention_layernorm")


def hf_tensor_shapes(model: ml_collections.ConfigDict) -> dict[str, tuple[int, ...]]:
    """Every tensor a Phi-3-small checkpoint may hold (lm_head.weight optional), torch shapes."""
    hd = config_lib.head_dim(model)
    h, i = model.hidden_size, model.intermediate_size
    out_in = {
        "self_attn.query_key_value": ((model.num_heads + 2 * model.num_kv_heads) * hd, h),
        "self_attn.dense": (h, model.num_heads * hd),
        "mlp.up_proj": (2 * i, h),
        "mlp.down_proj": (h, i),
    }
    per_layer = {}
    for name, (rows, cols) in out_in.items():
        per_layer.update({f"{name}.weight": (rows, cols), f"{name}.bias": (rows,)})
    for norm in _NORMS:
        per_layer.update({f"{norm}.weight": (h,), f"{norm}.bias": (h,)})
    shapes = {"model.embed_tokens.weight": (model.vocab_size, h)}
    for n in range(model.num_layers):
        shapes.update({f"model.layers.{n}.{k}": v for k, v in per_layer.items()})
    shapes.update({"model.final_layernorm.weight": (h,), "model.final_layernorm.bias": (h,)})
    shapes[LM_HEAD] = (model.vocab_size, h)
    return shapes


def _split_qkv(fused: np.ndarray, model) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[..., kv_heads * (group + 2) * hd] grouped [q.., k, v] -> q [..., heads, hd], k, v."""
    nkv, hd = model.num_kv_heads, config_lib.head_dim(model)
    group = model.num_heads // nkv
    grouped = fused.reshape(*fused.shape[:-1], nkv, group + 2, hd)
    q = grouped[..., :group, :].reshape(*fused.shape[:-1], nkv * group, hd)
    return q, grouped[..., group, :], grouped[..., group + 1, :]


def _fuse_qkv(q: np.ndarray, k: np.ndarray, v: np.ndarray, model) -> np.ndarray:
    """The inverse of _split_qkv."""
    nkv = model.num_kv_heads
    lead, hd = q.shape[:-2], q.shape[-1]
    q = q.reshape(*lead, nkv, model.num_heads // nkv, hd)
    grouped = np.concatenate([q, k[..., None, :], v[..., None, :]], axis=-2)
    return grouped.reshape(*lead, -1)


def _layer_from_hf(get: Callable[[str], np.ndarray], n: int, model) -> dict:
    """One layer's phi3_jax params from HF tensors (torch Linear weights are [out, in])."""
    prefix = f"model.layers.{n}."
    h, hd = model.hidden_size, config_lib.head_dim(model)
    q, k, v = _split_qkv(get(prefix + "self_attn.query_key_value.weight").T, model)
    qb, kb, vb = _split_qkv(get(prefix + "self_attn.query_key_value.bias"), model)
    up_weight = get(prefix + "mlp.up_proj.weight")
    up_bias = get(prefix + "mlp.up_proj.bias")
    return {
        **{
            norm: {"scale": get(f"{prefix}{norm}.weight"), "bias": get(f"{prefix}{norm}.bias")}
            for norm in _NORMS
        },
        "self_attn": {
            "q_proj": {"kernel": q, "bias": qb},
            "k_proj": {"kernel": k, "bias": kb},
            "v_proj": {"kernel": v, "bias": vb},
            "o_proj": {
                "kernel": get(prefix + "self_attn.dense.weight").T.reshape(-1, hd, h),
                "bias": get(prefix + "self_attn.dense.bias"),
            },
        },
        "mlp": {
            "gate_proj": {"kernel": up_weight[0::2].T, "bias": up_bias[0::2]},
            "up_proj": {"kernel": up_weight[1::2].T, "bias": up_bias[1::2]},
            "down_proj": {
                "kernel": get(prefix + "mlp.down_proj.weight").T,
                "bias": get(prefix + "mlp.down_proj.bias"),
            },
        },
    }


def _interleave(gelu_half: np.ndarray, linear_half: np.ndarray) -> np.ndarray:
    """Rows g0, l0, g1, l1, ... (HF's up_proj) from the two halves."""
    return np.stack([gelu_half, linear_half], axis=1).reshape(-1, *gelu_half.shape[1:])


def _layer_to_hf(layer: Mapping, n: int, model) -> dict[str, np.ndarray]:
    """One layer's HF tensors from phi3_jax params (the inverse of _layer_from_hf)."""
    attn, mlp = layer["self_attn"], layer["mlp"]
    prefix = f"model.layers.{n}."
    qkv = _fuse_qkv(*(attn[p]["kernel"] for p in ("q_proj", "k_proj", "v_proj")), model)
    qkv_bias = _fuse_qkv(*(attn[p]["bias"] for p in ("q_proj", "k_proj", "v_proj")), model)
    tensors = {
        prefix + "self_attn.query_key_value.weight": qkv.T,
        prefix + "self_attn.query_key_value.bias": qkv_bias,
        prefix + "self_attn.dense.weight": attn["o_proj"]["kernel"]
        .reshape(-1, model.hidden_size)
        .T,
        prefix + "self_attn.dense.bias": attn["o_proj"]["bias"],
        prefix + "mlp.up_proj.weight": _interleave(
            mlp["gate_proj"]["kernel"].T, mlp["up_proj"]["kernel"].T
        ),
        prefix + "mlp.up_proj.bias": _interleave(mlp["gate_proj"]["bias"], mlp["up_proj"]["bias"]),
        prefix + "mlp.down_proj.weight": mlp["down_proj"]["kernel"].T,
        prefix + "mlp.down_proj.bias": mlp["down_proj"]["bias"],
    }
    for norm in _NORMS:
        tensors[f"{prefix}{norm}.weight"] = layer[norm]["scale"]
        tensors[f"{prefix}{norm}.bias"] = layer[norm]["bias"]
    return tensors


def _group_size(model) -> int:
    return model.dense_attention_every_n_layers


def params_from_hf(get: Callable[[str], np.ndarray], model: ml_collections.ConfigDict) -> dict:
    """phi3_jax params (numpy, param_dtype) from a getter of HF tensors by name."""
    dtype = jnp.dtype(model.param_dtype)

    def cast_get(name):
        return np.asarray(get(name)).astype(dtype)

    n = _group_size(model)
    layers = [_layer_from_hf(cast_get, i, model) for i in range(model.num_layers)]
    return {
        "embed_tokens": {"embedding": cast_get("model.embed_tokens.weight")},
        "layers": {
            f"block_{j}": jax.tree.map(lambda *xs: np.stack(xs), *layers[j::n]) for j in range(n)
        },
        "final_layernorm": {
            "scale": cast_get("model.final_layernorm.weight"),
            "bias": cast_get("model.final_layernorm.bias"),
        },
    }


def params_to_hf(params: Mapping, model: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """HF tensors (contiguous numpy, in the params' dtype) from phi3_jax params; no lm_head."""
    params = jax.tree.map(np.asarray, params)
    n = _group_size(model)
    tensors = {"model.embed_tokens.weight": params["embed_tokens"]["embedding"]}
    for i in range(model.num_layers):
        layer = jax.tree.map(lambda x, i=i: x[i // n], params["layers"][f"block_{i % n}"])
        tensors.update(_layer_to_hf(layer, i, model))
    tensors["model.final_layernorm.weight"] = params["final_layernorm"]["scale"]
    tensors["model.final_layernorm.bias"] = params["final_layernorm"]["bias"]
    return {k: np.ascontiguousarray(v) for k, v in tensors.items()}


# ----------------------------------------------------------------------------------------------
# Directories


def load_hf(path: str) -> tuple[ml_collections.ConfigDict, dict]:
    """Read a Phi-3-small HF directory: (a validated run config, numpy params)."""
    model = model_config_from_hf(hf_io.read_json(os.path.join(path, hf_io.CONFIG_FILE)), path)
    reader = hf_io.checkpoint_reader(path, hf_tensor_shapes(model), FAMILY)
    params = params_from_hf(reader, model)
    if LM_HEAD in reader.files:
        embedding = reader("model.embed_tokens.weight")
        if not np.array_equal(reader(LM_HEAD), embedding):
            raise HFFormatError(
                f"{reader.files[LM_HEAD]}: {LM_HEAD} differs from model.embed_tokens.weight, "
                f"but {FAMILY} ties them"
            )
    return hf_io.run_config(model), params
