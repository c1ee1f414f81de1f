"""Phi-3-small through the scorer: its tiktoken tokenizer, log-likelihoods equal to a plain
forward pass, and greedy generations that never produce a dummy id."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from configs import phi3_small
from phi3_jax import model
from phi3_jax.data.tokenizer import load_tokenizer
from phi3_jax.eval import runner, scorer


@pytest.mark.slow
def test_small_scores_and_generates_with_its_tokenizer():
    config = phi3_small.get_config("tiny")
    config.model.dtype = "float32"
    params = model.init_params(config, jax.random.key(0))
    tok = load_tokenizer(config)
    ours = scorer.Scorer(config, params, tok, add_bos=config.data.add_bos, log=None)
    # One request checked against the whole sequence's log-softmax.
    context, continuation = ours.encode_pair("The list type", " supports slicing.")
    ((ll, _, n),) = ours.loglikelihood_ids([(context, continuation)])
    ids = context + continuation
    logp = jax.nn.log_softmax(model.logits(config, params, np.asarray([ids[:-1]]))[0], -1)
    want = sum(float(logp[len(context) - 1 + i, t]) for i, t in enumerate(continuation))
    assert n == len(continuation) and abs(ll - want) <= 1e-4
    results = runner.evaluate(ours, ["copa"], limit=2, num_fewshot=0)
    assert 0 <= results[0].metrics["acc"] <= 1 and np.isfinite(results[0].metrics["logprob"])
    # The scorer generates with the tokenizer's decodable mask: no dummy or padding id.
    (text,) = ours.generate([("Question: Which city?\nAnswer:", ("\n",), 8)])
    assert isinstance(text, str)
    assert not ours._decodable[list(config.model.dummy_token_ids)].any()
