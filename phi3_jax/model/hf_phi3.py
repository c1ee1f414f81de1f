"""Hugging Face <-> phi3_jax for Phi-3 (mini, medium): config.json and the safetensors layout.

HF fuses the attention input projection as qkv_proj = [all Q | all K | all V] (rows of a torch
[out, in] weight) and the MLP input as gate_up_proj = [gate | up]; phi3_jax keeps them apart,
with heads as their own axis, and stacks layers on a leading axis. Both config.json forms seen in
the wild load: the hub's original (`rope_scaling` of type "su"/"longrope", `rope_theta` at the
top) and what current transformers writes (`rope_parameters`). Directory reading and atomic
writing are `hf_io`'s.
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
from phi3_jax.model import rope as rope_lib
from phi3_jax.model.hf_io import HFFormatError

# ----------------------------------------------------------------------------------------------
# config.json


def _rope_from_hf(hf: Mapping, where: str) -> dict:
    """Our rope keys from either config.json form."""
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    if rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) != 1.0:
        raise HFFormatError(
            f"{where}: partial_rotary_factor != 1 is not Phi-3 (RoPE covers all dims)"
        )
    out = {"rope_theta": float(theta)}
    if kind == "default":
        return out
    # transformers' Phi3Config reads the types su and yarn as longrope.
    if kind not in ("su", "yarn", "longrope"):
        raise HFFormatError(
            f"{where}: rope type {kind!r} is not supported (expected su, yarn or longrope)"
        )
    for key in ("short_factor", "long_factor"):
        if key not in rope:
            raise HFFormatError(f"{where}: rope {kind} needs {key}")
    out.update(
        rope_scaling="longrope",
        rope_short_factor=tuple(float(f) for f in rope["short_factor"]),
        rope_long_factor=tuple(float(f) for f in rope["long_factor"]),
    )
    original = rope.get("original_max_position_embeddings")
    if original is not None:
        out["original_max_position_embeddings"] = int(original)
    # HF derives the cos/sin scale from `factor` when given, else from max/original lengths.
    if rope.get("attention_factor") is not None:
        out["rope_attention_factor"] = float(rope["attention_factor"])
    elif rope.get("factor") is not None:
        orig = original or hf["original_max_position_embeddings"]
        out["rope_attention_factor"] = rope_lib.attention_factor(float(rope["factor"]), orig)
    return out


def special_id(hf: Mapping, key: str, default: int) -> int:
    """A special token id of config.json for the model config: absent, the default; None or an
    id outside the vocabulary (which names no token), -1 (none); a list (transformers' several
    eos ids, the others being generation stops), its first id."""
    value = hf.get(key, default)
    if isinstance(value, list):
        value = value[0] if value else None
    if value is None or not 0 <= value < hf["vocab_size"]:
        return -1
    return int(value)


def _check_head_dim(hf: Mapping, where: str) -> None:
    head_dim, implied = hf.get("head_dim"), hf["hidden_size"] // hf["num_attention_heads"]
    if head_dim is not None and head_dim != implied:
        raise HFFormatError(
            f"{where}: head_dim={head_dim} differs from hidden_size // num_attention_heads = "
            f"{implied}; phi3_jax derives the head width from them"
        )


def model_config_from_hf(hf: Mapping, where: str) -> ml_collections.ConfigDict:
    """The `model` section for a Phi-3 config.json dict (`where` names it in errors).

    Every config.json that transformers' Phi3ForCausalLM runs loads, unless a field would change
    its numbers here (the error names it). Fields the logits do not depend on are read as:
    special ids per `special_id`; original_max_position_embeddings without rope scaling (where
    it means nothing) at most max_position_embeddings; dropout rates, attention_bias (which
    Phi-3 ignores) and tie_word_embeddings (see `load_hf`) not at all.
    """
    if hf.get("model_type") != "phi3":
        raise HFFormatError(f"{where}: model_type={hf.get('model_type')!r} is not a Phi-3 ('phi3')")
    if hf.get("hidden_act", "silu") != "silu":
        raise HFFormatError(f"{where}: hidden_act={hf['hidden_act']!r}, Phi-3 uses silu")
    try:
        model = config_lib.default_model_config()
        heads = hf["num_attention_heads"]
        _check_head_dim(hf, where)
        model.update(
            name=hf.get("_name_or_path") or "hf",
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=hf.get("num_key_value_heads") or heads,
            max_position_embeddings=hf["max_position_embeddings"],
            original_max_position_embeddings=hf.get(
                "original_max_position_embeddings", hf["max_position_embeddings"]
            ),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
            sliding_window=hf.get("sliding_window") or 0,
            initializer_range=float(hf.get("initializer_range", 0.02)),
            bos_token_id=special_id(hf, "bos_token_id", 1),
            eos_token_id=special_id(hf, "eos_token_id", 32000),
        )
        model.pad_token_id = (
            special_id(hf, "pad_token_id", -1)
            if hf.get("pad_token_id") is not None
            else model.eos_token_id
        )
        model.update(_rope_from_hf(hf, where))
    except KeyError as e:
        raise HFFormatError(f"{where}: missing key {e.args[0]!r}") from None
    if model.rope_scaling == "none":
        model.original_max_position_embeddings = min(
            model.original_max_position_embeddings, model.max_position_embeddings
        )
    return hf_io.validated_model(model, where)


def model_config_to_hf(model: ml_collections.ConfigDict) -> dict:
    """A config.json dict in the form current transformers writes."""
    rope = {"rope_type": "default", "rope_theta": model.rope_theta}
    if model.rope_scaling == "longrope":
        rope.update(
            rope_type="longrope",
            short_factor=list(model.rope_short_factor),
            long_factor=list(model.rope_long_factor),
            original_max_position_embeddings=model.original_max_position_embeddings,
        )
        if model.rope_attention_factor:
            rope["attention_factor"] = model.rope_attention_factor
    return {
        "architectures": ["Phi3ForCausalLM"],
        "model_type": "phi3",
        "vocab_size": model.vocab_size,
        "hidden_size": model.hidden_size,
        "intermediate_size": model.intermediate_size,
        "num_hidden_layers": model.num_layers,
        "num_attention_heads": model.num_heads,
        "num_key_value_heads": model.num_kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": model.max_position_embeddings,
        "original_max_position_embeddings": model.original_max_position_embeddings,
        "rope_parameters": rope,
        "rms_norm_eps": model.rms_norm_eps,
        "sliding_window": model.sliding_window or None,
        "initializer_range": model.initializer_range,
        **{
            key: None if model[key] == -1 else model[key]
            for key in ("bos_token_id", "eos_token_id", "pad_token_id")
        },
        "tie_word_embeddings": False,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "embd_pdrop": 0.0,
        "resid_pdrop": 0.0,
        "dtype": model.param_dtype,
    }


# ----------------------------------------------------------------------------------------------
# Tensor layout


def hf_tensor_shapes(
    model: ml_collections.ConfigDict, tied: bool = False
) -> dict[str, tuple[int, ...]]:
    """Every tensor a Phi-3 safetensors checkpoint holds, with its torch shape (with
    tie_word_embeddings, no lm_head: it is the embedding)."""
    hd = config_lib.head_dim(model)
    h, i = model.hidden_size, model.intermediate_size
    per_layer = {
        "self_attn.qkv_proj.weight": ((model.num_heads + 2 * model.num_kv_heads) * hd, h),
        "self_attn.o_proj.weight": (h, model.num_heads * hd),
        "mlp.gate_up_proj.weight": (2 * i, h),
        "mlp.down_proj.weight": (h, i),
        "input_layernorm.weight": (h,),
        "post_attention_layernorm.weight": (h,),
    }
    shapes = {"model.embed_tokens.weight": (model.vocab_size, h)}
    for n in range(model.num_layers):
        shapes.update({f"model.layers.{n}.{k}": v for k, v in per_layer.items()})
    shapes["model.norm.weight"] = (h,)
    if not tied:
        shapes["lm_head.weight"] = (model.vocab_size, h)
    return shapes


def _layer_from_hf(get: Callable[[str], np.ndarray], n: int, model) -> dict:
    """One layer's phi3_jax params from HF tensors (torch Linear weights are [out, in])."""
    hd, nh, nkv = config_lib.head_dim(model), model.num_heads, model.num_kv_heads
    h, i = model.hidden_size, model.intermediate_size
    prefix = f"model.layers.{n}."
    qkv = get(prefix + "self_attn.qkv_proj.weight").T  # [h, (nh + 2 nkv) hd]
    gate_up = get(prefix + "mlp.gate_up_proj.weight").T  # [h, 2i]
    return {
        "input_layernorm": {"scale": get(prefix + "input_layernorm.weight")},
        "post_attention_layernorm": {"scale": get(prefix + "post_attention_layernorm.weight")},
        "self_attn": {
            "q_proj": {"kernel": qkv[:, : nh * hd].reshape(h, nh, hd)},
            "k_proj": {"kernel": qkv[:, nh * hd : (nh + nkv) * hd].reshape(h, nkv, hd)},
            "v_proj": {"kernel": qkv[:, (nh + nkv) * hd :].reshape(h, nkv, hd)},
            "o_proj": {"kernel": get(prefix + "self_attn.o_proj.weight").T.reshape(nh, hd, h)},
        },
        "mlp": {
            "gate_proj": {"kernel": gate_up[:, :i]},
            "up_proj": {"kernel": gate_up[:, i:]},
            "down_proj": {"kernel": get(prefix + "mlp.down_proj.weight").T},
        },
    }


def _layer_to_hf(layer: Mapping, n: int) -> dict[str, np.ndarray]:
    """One layer's HF tensors from phi3_jax params (the inverse of _layer_from_hf)."""
    attn, mlp = layer["self_attn"], layer["mlp"]
    h = attn["q_proj"]["kernel"].shape[0]
    qkv = np.concatenate(
        [attn[k]["kernel"].reshape(h, -1) for k in ("q_proj", "k_proj", "v_proj")], 1
    )
    gate_up = np.concatenate([mlp["gate_proj"]["kernel"], mlp["up_proj"]["kernel"]], axis=1)
    prefix = f"model.layers.{n}."
    return {
        prefix + "self_attn.qkv_proj.weight": qkv.T,
        prefix + "self_attn.o_proj.weight": attn["o_proj"]["kernel"].reshape(-1, h).T,
        prefix + "mlp.gate_up_proj.weight": gate_up.T,
        prefix + "mlp.down_proj.weight": mlp["down_proj"]["kernel"].T,
        prefix + "input_layernorm.weight": layer["input_layernorm"]["scale"],
        prefix + "post_attention_layernorm.weight": layer["post_attention_layernorm"]["scale"],
    }


def params_from_hf(
    get: Callable[[str], np.ndarray], model: ml_collections.ConfigDict, tied: bool = False
) -> dict:
    """phi3_jax params (numpy, param_dtype) from a getter of HF tensors by name; `tied`
    (tie_word_embeddings) takes lm_head from the embedding, as transformers does."""
    dtype = jnp.dtype(model.param_dtype)

    def cast_get(name):
        return np.asarray(get(name)).astype(dtype)

    layers = [_layer_from_hf(cast_get, n, model) for n in range(model.num_layers)]
    return {
        "embed_tokens": {"embedding": cast_get("model.embed_tokens.weight")},
        "layers": jax.tree.map(lambda *xs: np.stack(xs), *layers),
        "norm": {"scale": cast_get("model.norm.weight")},
        "lm_head": {
            "kernel": cast_get("model.embed_tokens.weight" if tied else "lm_head.weight").T
        },
    }


def params_to_hf(params: Mapping, model: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """HF tensors (contiguous numpy, in the params' dtype) from phi3_jax params."""
    params = jax.tree.map(np.asarray, params)
    tensors = {"model.embed_tokens.weight": params["embed_tokens"]["embedding"]}
    for n in range(model.num_layers):
        layer = jax.tree.map(lambda x, n=n: x[n], params["layers"])
        tensors.update(_layer_to_hf(layer, n))
    tensors["model.norm.weight"] = params["norm"]["scale"]
    tensors["lm_head.weight"] = params["lm_head"]["kernel"].T
    return {k: np.ascontiguousarray(v) for k, v in tensors.items()}


# ----------------------------------------------------------------------------------------------
# Directories


def load_hf(path: str) -> tuple[ml_collections.ConfigDict, dict]:
    """Read a Phi-3 HF directory: (a validated run config with its model section, numpy params)."""
    hf_config = hf_io.read_json(os.path.join(path, hf_io.CONFIG_FILE))
    model = model_config_from_hf(hf_config, path)
    tied = bool(hf_config.get("tie_word_embeddings", False))
    reader = hf_io.checkpoint_reader(path, hf_tensor_shapes(model, tied))
    return hf_io.run_config(model), params_from_hf(reader, model, tied)
