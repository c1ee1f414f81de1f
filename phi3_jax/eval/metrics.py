"""Task metrics from per-request scores.

Multiple choice (lm-eval's definitions): `acc` (argmax of the log-likelihoods), `acc_norm`
(argmax of log-likelihood per character of the choice), `acc_norm_tokens` (per token), and the
continuous ones that rank small models: `logprob` (mean log-probability of the correct
continuation) and `bits_per_byte` of it. Generation: `exact_match`. Rolling log-likelihood:
`token_perplexity`, `bits_per_byte`, `byte_perplexity`.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Sequence

import numpy as np

LN2 = math.log(2)


def multiple_choice(
    lls: Sequence[float],
    tokens: Sequence[int],
    choices: Sequence[str],
    gold: int,
    scored: Sequence[str],
) -> dict[str, float]:
    """Per-document metrics; `choices` are the texts lm-eval normalises by (none for partial
    scoring, whose continuations are all the same), `scored` the continuations as scored."""
    lls_ = np.asarray(lls, np.float64)
    out = {
        "acc": float(np.argmax(lls_) == gold),
        "logprob": float(lls_[gold]),
        "bits_per_byte": float(-lls_[gold] / (LN2 * max(len(scored[gold].encode()), 1))),
    }
    if choices:
        chars = np.asarray([max(len(c), 1) for c in choices], np.float64)
        out["acc_norm"] = float(np.argmax(lls_ / chars) == gold)
        out["acc_norm_tokens"] = float(np.argmax(lls_ / np.asarray(tokens, np.float64)) == gold)
    return out


def rolling(lls: Sequence[float], tokens: Sequence[int], texts: Sequence[str]) -> dict[str, float]:
    """Corpus-level perplexities of texts scored whole."""
    nll = -float(np.sum(lls))
    n_bytes = sum(len(t.encode()) for t in texts)
    return {
        "token_perplexity": math.exp(min(nll / max(sum(tokens), 1), 80.0)),
        "bits_per_byte": nll / (LN2 * max(n_bytes, 1)),
        "byte_perplexity": math.exp(min(nll / max(n_bytes, 1), 80.0)),
    }


def _normalize_answer(text: str) -> str:
    """SQuAD/TriviaQA normalisation: lower case, no punctuation, articles or extra spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def triviaqa_match(generation: str, aliases: Sequence[str]) -> float:
    """1 if the normalised generation equals a normalised alias."""
    guess = _normalize_answer(generation)
    return float(any(guess == _normalize_answer(a) for a in aliases))


_NUMBER = re.compile(r"-?[\d,]*\.?\d+")


def final_number(text: str) -> str | None:
    """The number a chain of thought ends on: after 'The answer is' if it says so, else the
    last number in the text; commas, a trailing period and leading $ dropped."""
    said = re.findall(r"[Tt]he answer is\s*\$?(-?[\d,]*\.?\d+)", text)
    found = said or _NUMBER.findall(text)
    if not found:
        return None
    number = found[-1].replace(",", "").rstrip(".")
    return number[:-2] if number.endswith(".0") else number


def gsm8k_match(generation: str, answer: str) -> float:
    """1 if the generation's final number is the answer's."""
    return float(final_number(generation) == final_number(answer))


def mean(values: Sequence[dict[str, float]]) -> dict[str, float]:
    """The mean of each metric over the documents that have it."""
    keys = dict.fromkeys(k for v in values for k in v)
    return {k: float(np.mean([v[k] for v in values if k in v])) for k in keys}
