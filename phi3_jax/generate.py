"""Batched generation with a key/value cache, and `python -m phi3_jax.generate --workdir=DIR
--prompt="..." [--chat [--system="..."]]`, which samples from a run's latest checkpoint; with
--chat the prompt is a user message in Phi-3's chat format and the reply stops on its stop tokens.

`generate_batch` takes several prompts of any lengths at once: they go through the model together
into one cache (left- or right-padded), then every row gets one token per step until it stops on
one of its own stop ids or stop sequences, or reaches max_new_tokens. Temperature 0 is greedy and
equals recomputing each row's whole sequence; otherwise nucleus (top-p) sampling. Ids the
tokenizer cannot decode (`decodable`) are never produced. Given a mesh, the rows split over its
batch axes and the params and cache over its model axes. `generate` is the one-prompt case.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from phi3_jax import config as config_lib
from phi3_jax import model, sharding
from phi3_jax.data.tokenizer import load_tokenizer
from phi3_jax.posttrain import chat
from phi3_jax.train import restore as restore_lib

FLAGS = flags.FLAGS
PADDING_SIDES = ("left", "right")
# The shortest prompt length of a bucketed batch (`generate_batch(..., buckets=True)`).
MIN_BUCKET_LENGTH = 16


def sample_token(logits: jax.Array, rng: jax.Array, temperature: float, top_p: float) -> jax.Array:
    """One token id from float logits [vocab]: argmax at temperature 0, else top-p sampling.
    Ids whose logit is -inf are never chosen."""
    if temperature == 0:
        return jnp.argmax(logits)
    logits = logits / temperature
    if top_p >= 1:
        return jax.random.categorical(rng, logits)
    order = jnp.argsort(-logits)
    probs = jax.nn.softmax(logits[order])
    # Keep the most likely tokens until their mass reaches top_p (the first one always).
    keep = jnp.cumsum(probs) - probs < top_p
    choice = jax.random.categorical(rng, jnp.where(keep, logits[order], -jnp.inf))
    return order[choice]


def decoding_rules(config: ml_collections.ConfigDict) -> sharding.Rules:
    """The config's logical axis rules without sequence parallelism: decoding feeds one token
    per row at a time, so nothing is split along the sequence."""
    return tuple(
        (name, None if name == "length" else axes) for name, axes in sharding.logical_rules(config)
    )


def power_of_two_at_least(n: int, minimum: int = 1) -> int:
    """The smallest power of two that is at least n and at least `minimum`."""
    return max(minimum, 1 << max(n - 1, 0).bit_length())


def _bucketed(prompts: Sequence[Sequence[int]], split: int, limit: int) -> tuple[int, int]:
    """(rows, prompt length) of a bucketed batch: the prompt count and the longest prompt rounded
    up to powers of two (length at least MIN_BUCKET_LENGTH, kept within `limit` unless the longest
    prompt is already past it), rows a multiple of the batch split."""
    longest = max(map(len, prompts))
    length = min(power_of_two_at_least(longest, MIN_BUCKET_LENGTH), max(longest, limit))
    rows = power_of_two_at_least(len(prompts))
    return -(-rows // split) * split, length


def _padded_batch(
    prompts: Sequence[Sequence[int]], rows: int, padding: str, length: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens [rows, length], lengths [rows], start [rows]): the prompts padded with id 0 on
    `padding`'s side to `length` (default: the longest; nothing attends to padding, so any id
    does); rows past the prompts repeat the first one (they fill out the batch)."""
    lengths = np.array([len(p) for p in prompts] + [len(prompts[0])] * (rows - len(prompts)))
    longest = int(lengths.max()) if length is None else length
    tokens = np.zeros((rows, longest), np.int32)
    for row in range(rows):
        prompt = prompts[row if row < len(prompts) else 0]
        if padding == "left":
            tokens[row, longest - len(prompt) :] = prompt
        else:
            tokens[row, : len(prompt)] = prompt
    if padding == "left":
        # Every row's sequence ends at the same slot; the padding before `start` is never read.
        return tokens, np.full(rows, longest, np.int32), (longest - lengths).astype(np.int32)
    return tokens, lengths.astype(np.int32), np.zeros(rows, np.int32)


def _per_prompt(value, count: int, name: str) -> list:
    """One entry per prompt; None means none for each."""
    if value is None:
        return [()] * count
    value = list(value)
    if len(value) != count:
        raise ValueError(f"{name}: {len(value)} entries for {count} prompts (one per prompt)")
    return value


def _check_prompts(prompts: Sequence[Sequence[int]], vocab_size: int) -> None:
    if not prompts:
        raise ValueError("prompts: empty; give at least one prompt")
    for row, prompt in enumerate(prompts):
        if not len(prompt):
            raise ValueError(f"prompts[{row}]: empty; a prompt needs at least one token (BOS)")
        bad = [t for t in prompt if not 0 <= int(t) < vocab_size]
        if bad:
            raise ValueError(f"prompts[{row}]: id {bad[0]} outside [0, {vocab_size})")


# Per-row sampling keys of one step: row r's key is fold_in(fold_in(rng, r), step).
_keys_at = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(0, None)))


def _ends_with_stop(tokens: list[int], sequences: Sequence[Sequence[int]]) -> bool:
    return any(s and tokens[-len(s) :] == list(s) for s in sequences)


class _Decoder:
    """The jitted prefill and step of one (config, mesh, sampling) setting."""

    def __init__(self, config, mesh: Mesh | None, temperature: float, top_p: float):
        self.config, self.mesh = config, mesh
        self.rules = decoding_rules(config)
        self.sample = jax.vmap(
            functools.partial(sample_token, temperature=temperature, top_p=top_p)
        )
        self.prefill = jax.jit(self._prefill, static_argnums=5)
        self.step = jax.jit(self._step, donate_argnums=2)

    def _in_mesh(self, fn, *args):
        if self.mesh is None:
            return fn(*args)
        with sharding.activate(self.mesh, self.rules):
            return fn(*args)

    def _next(self, logits, keys, decodable):
        """Each row's next token from the logits [batch, vocab] of its last real position; on
        a mesh, every device holds them all, so every process can read them (multi-process)."""
        ids = self.sample(jnp.where(decodable, logits, -jnp.inf), keys)
        if self.mesh is None:
            return ids
        return jax.lax.with_sharding_constraint(ids, NamedSharding(self.mesh, PartitionSpec()))

    def _prefill(self, params, tokens, lengths, start, keys, cache_length, decodable):
        def run():
            cache = model.init_cache(self.config, tokens.shape[0], cache_length, start)
            logits, cache = model.decode(
                self.config, params, tokens, cache, lengths, last_only=True
            )
            return self._next(logits, keys, decodable), cache

        return self._in_mesh(run)

    def _step(self, params, tokens, cache, keys, decodable):
        def run():
            logits, new_cache = model.decode(
                self.config, params, tokens[:, None], cache, last_only=True
            )
            return self._next(logits, keys, decodable), new_cache

        return self._in_mesh(run)

    def place(self, params, *rows: np.ndarray):
        """params in their shardings and per-row arrays split over the batch axes (no mesh:
        as they are)."""
        if self.mesh is None:
            return params, *rows
        param_shardings = sharding.shardings(
            model.abstract_params(self.config),
            model.logical_axes(self.config),
            self.mesh,
            self.rules,
        )
        batch = sharding.batch_sharding(self.mesh, self.rules)
        by_row = tuple(NamedSharding(self.mesh, PartitionSpec(*batch.spec[: r.ndim])) for r in rows)
        return jax.device_put(params, param_shardings), *jax.device_put(rows, by_row)


_DECODERS: dict[tuple, _Decoder] = {}


def _decoder(config, mesh: Mesh | None, temperature: float, top_p: float) -> _Decoder:
    """One decoder per setting, so repeated calls reuse its compiled functions."""
    key = (config_lib.to_json(config), mesh, float(temperature), float(top_p))
    if key not in _DECODERS:
        _DECODERS[key] = _Decoder(config, mesh, temperature, top_p)
    return _DECODERS[key]


def generate_batch(
    config: ml_collections.ConfigDict,
    params,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    rng: jax.Array | None = None,
    stop_ids: Sequence[Collection[int]] | None = None,
    stop_sequences: Sequence[Sequence[Sequence[int]]] | None = None,
    padding: str = "left",
    mesh: Mesh | None = None,
    decodable: np.ndarray | None = None,
    buckets: bool = False,
) -> list[list[int]]:
    """The new token ids of each prompt, in prompt order.

    prompts         token id lists, of any (non-zero) lengths
    max_new_tokens  tokens to generate per prompt at most
    temperature     0: greedy (the argmax, equal to recomputing the whole sequence); else the
                    softmax temperature of nucleus sampling
    top_p           nucleus sampling keeps the most likely ids up to this probability mass
    rng             key of the sampling (default key 0); row r's token t uses
                    fold_in(fold_in(rng, r), t), whatever else is in the batch
    stop_ids        one collection of ids per prompt: its row stops after producing one of them
    stop_sequences  one list of id sequences per prompt: its row stops once its new tokens end
                    with one of them
    padding         "left" or "right": how the prompts are laid out in the cache (the results
                    are the same)
    mesh            a device mesh: rows split over its batch axes (data, fsdp), params and cache
                    over its model axes (config.sharding's rules; the sequence axis is not
                    used); None decodes on the default device
    decodable       bool [config.model.vocab_size]: the ids that may be produced (the
                    tokenizer's `decodable_mask`); None allows every id
    buckets         pad the prompt count and the longest prompt's length up to powers of two
                    (length at least MIN_BUCKET_LENGTH, not past max_position_embeddings -
                    max_new_tokens unless a prompt is), so calls of other sizes in the same
                    bucket reuse one compiled prefill and step (the results are the same)

    A row's ids end with the stop id or stop sequence that ended it, if one did. Rows that
    stop early keep their place in the batch until every row is done.
    """
    if padding not in PADDING_SIDES:
        raise ValueError(f"padding={padding!r}: must be one of {', '.join(PADDING_SIDES)}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}: must be at least 1")
    vocab = config.model.vocab_size
    _check_prompts(prompts, vocab)
    stops = [set(map(int, s)) for s in _per_prompt(stop_ids, len(prompts), "stop_ids")]
    stop_seqs = [
        [list(map(int, seq)) for seq in s]
        for s in _per_prompt(stop_sequences, len(prompts), "stop_sequences")
    ]
    if decodable is None:
        decodable = np.ones(vocab, bool)
    decodable = np.asarray(decodable, bool)
    if decodable.shape != (vocab,):
        raise ValueError(f"decodable: shape {decodable.shape}, expected ({vocab},)")
    rng = jax.random.key(0) if rng is None else rng

    decoder = _decoder(config, mesh, temperature, top_p)
    split = 1 if mesh is None else sharding.data_parallel_size(mesh, decoder.rules)
    if buckets:
        limit = config.model.max_position_embeddings - max_new_tokens
        rows, length = _bucketed(prompts, split, limit)
    else:
        rows, length = -(-len(prompts) // split) * split, None
    tokens, lengths, start = _padded_batch(prompts, rows, padding, length)
    row_keys = jax.vmap(lambda r: jax.random.fold_in(rng, r))(jnp.arange(rows))
    params, tokens, lengths, start = decoder.place(params, tokens, lengths, start)
    cache_length = int(tokens.shape[1]) + max_new_tokens
    decodable = jnp.asarray(decodable)

    new_tokens, cache = decoder.prefill(
        params, tokens, lengths, start, _keys_at(row_keys, 0), cache_length, decodable
    )
    out: list[list[int]] = [[] for _ in prompts]
    active = list(range(len(prompts)))
    for step in range(max_new_tokens):
        ids = np.asarray(new_tokens)
        for row in active:
            out[row].append(int(ids[row]))
        active = [
            r
            for r in active
            if out[r][-1] not in stops[r] and not _ends_with_stop(out[r], stop_seqs[r])
        ]
        if not active or step + 1 == max_new_tokens:
            break
        new_tokens, cache = decoder.step(
            params, new_tokens, cache, _keys_at(row_keys, step + 1), decodable
        )
    return out


def generate(
    config: ml_collections.ConfigDict,
    params,
    prompt: Sequence[int],
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    rng: jax.Array | None = None,
    stop_id: int | None = None,
    decodable: np.ndarray | None = None,
) -> list[int]:
    """The new token ids after `prompt` (stopping after `stop_id` if it is produced): one prompt
    through `generate_batch`."""
    return generate_batch(
        config,
        params,
        [prompt],
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        rng=rng,
        stop_ids=None if stop_id is None else [[stop_id]],
        decodable=decodable,
    )[0]


def _define_flags() -> None:
    # Defined only when run as a program, so importing this module defines no flags.
    flags.DEFINE_string("workdir", None, "A training run's workdir.", required=True)
    flags.DEFINE_string("prompt", "", "Text to continue.")
    flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate at most.")
    flags.DEFINE_float("temperature", 0.0, "0 = greedy; else softmax temperature.")
    flags.DEFINE_float("top_p", 0.95, "Nucleus sampling: smallest set of this probability.")
    flags.DEFINE_integer("seed", 0, "Seed of the sampling.")
    flags.DEFINE_bool("chat", False, "The prompt is a user message: reply in the chat format.")
    flags.DEFINE_string("system", "", "--chat: a system message before the user's.")


def chat_reply(config, params, tokenizer, messages, **sampling) -> tuple[str, str]:
    """(the rendered prompt, the assistant's reply) of a conversation ending with a user
    message; generation stops on the chat format's stop tokens (the reply ends with the one it
    stopped on; none if it ran out of tokens)."""
    prompt = chat.encode_prompt(tokenizer, chat.check_messages(messages, need_assistant=False))
    stops = chat.stop_ids(tokenizer)
    new = generate_batch(
        config,
        params,
        [prompt],
        stop_ids=[stops],
        decodable=tokenizer.decodable_mask(config.model.vocab_size),
        **sampling,
    )[0]
    return chat.render(messages, add_generation_prompt=True), tokenizer.decode(new)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:
        # orbax logs its read-only restore at INFO and WARNING; the sample is the output.
        logging.set_verbosity(logging.ERROR)
    config, params, step = restore_lib.restore_params_of_run(FLAGS.workdir)
    tokenizer = load_tokenizer(config)
    if FLAGS.chat:
        system = [{"role": "system", "content": FLAGS.system}] if FLAGS.system else []
        prompt, reply = chat_reply(
            config,
            params,
            tokenizer,
            [*system, {"role": "user", "content": FLAGS.prompt}],
            max_new_tokens=FLAGS.max_new_tokens,
            temperature=FLAGS.temperature,
            top_p=FLAGS.top_p,
            rng=jax.random.key(FLAGS.seed),
        )
        print(f"[checkpoint step {step}]\n{prompt}{reply}")
        return
    prompt = [tokenizer.bos_id, *tokenizer.encode(FLAGS.prompt)]
    new = generate(
        config,
        params,
        prompt,
        FLAGS.max_new_tokens,
        temperature=FLAGS.temperature,
        top_p=FLAGS.top_p,
        rng=jax.random.key(FLAGS.seed),
        stop_id=tokenizer.eos_id,
        decodable=tokenizer.decodable_mask(config.model.vocab_size),
    )
    text = tokenizer.decode([*prompt[1:], *(t for t in new if t != tokenizer.eos_id)])
    print(f"[checkpoint step {step}] {text}")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
