"""`python -m phi3_jax.generate --workdir=DIR --prompt="..."`: sample from a run's latest checkpoint.

The prompt goes through the model once into a key/value cache (`model.init_cache`/`model.decode`),
then one token per step; temperature 0 is greedy, otherwise nucleus (top-p) sampling. Text is
encoded and decoded with the run's own tokenizer (its saved `data.tokenizer`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags, logging

from phi3_jax import checkpoint, model
from phi3_jax.data.tokenizer import load_tokenizer

FLAGS = flags.FLAGS


def sample_token(logits: jax.Array, rng: jax.Array, temperature: float, top_p: float) -> jax.Array:
    """One token id from float logits [vocab]: argmax at temperature 0, else top-p sampling."""
    if temperature == 0:
        return jnp.argmax(logits)
    logits = logits / temperature
    order = jnp.argsort(-logits)
    probs = jax.nn.softmax(logits[order])
    # Keep the most likely tokens until their mass reaches top_p (the first one always).
    keep = jnp.cumsum(probs) - probs < top_p
    choice = jax.random.categorical(rng, jnp.where(keep, logits[order], -jnp.inf))
    return order[choice]


def generate(
    config: ml_collections.ConfigDict,
    params,
    prompt: list[int],
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    rng: jax.Array | None = None,
    stop_id: int | None = None,
) -> list[int]:
    """The new token ids after `prompt` (stopping after `stop_id` if it is sampled)."""
    rng = jax.random.key(0) if rng is None else rng
    decode = jax.jit(functools.partial(model.decode, config))
    sample = jax.jit(functools.partial(sample_token, temperature=temperature, top_p=top_p))
    cache = model.init_cache(config, 1, len(prompt) + max_new_tokens)
    logits, cache = decode(params, jnp.asarray([prompt], jnp.int32), cache)
    out: list[int] = []
    for i in range(max_new_tokens):
        token = sample(logits[0, -1], jax.random.fold_in(rng, i))
        out.append(int(token))
        if out[-1] == stop_id or i + 1 == max_new_tokens:
            break
        logits, cache = decode(params, token.reshape(1, 1).astype(jnp.int32), cache)
    return out


def _define_flags() -> None:
    # Defined only when run as a program, so importing this module defines no flags.
    flags.DEFINE_string("workdir", None, "A training run's workdir.", required=True)
    flags.DEFINE_string("prompt", "", "Text to continue.")
    flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate at most.")
    flags.DEFINE_float("temperature", 0.0, "0 = greedy; else softmax temperature.")
    flags.DEFINE_float("top_p", 0.95, "Nucleus sampling: smallest set of this probability.")
    flags.DEFINE_integer("seed", 0, "Seed of the sampling.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:
        # orbax logs its read-only restore at INFO and WARNING; the sample is the output.
        logging.set_verbosity(logging.ERROR)
    config, params, step = checkpoint.restore_params_of_run(FLAGS.workdir)
    tokenizer = load_tokenizer(config)
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
    )
    text = tokenizer.decode([*prompt[1:], *(t for t in new if t != tokenizer.eos_id)])
    print(f"[checkpoint step {step}] {text}")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
