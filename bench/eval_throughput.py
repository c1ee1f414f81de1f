"""Evaluation throughput: log-likelihood requests/s of phi3_jax.eval against lm-eval's `hf` backend.

Both score the same requests (ARC-Easy in lm-eval's prompts, `eval_shots` shots, the first
`eval_docs` documents: four requests each) with the same model: a randomly initialised phi3_jax
model exported with `save_hf` (fp32) and the bundled tokenizer exported with `save_hf`, which
lm-eval's HFLM loads through transformers. One warm-up pass each (our compilation), then
`eval_rounds` alternating timed rounds; medians, and the ratio ours / hf. Also the number of
padded shapes phi3_jax compiled for the task and the largest |difference| of the two sides'
log-likelihoods.

    python -m bench.eval_throughput [--eval_models=tiny,134m] [--eval_docs=50] [--eval_shots=2]
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import jax
from absl import app, flags

from bench.cpu_train import config_134m
from configs import phi3_tiny
from phi3_jax import model
from phi3_jax.data.tokenizer import load_tokenizer
from phi3_jax.eval import tasks
from phi3_jax.eval.scorer import Scorer
from phi3_jax.model import hf

RESULT_KEY = "eval_throughput"

_MODELS = flags.DEFINE_list("eval_models", ["tiny"], "models: tiny (9M), 134m")
_DOCS = flags.DEFINE_integer("eval_docs", 50, "ARC-Easy documents (4 requests each)")
_SHOTS = flags.DEFINE_integer("eval_shots", 2, "shots per request")
_ROUNDS = flags.DEFINE_integer("eval_rounds", 3, "alternating timed rounds per side")
_BATCH = flags.DEFINE_integer("eval_hf_batch_size", 16, "lm-eval hf backend batch size")


def _config(name: str):
    if name == "134m":
        return config_134m()
    config = phi3_tiny.get_config()
    config.model.dtype = "float32"
    return config


def export_random(name: str, directory: str):
    """(config, params, tokenizer) of a random model, written as an HF directory too."""
    config = _config(name)
    params = jax.device_get(model.init_params(config, jax.random.key(0)))
    tokenizer = load_tokenizer(config)
    hf.save_hf(config, params, directory)
    tokenizer.save_hf(directory)
    return config, params, tokenizer


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(name: str) -> dict:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    instances = tasks.build(tasks.TASKS["arc_easy"], "lm_eval", _SHOTS.value, _DOCS.value)
    pairs = [(r.context, r.continuation) for i in instances for r in i.requests]
    requests = [Instance("loglikelihood", {}, p, k) for k, p in enumerate(pairs)]
    with tempfile.TemporaryDirectory() as directory:
        config, params, tokenizer = export_random(name, os.path.join(directory, name))
        ours = Scorer(config, params, tokenizer, log=None)
        theirs = HFLM(
            pretrained=os.path.join(directory, name),
            device="cpu",
            dtype="float32",
            batch_size=_BATCH.value,
        )
        mine = ours.loglikelihood(pairs)  # warm-up: compiles every padded shape
        other = theirs.loglikelihood(requests, disable_tqdm=True)
        times = {"phi3_jax": [], "hf": []}
        for _ in range(_ROUNDS.value):
            times["phi3_jax"].append(_timed(lambda: ours.loglikelihood(pairs)))
            times["hf"].append(_timed(lambda: theirs.loglikelihood(requests, disable_tqdm=True)))
    rates = {k: len(pairs) / statistics.median(v) for k, v in times.items()}
    return {
        "requests": len(pairs),
        "phi3_jax_requests_per_s": rates["phi3_jax"],
        "hf_requests_per_s": rates["hf"],
        "ratio": rates["phi3_jax"] / rates["hf"],
        "compiled_shapes": len(ours.counters.shapes),
        "max_abs_loglik_diff": max(abs(a[0] - b[0]) for a, b in zip(mine, other, strict=True)),
    }


def run() -> dict:
    """Measure every --eval_models model; print and return the figures."""
    out = {}
    for name in _MODELS.value:
        out[name] = measure(name)
        print(f"eval_throughput {name}: {out[name]}")
    return out


def main(argv: list[str]) -> None:
    del argv
    run()


if __name__ == "__main__":
    app.run(main)
