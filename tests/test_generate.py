"""Batched generation: every row equals its own prompt's full recompute (left or right padding,
its own stops, on one device or split over a mesh); undecodable ids are never sampled."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import phi3_tiny
from phi3_jax import config as config_lib
from phi3_jax import generate, model, sharding
from phi3_jax.data.tokenizer import load_tokenizer

PROMPTS = [[1, 17, 230, 45, 9], [1, 300], [1, 5, 6, 7, 8, 9, 10, 11, 12], [1]]
NEW = 10


def tiny_config(**model_overrides):
    """The tiny model cut to 2 layers of width 64, a 512-row vocabulary and a sliding window that
    bites within the longest sequence (9 + 10 tokens)."""
    config = phi3_tiny.get_config()
    config.model.update(
        num_layers=2,
        hidden_size=64,
        intermediate_size=128,
        vocab_size=512,
        eos_token_id=2,
        pad_token_id=0,
        sliding_window=12,
        dtype="float32",
    )
    config.model.update(model_overrides)
    return config_lib.validate(config)


@functools.cache
def sharp_params():
    config = tiny_config()
    # Sharper logits than at init, so greedy choices are not near-ties.
    return jax.tree.map(lambda x: 8 * x, model.init_params(config, jax.random.key(1)))


def greedy_by_recomputing(config, params, prompts: list[list[int]], n: int) -> list[list[int]]:
    """Greedy tokens of each prompt on its own, each the argmax of a full forward pass over the
    prompt's sequence so far. The sequence sits in a fixed-length buffer (one compilation):
    causal attention ignores what follows it."""
    logits = jax.jit(functools.partial(model.logits, config))
    out = []
    for prompt in prompts:
        tokens = np.zeros((1, max(map(len, prompts)) + n), np.int32)
        tokens[0, : len(prompt)] = prompt
        for i in range(len(prompt), len(prompt) + n):
            tokens[0, i] = int(jnp.argmax(logits(params, tokens)[0, i - 1]))
        out.append(tokens[0, len(prompt) : len(prompt) + n].tolist())
    return out


@functools.cache
def references() -> list[list[int]]:
    return greedy_by_recomputing(tiny_config(), sharp_params(), PROMPTS, NEW)


def stops_and_expected():
    """Per prompt a stop id or stop sequence taken from its own greedy continuation, and the
    continuation cut right after its first occurrence."""
    refs = references()
    stop_ids = [[refs[0][3]], [], [], [refs[3][1]]]
    stop_sequences = [[], [refs[1][4:6]], [[999], refs[2][2:4]], []]
    expected = []
    for ref, ids, seqs in zip(refs, stop_ids, stop_sequences, strict=True):
        cut = len(ref)
        for i in range(1, len(ref) + 1):
            if ref[i - 1] in ids or any(ref[:i][-len(s) :] == s for s in seqs):
                cut = i
                break
        expected.append(ref[:cut])
    return stop_ids, stop_sequences, expected


@pytest.mark.parametrize("padding", ["left", "right"])
def test_batched_greedy_equals_each_prompt_recomputed_with_its_own_stops(padding):
    config = tiny_config()
    assert len({len(r) for r in references()}) == 1 and all(len(set(r)) > 2 for r in references())
    out = generate.generate_batch(
        config, sharp_params(), PROMPTS, max_new_tokens=NEW, padding=padding
    )
    assert out == references()
    stop_ids, stop_sequences, expected = stops_and_expected()
    assert [len(e) for e in expected] != [NEW] * len(PROMPTS)  # the stops do cut
    out = generate.generate_batch(
        config,
        sharp_params(),
        PROMPTS,
        max_new_tokens=NEW,
        stop_ids=stop_ids,
        stop_sequences=stop_sequences,
        padding=padding,
    )
    assert out == expected


def test_one_prompt_is_the_batch_of_one():
    config = tiny_config()
    assert generate.generate(config, sharp_params(), PROMPTS[0], NEW) == references()[0]
    key = jax.random.key(3)
    sampled = generate.generate(
        config, sharp_params(), PROMPTS[2], NEW, temperature=1.0, top_p=0.9, rng=key
    )
    batch = generate.generate_batch(
        config,
        sharp_params(),
        [PROMPTS[2], PROMPTS[0]],
        max_new_tokens=NEW,
        temperature=1.0,
        top_p=0.9,
        rng=key,
    )
    assert batch[0] == sampled and len(sampled) == NEW


def test_generation_split_over_a_mesh_equals_one_device():
    """data=2, fsdp=2, tensor=2: three prompts fill out to four rows (one per batch shard), the
    cache splits rows over (data, fsdp) and kv heads over tensor."""
    config = tiny_config()
    config.mesh.update(data=2, fsdp=2, tensor=2)
    mesh = sharding.make_mesh(config.mesh)
    out = generate.generate_batch(
        config, sharp_params(), PROMPTS[:3], max_new_tokens=NEW, mesh=mesh
    )
    assert out == references()[:3]
    decoder = generate._decoder(config, mesh, 0.0, 1.0)
    tokens, lengths, start = generate._padded_batch(PROMPTS[:3], 4, "left")
    params, tokens, lengths, start = decoder.place(sharp_params(), tokens, lengths, start)
    keys = jax.random.split(jax.random.key(0), 4)
    _, cache = decoder.prefill(params, tokens, lengths, start, keys, 32, jnp.ones(512, bool))
    spec = cache["kv"]["k"].sharding.spec
    assert tuple(spec)[:4] == (None, ("data", "fsdp"), None, "tensor")
    assert cache["kv"]["k"].addressable_shards[0].data.shape == (2, 1, 32, 2, 16)


class CompileCounter:
    """Counts XLA compilations by function name (jax.monitoring's backend-compile event, sent
    for every compilation a jitted function's in-memory cache does not hold)."""

    def __init__(self):
        self.names: list[str] = []

    def __call__(self, event: str, duration: float, **kwargs) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            self.names.append(kwargs.get("fun_name", ""))

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self)

    def decoding(self) -> int:
        """Compilations of the decoder's prefill and step."""
        return sum(name in ("jit(_prefill)", "jit(_step)") for name in self.names)


LONG_PROMPT = [1, 17, 230, 45, 9, 33, 44, 55, 66, 77, 88, 99, 111, 122]
# 4, 3, 3 and 4 rows, longest prompts 9, 9, 5 and 14 tokens: four shapes, one bucket (4 x 16).
BUCKET_BATCHES = [
    PROMPTS,
    PROMPTS[:3],
    [PROMPTS[1], PROMPTS[3], PROMPTS[0]],
    [PROMPTS[3], LONG_PROMPT, PROMPTS[1], PROMPTS[2]],
]


def test_buckets_compile_once_and_equal_the_unpadded_path():
    config, params = tiny_config(), sharp_params()
    long_ref = greedy_by_recomputing(config, params, [LONG_PROMPT], NEW)[0]
    by_prompt = {tuple(p): r for p, r in zip(PROMPTS, references(), strict=True)}
    by_prompt[tuple(LONG_PROMPT)] = long_ref
    generate._DECODERS.clear()  # a fresh decoder: nothing compiled yet

    def run(batch, buckets, padding="left"):
        return generate.generate_batch(
            config, params, batch, max_new_tokens=NEW, padding=padding, buckets=buckets
        )

    with CompileCounter() as bucketed:
        outs = [run(batch, True) for batch in BUCKET_BATCHES]
    with CompileCounter() as unpadded:
        plain = [run(batch, False) for batch in BUCKET_BATCHES]
    assert outs == plain
    assert outs == [[by_prompt[tuple(p)] for p in batch] for batch in BUCKET_BATCHES]
    # One prefill and one step serve the bucket; without buckets each shape compiles both.
    assert bucketed.decoding() == 2, bucketed.names
    assert unpadded.decoding() == 2 * len(BUCKET_BATCHES), unpadded.names
    assert run(BUCKET_BATCHES[3], True, "right") == outs[3]


def test_bucket_sizes():
    prompts = [[1] * 9, [1] * 3, [1] * 17]
    assert generate._bucketed(prompts, split=1, limit=1000) == (4, 32)
    assert generate._bucketed(prompts, split=8, limit=1000) == (8, 32)
    assert generate._bucketed(prompts[:2], split=1, limit=1000) == (2, 16)
    # Not past max_position_embeddings - max_new_tokens, unless the longest prompt already is.
    assert generate._bucketed(prompts, split=1, limit=20) == (4, 20)
    assert generate._bucketed(prompts, split=1, limit=10) == (4, 17)


def test_bad_arguments_are_one_line_errors():
    config = tiny_config()
    with pytest.raises(ValueError, match=r"^prompts\[1\]: empty"):
        generate.generate_batch(config, sharp_params(), [[1], []], max_new_tokens=2)
    with pytest.raises(ValueError, match=r"^prompts\[0\]: id 512 outside \[0, 512\)"):
        generate.generate_batch(config, sharp_params(), [[1, 512]], max_new_tokens=2)
    with pytest.raises(ValueError, match=r"^stop_ids: 1 entries for 2 prompts"):
        generate.generate_batch(
            config, sharp_params(), [[1], [1]], max_new_tokens=2, stop_ids=[[2]]
        )
    with pytest.raises(ValueError, match=r"^padding='middle'"):
        generate.generate_batch(config, sharp_params(), [[1]], max_new_tokens=2, padding="middle")


def test_sampling_never_produces_an_id_the_tokenizer_cannot_decode():
    """The tiny model (32064 rows) with the bundled tokenizer, whose ids stop at 32011, made to
    prefer the padding rows: at temperature 1 they are what it samples, unless masked out."""
    config = phi3_tiny.get_config()
    config.model.update(num_layers=1, dtype="float32")
    config = config_lib.validate(config)
    tokenizer = load_tokenizer(config)
    mask = tokenizer.decodable_mask(config.model.vocab_size)
    assert not mask[32011:].any() and mask[:32011].all()
    params = model.init_params(config, jax.random.key(0))
    # A large constant first feature of every embedding survives the norms, and the padding
    # rows' lm_head weights read it: their logits are ~11 above the others'.
    params["embed_tokens"]["embedding"] = params["embed_tokens"]["embedding"].at[:, 0].set(10.0)
    params["lm_head"]["kernel"] = params["lm_head"]["kernel"].at[0, 32011:].set(1.0)
    prompts = [[tokenizer.bos_id, *tokenizer.encode(f"Example {i}:")] for i in range(16)]

    def sample(decodable):
        return generate.generate_batch(
            config,
            params,
            prompts,
            max_new_tokens=40,
            temperature=1.0,
            rng=jax.random.key(7),
            decodable=decodable,
        )

    unmasked = [t for row in sample(None) for t in row]
    assert np.mean(np.asarray(unmasked) >= 32011) > 0.9  # what the mask prevents
    masked = sample(mask)
    assert sum(map(len, masked)) == 16 * 40
    assert all(mask[t] for row in masked for t in row)
    for row in masked:
        tokenizer.decode(row)
