"""The search's fitness: perplexity of long held-out documents under candidate rescale factors,
in one compiled function on the run's mesh.

`long_rows` turns documents into rows of exactly `length` tokens: each document as the training
pipeline tokenizes it (BOS if the run adds it, the text, EOS), either whole documents of at
least `length` tokens (their first `length`), or, where a corpus has too few of them, the
documents joined end to end and cut into consecutive rows (one position sequence over several
documents; the model may attend across their boundaries, as in packed training without
segment masks). `held_out` keeps the documents the run's pipeline held out of training (the same
content hash and `data.eval_fraction`); `row_part` splits the rows they give into interleaved
parts (the search's fitness rows and an evaluation's, drawn alike from the same documents).

`PositionNLL` holds the rows on the mesh (batch split over its data axes, padded with rows of
weight 0 to a multiple of them) and one jitted function params x rows x factors -> the mean
negative log-likelihood at each position and of each row; candidate factor arrays are arguments (traced), so
scoring any number of them compiles once (`compiles` counts).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from phi3_jax import errors, model, sharding
from phi3_jax.data import sources
from phi3_jax.train import state as state_lib

WHOLE, JOINED = "whole", "joined"
DOCUMENT_MODES = (WHOLE, JOINED)


class FitnessError(errors.BadInputError):
    """Too few long documents, or a model the search cannot rescale; the message says which."""


def held_out(texts: Sequence[str], eval_fraction: float) -> list[str]:
    """The texts the pipeline holds out at `eval_fraction` (all of them when it is 0)."""
    if not eval_fraction:
        return list(texts)
    return [t for t in texts if sources.eval_fraction_of(t) < eval_fraction]


def document_ids(text: str, encode: Callable[[str], Sequence[int]], bos: int | None, eos: int):
    """A document's ids as the pipeline makes them: [BOS] + text + EOS."""
    return ([bos] if bos is not None else []) + list(encode(text)) + [eos]


def long_rows(
    texts: Sequence[str],
    encode: Callable[[str], Sequence[int]],
    length: int,
    count: int | None,
    *,
    bos: int | None,
    eos: int,
    mode: str = WHOLE,
) -> np.ndarray:
    """int32 [count, length]: the first `count` rows (None: all) of `length` tokens the texts
    give (`mode`: WHOLE documents of at least `length` tokens, or documents JOINED and cut). Too
    few (or none) is a FitnessError naming how many there are."""
    if mode not in DOCUMENT_MODES:
        raise FitnessError(f"documents={mode!r}: expected one of {', '.join(DOCUMENT_MODES)}")
    rows: list[list[int]] = []
    joined: list[int] = []
    for text in texts:
        ids = document_ids(text, encode, bos, eos)
        if mode == WHOLE:
            if len(ids) >= length:
                rows.append(ids[:length])
        else:
            joined += ids
            while len(joined) >= length:
                rows.append(joined[:length])
                joined = joined[length:]
        if count is not None and len(rows) >= count:
            return np.asarray(rows[:count], np.int32)
    if count is None and rows:
        return np.asarray(rows, np.int32)
    total = sum(len(document_ids(t, encode, bos, eos)) for t in texts)
    what = (
        f"documents of at least {length} tokens"
        if mode == WHOLE
        else f"rows of {length} tokens from {len(texts)} documents joined ({total} tokens)"
    )
    raise FitnessError(
        f"{len(rows)} {what}; {count or 1} needed (fewer samples, more documents"
        + (", or documents=joined)" if mode == WHOLE else ")")
    )


def row_part(spec: str) -> tuple[int, int]:
    """(r, n) of "R/N": the rows i with i % n == r of those the documents give. Anything else
    is a FitnessError naming it."""
    try:
        r, n = (int(x) for x in spec.split("/"))
    except ValueError:
        r, n = -1, 0
    if not 0 <= r < n:
        raise FitnessError(f"rows={spec!r}: expected R/N with 0 <= R < N (e.g. 0/2)")
    return r, n


def part_rows(
    texts: Sequence[str],
    encode: Callable[[str], Sequence[int]],
    length: int,
    count: int,
    part: tuple[int, int],
    **kwargs,
) -> np.ndarray:
    """The first `count` rows of `part` (`row_part`) of the rows `long_rows(texts, ...)` gives."""
    r, n = part
    return long_rows(texts, encode, length, r + n * (count - 1) + 1, **kwargs)[r::n]


def extended_config(
    config: ml_collections.ConfigDict, target_length: int, original_length: int
) -> ml_collections.ConfigDict:
    """The model config at `target_length` with LongRoPE: the original window
    `original_length`, the model's short factors (ones for a plain-RoPE model) and, until a
    candidate replaces them, its long factors (ones likewise). The cos/sin magnitude is the
    model's `rope_attention_factor`, else LongRoPE's default for target / original."""
    if config.model.architecture != "phi3":
        raise FitnessError(
            f"model.architecture={config.model.architecture!r}: LongRoPE rescales phi3 models"
        )
    out = ml_collections.ConfigDict(config.to_dict())
    m = out.model
    pairs = m.hidden_size // m.num_heads // 2
    if m.rope_scaling != "longrope":
        m.rope_short_factor = m.rope_long_factor = (1.0,) * pairs
    m.rope_scaling = "longrope"
    m.original_max_position_embeddings = original_length
    m.max_position_embeddings = max(target_length, original_length)
    out.train.seq_len = min(out.train.seq_len, m.max_position_embeddings)
    return out


def _position_nll(config, params, tokens, weights, rope_factors):
    """(sum over rows of weight x next-token NLL at each position [length - 1], mean NLL of each
    row [rows]), float32."""
    logits = model.logits(config, params, tokens, rope_factors=rope_factors)
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    return jnp.sum(nll * weights[:, None], axis=0), jnp.mean(nll, axis=1)


class PositionNLL:
    """Mean next-token NLL by position of fixed rows, for any factor arrays, on `mesh`.

    `config` is the model's config with LongRoPE (`extended_config`); the candidate replaces
    its long factors (`which="long"`) or its short ones (`"short"`, the short-window search).
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        params,
        rows: np.ndarray,
        mesh: Mesh,
        which: str = "long",
    ):
        if which not in ("long", "short"):
            raise FitnessError(f"which={which!r}: expected long or short")
        self.config, self.which, self.rows = config, which, rows
        rules = sharding.logical_rules(config)
        row_sharding = sharding.batch_sharding(mesh, rules)
        parts = sharding.data_parallel_size(mesh, rules)
        padded = -(-rows.shape[0] // parts) * parts
        tokens = np.zeros((padded, rows.shape[1]), np.int32)
        tokens[: rows.shape[0]] = rows
        weights = (np.arange(padded) < rows.shape[0]).astype(np.float32)
        self._tokens = jax.device_put(tokens, row_sharding)
        weight_sharding = NamedSharding(mesh, PartitionSpec(row_sharding.spec[0]))
        self._weights = jax.device_put(weights, weight_sharding)
        param_shardings = state_lib.param_shardings(config, mesh)
        self._params = jax.device_put(params, param_shardings)
        replicated = NamedSharding(mesh, PartitionSpec())
        # A plain-RoPE model is scored as it is (its own tables, no candidates).
        self._rescaled = config.model.rope_scaling == "longrope"
        self._short = np.asarray(config.model.rope_short_factor, np.float32)
        self._long = np.asarray(config.model.rope_long_factor, np.float32)

        def fn(params, tokens, weights, short_factor, long_factor):
            factors = (short_factor, long_factor) if self._rescaled else None
            with sharding.activate(mesh, rules):
                return _position_nll(config, params, tokens, weights, factors)

        self._fn = jax.jit(
            fn,
            in_shardings=(param_shardings, row_sharding, weight_sharding, replicated, replicated),
            out_shardings=(replicated, replicated),
        )

    @property
    def compiles(self) -> int:
        """How many programs the scoring function has compiled (1 after any number of calls)."""
        return self._fn._cache_size()

    def _scores(self, candidate: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(mean NLL by position [length - 1], mean NLL of each row [rows]) with `candidate` as
        the long (or short) factors; None: the config's own."""
        short, long = self._short, self._long
        if candidate is not None:
            if not self._rescaled:
                raise FitnessError("rescale factors given for a model without LongRoPE")
            candidate = np.asarray(candidate, np.float32)
            if candidate.shape != self._long.shape:
                raise FitnessError(
                    f"factors of shape {candidate.shape}: the model has {self._long.shape[0]} "
                    f"rotary dimension pairs"
                )
            short, long = (short, candidate) if self.which == "long" else (candidate, long)
        total, by_row = self._fn(self._params, self._tokens, self._weights, short, long)
        total, by_row = (np.asarray(x, np.float64) for x in jax.device_get((total, by_row)))
        return total / self.rows.shape[0], by_row[: self.rows.shape[0]]

    def __call__(self, candidate: np.ndarray | None = None) -> np.ndarray:
        """Mean NLL at positions 1 .. length - 1 [length - 1] with `candidate` as the long (or
        short) factors; None: the config's own."""
        return self._scores(candidate)[0]

    def row_nll(self, candidate: np.ndarray | None = None) -> np.ndarray:
        """Mean NLL of each row [rows] (as `__call__` takes `candidate`): paired comparisons."""
        return self._scores(candidate)[1]

    def perplexity(self, candidate: np.ndarray | None = None) -> float:
        """exp of the mean NLL over every predicted position of every row."""
        return math.exp(float(np.mean(self(candidate))))


def bucket_perplexity(position_nll: np.ndarray, buckets: int) -> list[tuple[int, int, float]]:
    """(first, last, perplexity) of `buckets` equal spans of positions 1 .. length - 1 (mean
    NLL by position, as `PositionNLL` gives it)."""
    edges = np.linspace(0, position_nll.shape[0], buckets + 1).round().astype(int)
    return [
        (int(a) + 1, int(b), math.exp(float(np.mean(position_nll[a:b]))))
        for a, b in zip(edges[:-1], edges[1:], strict=True)
        if b > a
    ]
