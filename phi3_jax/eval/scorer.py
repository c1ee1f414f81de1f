"""The model side of evaluation: log-likelihoods, rolling log-likelihoods and greedy generations.

Text becomes ids the way lm-eval-harness's `hf` backend does it, so the numbers are comparable:
a context's trailing spaces move to the continuation; the continuation's ids are those of
context + continuation after the context's ids; an empty context is the prefix token (BOS, else
EOS); with `add_bos` every context starts with BOS. A request longer than the context window
keeps its last `max_length + 1` ids (left truncation, as lm-eval does) and is counted.

Requests are tokenized once, sorted by length and cut into batches of a few padded shapes
(lengths rounded up to powers of two or one and a half times one, rows filling a token budget),
so a task compiles a handful of times. Only each row's last positions, as many as the call's
longest continuation (rounded up to a power of two), go through the lm_head, and a
log-probability is the target's logit minus the logsumexp: the context's positions are never
projected onto the vocabulary and no normalised copy of the scores is made. The params stay
where they are (a run's mesh or one device). Given the mesh, each batch is a global array split
by rows over its batch axes and the scores come back replicated, so several processes that build
the same batches (`multihost`) score them together.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from phi3_jax import generate as generate_lib
from phi3_jax import model, sharding

Log = Callable[[str], None]
MIN_LENGTH = 32


@dataclasses.dataclass
class Counters:
    """What the scorer did: requests, left-truncated requests, padded batch shapes compiled."""

    requests: int = 0
    truncated: int = 0
    shapes: set = dataclasses.field(default_factory=set)


def padded_length(n: int, max_length: int) -> int:
    """n rounded up to a power of two (at least MIN_LENGTH), at most max_length."""
    return min(generate_lib.power_of_two_at_least(n, MIN_LENGTH), max_length)


def row_length(n: int, max_length: int) -> int:
    """A scoring row's padded length: n rounded up to MIN_LENGTH x 1, 1.5, 2, 3, 4, 6, 8, ...
    (powers of two and one and a half times them: at most a third of a row is padding, two
    shapes per octave), at most max_length."""
    bucket = padded_length(n, max_length)
    three_quarters = 3 * bucket // 4
    return three_quarters if bucket > MIN_LENGTH and three_quarters >= n else bucket


def _scored_logits(config, params, tokens, positions):
    """float32 logits [batch, window, vocab] at `positions` [batch, window] of each row only:
    the final hidden states there go through the lm_head (the context's positions need none);
    an architecture without that split projects every position, then picks."""
    if model.architectures.of(config).hidden_decoder is None:
        every = model.logits(config, params, tokens)
        return jnp.take_along_axis(every, positions[..., None], axis=1)
    hidden = model.hidden_states(config, params, tokens)
    picked = jnp.take_along_axis(hidden, positions[..., None], axis=1)
    return model.lm_head_logits(config, params, picked)


def _token_logprobs(config, params, tokens, positions, targets, mask):
    """Per row: the log-probability of each target at `positions` [batch, window] and whether
    each masked target is the argmax (lm-eval's is_greedy). The log-probability is logit minus
    logsumexp: no normalised copy of the vocabulary's scores."""
    logits = _scored_logits(config, params, tokens, positions)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    logp = picked - jax.nn.logsumexp(logits, axis=-1)
    greedy = jnp.argmax(logits, axis=-1) == targets
    return logp, jnp.all(greedy | (mask == 0), axis=-1)


class Scorer:
    """Scores text with one model: `loglikelihood`, `loglikelihood_rolling`, `generate`.

    `tokenizer` is a `load_tokenizer` tokenizer: encode (no special tokens), decode, bos_id,
    eos_id, pad_id, special_ids, decodable_mask.
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        params,
        tokenizer,
        *,
        add_bos: bool = False,
        max_length: int | None = None,
        batch_tokens: int = 4096,
        gen_batch: int = 16,
        mesh=None,
        log: Log | None = print,
        progress_every_s: float = 30.0,
    ):
        self.config, self.params, self.tokenizer = config, params, tokenizer
        self.add_bos = add_bos
        self.max_length = max_length or config.model.max_position_embeddings
        self.batch_tokens = batch_tokens
        self.gen_batch, self.mesh = gen_batch, mesh
        self.log = log or (lambda _: None)
        self.progress_every_s = progress_every_s
        bos = getattr(tokenizer, "bos_id", None)
        self.prefix_id = bos if bos is not None and bos >= 0 else tokenizer.eos_id
        self.counters = Counters()
        if mesh is None:
            self._rows, self._split = None, 1
            self._score = jax.jit(functools.partial(_token_logprobs, config))
        else:
            rules = generate_lib.decoding_rules(config)
            self._rows = sharding.batch_sharding(mesh, rules)
            self._split = sharding.data_parallel_size(mesh, rules)

            def score(*args):
                with sharding.activate(mesh, rules):
                    return _token_logprobs(config, *args)

            self._score = jax.jit(score, out_shardings=NamedSharding(mesh, PartitionSpec()))
        tok = tokenizer
        self._specials = set(tok.special_ids.values()) | {tok.bos_id, tok.eos_id, tok.pad_id}
        # Generation never picks an id the tokenizer cannot decode (padding rows, dummy ids).
        rows = config.model.vocab_size
        self._decodable = np.asarray(tok.decodable_mask(rows), bool)

    # ------------------------------------------------------------------------------------------
    # Tokenization (lm-eval's conventions)

    def encode(self, text: str) -> list[int]:
        head = [self.prefix_id] if self.add_bos else []
        return head + list(self.tokenizer.encode(text))

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids) as lm-eval's causal backends split them."""
        if not context:
            cont = list(self.tokenizer.encode(continuation))
            if cont and cont[0] == self.prefix_id:
                return cont[:1], cont[1:]
            return [self.prefix_id], cont
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.encode(context + continuation)
        context_ids = self.encode(context)
        return context_ids, whole[len(context_ids) :]

    # ------------------------------------------------------------------------------------------
    # Log-likelihood

    def loglikelihood(
        self, pairs: Sequence[tuple[str, str]], desc: str = "loglikelihood"
    ) -> list[tuple[float, bool, int]]:
        """(log-probability of the continuation, is it greedy, its token count) per pair."""
        return self.loglikelihood_ids([self.encode_pair(c, x) for c, x in pairs], desc)

    def loglikelihood_ids(
        self, pairs: Sequence[tuple[list[int], list[int]]], desc: str = "loglikelihood"
    ) -> list[tuple[float, bool, int]]:
        """Scores id pairs; the window is each pair's last max_length + 1 ids."""
        rows = []
        for context, continuation in pairs:
            if not continuation:
                raise ValueError("a continuation of no tokens cannot be scored")
            if len(continuation) > self.max_length:
                raise ValueError(
                    f"a continuation of {len(continuation)} tokens exceeds the context window "
                    f"of {self.max_length}"
                )
            ids = (context + continuation)[-(self.max_length + 1) :]
            self.counters.truncated += len(context) + len(continuation) > len(ids)
            rows.append((ids[:-1], ids[1:], len(continuation)))
        out = self._score_rows(rows, desc)
        return [(ll, greedy, n) for (ll, greedy), (_, _, n) in zip(out, rows, strict=True)]

    def _score_rows(self, rows: list[tuple[list[int], list[int], int]], desc: str):
        """(summed logprob, greedy) of the last n targets of each (inputs, targets, n) row.

        Only a window of each row's last positions is projected onto the vocabulary: the power
        of two at least as long as the longest continuation of the call (at most the row)."""
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        results: list = [None] * len(rows)
        longest = max((n for _, _, n in rows), default=1)
        window_max = generate_lib.power_of_two_at_least(longest, 1)
        progress = _Progress(desc, len(rows), self.log, self.progress_every_s)
        start = 0
        while start < len(order):
            length = row_length(len(rows[order[start]][0]), self.max_length)
            window = min(window_max, length)
            batch = -(-max(1, self.batch_tokens // length) // self._split) * self._split
            chunk = order[start : start + batch]
            tokens = np.zeros((batch, length), np.int32)
            positions = np.zeros((batch, window), np.int32)
            targets = np.zeros((batch, window), np.int32)
            mask = np.zeros((batch, window), np.float32)
            for r, i in enumerate(chunk):
                inputs, outs, n = rows[i]
                tokens[r, : len(inputs)] = inputs
                # The window ends at the row's last target; its last n positions are scored.
                positions[r] = np.maximum(np.arange(len(outs) - window, len(outs)), 0)
                targets[r] = np.asarray(outs, np.int32)[positions[r]]
                mask[r, window - n :] = 1.0
            self.counters.shapes.add((batch, length, window))
            arrays = (tokens, positions, targets, mask)
            if self._rows is not None:
                arrays = jax.device_put(arrays, self._rows)
            logp, greedy = jax.device_get(self._score(self.params, *arrays))
            # Summed in float64: a long continuation's sum keeps its float32 terms' precision.
            ll = np.sum(np.where(mask > 0, logp.astype(np.float64), 0.0), axis=-1)
            for r, i in enumerate(chunk):
                results[i] = (float(ll[r]), bool(greedy[r]))
            start += len(chunk)
            progress.update(len(chunk))
        self.counters.requests += len(rows)
        progress.done()
        return results

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[tuple[float, int]]:
        """(log-probability of the whole text, its token count) per text, scored in windows of
        max_length tokens (lm-eval's disjoint rolling windows)."""
        pairs, owner = [], []
        for k, text in enumerate(texts):
            ids = self.encode(text)
            if not ids:
                raise ValueError(f"text {k} has no tokens")
            windows = rolling_windows(ids, self.prefix_id, self.max_length)
            pairs += windows
            owner += [k] * len(windows)
        totals = [[0.0, 0] for _ in texts]
        scores = self.loglikelihood_ids(pairs, "loglikelihood_rolling")
        for k, (ll, _, n) in zip(owner, scores, strict=True):
            totals[k][0] += ll
            totals[k][1] += n
        return [(ll, n) for ll, n in totals]

    # ------------------------------------------------------------------------------------------
    # Generation

    def generate(self, requests: Sequence[tuple[str, Sequence[str], int]]) -> list[str]:
        """Greedy continuation of each (context, stop sequences, max new tokens), cut before the
        first stop sequence; EOS ends it too. The context keeps its last
        max_length - max_new_tokens ids (left truncation, counted). Requests go through
        `generate.generate_batch` in batches of `gen_batch`, longest first, grouped by their
        stop sequences and token budget, padded to power-of-two buckets (a task compiles once
        per bucket)."""
        prompts = []
        for context, _, max_new in requests:
            keep = self.max_length - max_new
            if keep <= 0:
                raise ValueError(
                    f"max_gen_toks={max_new} leaves no room for a context in {self.max_length}"
                )
            ids = self.encode(context) or [self.prefix_id]
            self.counters.truncated += len(ids) > keep
            prompts.append(ids[-keep:])
        groups: dict[tuple, list[int]] = {}
        for i in sorted(range(len(requests)), key=lambda i: -len(prompts[i])):
            groups.setdefault((tuple(requests[i][1]), requests[i][2]), []).append(i)
        out: list = [None] * len(requests)
        progress = _Progress("generate_until", len(requests), self.log, self.progress_every_s)
        for (until, max_new), indices in groups.items():
            # Stop early once the ids of a stop string come out; the text is cut either way.
            stops = [ids for ids in map(self.tokenizer.encode, until) if ids]
            for start in range(0, len(indices), self.gen_batch):
                chunk = indices[start : start + self.gen_batch]
                new = generate_lib.generate_batch(
                    self.config,
                    self.params,
                    [prompts[i] for i in chunk],
                    max_new_tokens=max_new,
                    stop_ids=[{self.tokenizer.eos_id}] * len(chunk),
                    stop_sequences=[stops] * len(chunk),
                    mesh=self.mesh,
                    decodable=self._decodable,
                    buckets=True,
                )
                for i, ids in zip(chunk, new, strict=True):
                    out[i] = cut_at_stop(self._decode_text(ids), until)
                self.counters.requests += len(chunk)
                progress.update(len(chunk))
        progress.done()
        return out

    def _decode_text(self, ids: Sequence[int]) -> str:
        """Text of generated ids without special tokens (transformers' skip_special_tokens)."""
        return self.tokenizer.decode([i for i in ids if i not in self._specials])


def rolling_windows(ids: list[int], prefix: int, max_length: int) -> list[tuple[list, list]]:
    """lm-eval's disjoint rolling windows (context, targets): every id is a target once; the
    first window is conditioned on `prefix`, each later one on the max_length + 1 - n ids
    before its n targets."""
    first = min(max_length, len(ids))
    windows = [([prefix], ids[:first])]
    end = first
    while end < len(ids):
        n = min(max_length, len(ids) - end)
        end += n
        windows.append((ids[end - max_length - 1 : end - n], ids[end - n : end]))
    return windows


def cut_at_stop(text: str, until: Sequence[str]) -> str:
    """The text before the first occurrence of any stop sequence."""
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text


class _Progress:
    """A progress line every `every_s` seconds: done/total, requests/s, ETA."""

    def __init__(self, desc: str, total: int, log: Log, every_s: float):
        self.desc, self.total, self.log, self.every_s = desc, total, log, every_s
        self.done_n, self.start = 0, time.perf_counter()
        self.last = self.start

    def update(self, n: int) -> None:
        self.done_n += n
        now = time.perf_counter()
        if now - self.last >= self.every_s:
            self.last = now
            self.log(self.line(now))

    def line(self, now: float) -> str:
        rate = self.done_n / max(now - self.start, 1e-9)
        eta = (self.total - self.done_n) / rate if rate else math.inf
        return (
            f"{self.desc}: {self.done_n}/{self.total} requests | {rate:.1f} requests/s | "
            f"ETA {eta:.0f} s"
        )

    def done(self) -> None:
        if self.total and time.perf_counter() - self.start >= self.every_s:
            self.log(self.line(time.perf_counter()))
