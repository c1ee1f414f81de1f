"""lm-eval-harness's `local-completions` model scores log-likelihoods through phi3_jax.serve
(token-id prompts, echo, logprobs, max_tokens=1): equal to phi3_jax.eval's scorer on the same
model and tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
from lm_eval.api.instance import Instance
from lm_eval.models.openai_completions import LocalCompletionsAPI

from phi3_jax.eval.scorer import Scorer
from tests.serve.serve_fixtures import MODEL, served, tiny_loaded

PAIRS = [
    ("The list type", " supports appending"),
    ("A dictionary maps", " keys to values"),
    ("Water", " boils"),
]


@pytest.mark.slow  # about 25 s idle: a compilation per request shape on both sides
def test_lm_eval_local_completions_scores_like_our_scorer(tmp_path):
    loaded = tiny_loaded()
    loaded.tokenizer.save_hf(str(tmp_path))
    with served() as (url, _):
        lm = LocalCompletionsAPI(
            base_url=f"{url}/v1/completions",
            model=MODEL,
            tokenizer=str(tmp_path),
            tokenizer_backend="huggingface",
            tokenized_requests=True,
            max_length=128,
            num_concurrent=1,
        )
        requests = [Instance("loglikelihood", {}, p, i) for i, p in enumerate(PAIRS)]
        theirs = lm.loglikelihood(requests, disable_tqdm=True)
    scorer = Scorer(loaded.config, loaded.params, loaded.tokenizer, log=None)
    ours = scorer.loglikelihood(PAIRS)
    np.testing.assert_allclose([t[0] for t in theirs], [o[0] for o in ours], atol=1e-3)
    assert [t[1] for t in theirs] == [o[1] for o in ours]
