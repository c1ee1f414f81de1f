"""`phi3_jax.eval.longctx`: passkey prompts are filled to their length with the key at its depth,
scored by the greedy answer through the harness (`runner.evaluate`), and perplexity by position
bucket agrees with the scorer's own log-likelihood of the same rows; the grid plot is drawn."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from phi3_jax import config as config_lib
from phi3_jax import model
from phi3_jax.data.tokenizer import load_tokenizer
from phi3_jax.eval import longctx, runner, tasks
from phi3_jax.eval.scorer import Scorer
from phi3_jax.longrope import fitness


def _tiny_config():
    config = config_lib.default_config()  # vocab 512: the 416-rank tiktoken tokenizer fits
    config.model.max_position_embeddings = config.model.original_max_position_embeddings = 512
    config.data.tokenizer.update(kind="tiktoken", path="data/tokenizer_small.tiktoken")
    return config


@pytest.fixture(scope="module")
def tiny_scorer():
    config = _tiny_config()
    params = jax.jit(lambda key: model.init_params(config, key))(jax.random.key(0))
    return Scorer(config, params, load_tokenizer(config), add_bos=True, log=None)


def test_passkey_prompts_fill_their_length(tiny_scorer):
    encode = tiny_scorer.encode
    for depth in longctx.DEPTHS:
        prompt, n = longctx.fit_fillers(encode, 400, depth, 12345)
        assert n == len(encode(prompt)) <= 400
        fillers = prompt.count(longctx.FILLER)
        assert len(encode(longctx.passkey_prompt(fillers + 1, depth, 12345))) > 400  # the longest
        before = prompt.index("The pass key is 12345") - len(longctx.INTRO)
        assert before // len(longctx.FILLER) == round(depth * fillers)
        assert prompt.endswith(longctx.QUESTION)
    with pytest.raises(tasks.TaskError, match="cannot hold the key"):
        longctx.fit_fillers(encode, 20, 0.5, 12345)
    assert longctx.passkey_lengths("passkey", 4096) == [512, 1024, 2048, 4096]
    with pytest.raises(tasks.TaskError, match="length 999 outside the context"):
        longctx.passkey_lengths("passkey:128,999", 256)


class _Oracle(Scorer):
    """Answers with the key written in the prompt and finds it the likeliest continuation (or,
    `wrong`, answers another number and finds the key the least likely)."""

    wrong = False

    @staticmethod
    def _key(context: str) -> int:
        return longctx.first_number(context.split("The pass key is")[1])

    def generate(self, requests):
        keys = [self._key(context) for context, *_ in requests]
        return [f" {k + 1 if self.wrong else k}. The" for k in keys]

    def loglikelihood(self, pairs, desc=""):
        right = [longctx.first_number(cont) == self._key(context) for context, cont in pairs]
        return [(-1.0 if r != self.wrong else -2.0, False, 3) for r in right]


def test_passkey_scores_the_greedy_answer(tiny_scorer):
    results = runner.evaluate(tiny_scorer, ["passkey:256,512"], limit=1, log_samples=True)
    (result,) = results
    assert result.name == "passkey:256,512" and result.settings["documents"] == 10
    cells = {k for k in result.metrics if k.startswith("acc@")}
    assert cells == {f"acc@{n}/{d:g}" for n in (256, 512) for d in longctx.DEPTHS}
    for sample in result.samples:  # a random model answers anything; scored as it answered
        right = longctx.first_number(sample["answer"]) == sample["key"]
        cell = f"{sample['length']}/{sample['depth']:g}"
        assert result.metrics[f"acc@{cell}"] == float(right)
        assert result.metrics[f"choice_acc@{cell}"] == sample["choice_right"]
        assert sample["tokens"] <= sample["length"] - longctx.ANSWER_TOKENS
    oracle = _Oracle(tiny_scorer.config, tiny_scorer.params, tiny_scorer.tokenizer, log=None)
    metrics = longctx.run(oracle, "passkey:256")[0]
    assert metrics["acc"] == metrics["choice_acc"] == 1.0
    oracle.wrong = True
    metrics = longctx.run(oracle, "passkey:256")[0]
    assert metrics["acc"] == metrics["choice_acc"] == 0.0


def test_passkey_choices_and_digits():
    # The keys a prompt is scored against: the right one first, then distinct others.
    rng = np.random.default_rng(0)
    keys = longctx.other_keys(rng, 12345, longctx.CHOICES - 1)
    assert len(set(keys)) == longctx.CHOICES - 1 and 12345 not in keys
    assert all(10_000 <= k < 100_000 for k in keys)
    # The byte-level tokenizer writes a key one id a digit and decodes it back whole, so a
    # greedy answer holding the key's ids is scored right.
    tokenizer = load_tokenizer(_tiny_config())
    ids = tokenizer.encode(" The pass key is 40312.")
    assert tokenizer.decode(ids) == " The pass key is 40312."
    assert [tokenizer.decode([i]) for i in ids[-6:-1]] == list("40312")  # a digit an id
    assert longctx.first_number(tokenizer.decode(ids[-6:])) == 40312


def test_position_buckets_agree_with_the_scorer(tiny_scorer, tmp_path):
    path = tmp_path / "long.jsonl"
    texts = [f"Chapter {i}. " + "A long story about a dog and a cat. " * 40 for i in range(3)]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    (result,) = runner.evaluate(tiny_scorer, [f"ppl_positions:{path}"])
    assert result.settings["documents"] == 3 and result.settings["length"] == 512
    buckets = [k for k in result.metrics if k.startswith("ppl@")]
    assert buckets[0] == "ppl@1-64" and buckets[-1] == "ppl@448-511" and len(buckets) == 8
    # Independently: the scorer's log-likelihood of each row's tokens after its first.
    tok = tiny_scorer.tokenizer
    rows = fitness.long_rows(texts, tok.encode, 512, None, bos=tok.bos_id, eos=tok.eos_id)
    pairs = [(list(r[:1]), list(r[1:])) for r in rows.tolist()]
    ll = sum(s[0] for s in tiny_scorer.loglikelihood_ids(pairs))
    assert result.metrics["ppl"] == pytest.approx(np.exp(-ll / (3 * 511)), rel=1e-4)
    assert tasks.resolve(runner.benchmark_names(["passkey", f"ppl_positions:{path}"])) == []


def test_grid_plot(tmp_path):
    metrics = {
        "acc": 0.5,
        "acc@128/0": 1.0,
        "acc@128/0.5": 0.0,
        "acc@256/0": 0.5,
        "acc@256/0.5": 0.5,
    }
    lengths, depths, grid = longctx.passkey_grid(metrics)
    assert lengths == [128, 256] and depths == [0.0, 0.5]
    np.testing.assert_array_equal(grid, [[1.0, 0.5], [0.0, 0.5]])
    longctx.plot_grid(metrics, str(tmp_path / "grid.png"))
    assert (tmp_path / "grid.png").stat().st_size > 1000
    choice = {"choice_acc@128/0": 0.25, **metrics}
    assert longctx.passkey_grid(choice, "choice_acc")[2].tolist() == [[0.25]]
