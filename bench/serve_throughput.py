"""Generation server throughput: tokens/s of phi3_jax.serve at 1, 8 and 32 concurrent requests,
the batching gain, and transformers' `generate` on the same exported model and prompts.

A randomly initialised tiny model is exported with `save_hf` (fp32, with the bundled tokenizer)
and served from that directory (`--hf_dir`'s path) on loopback. Each level sends that many
greedy /v1/completions requests at once (prompts: the first `serve_prompt_tokens` ids of
different bundled-corpus documents, so every batch has one shape; `serve_new_tokens` new tokens
each, stopping early only on EOS) and counts the completion tokens the server reports per
second of wall time. transformers generates the same prompts as one batch of that many rows
(greedy, the same token budget and EOS). One warm-up pass per level and side (our compilation),
then `serve_rounds` alternating timed rounds; medians. The batching gain is tokens/s at N
concurrent requests over tokens/s at 1.

    python -m bench.serve_throughput [--serve_levels=1,8,32] [--serve_rounds=2]
"""

from __future__ import annotations

import concurrent.futures
import os
import statistics
import tempfile
import time

import httpx
import numpy as np
from absl import app, flags

from bench.eval_throughput import export_random
from phi3_jax.data.readers import iter_documents
from phi3_jax.eval import source
from phi3_jax.serve.api import make_app
from phi3_jax.serve.background import BackgroundServer
from phi3_jax.serve.engine import Engine

RESULT_KEY = "serve_throughput"
CORPUS = "data/web/phase1/*.jsonl.zst"

_LEVELS = flags.DEFINE_list("serve_levels", ["1", "8", "32"], "concurrent requests per level")
_ROUNDS = flags.DEFINE_integer("serve_rounds", 2, "alternating timed rounds per side and level")
_PROMPT = flags.DEFINE_integer("serve_prompt_tokens", 32, "prompt length in tokens")
_NEW = flags.DEFINE_integer("serve_new_tokens", 32, "new tokens per request at most")


def prompts(tokenizer, count: int, length: int) -> list[list[int]]:
    """`count` prompts of exactly `length` ids: BOS and the start of different documents."""
    out = []
    for doc in iter_documents(CORPUS):
        ids = [tokenizer.bos_id, *tokenizer.encode(doc.text)][:length]
        if len(ids) == length:
            out.append(ids)
        if len(out) == count:
            return out
    raise ValueError(f"{CORPUS}: fewer than {count} documents of {length} tokens")


def _serve_round(url: str, name: str, batch: list[list[int]]) -> tuple[float, int]:
    """(seconds, completion tokens) of the batch sent as concurrent requests."""

    def ask(ids: list[int]) -> int:
        body = {"model": name, "prompt": ids, "max_tokens": _NEW.value, "temperature": 0}
        response = httpx.post(f"{url}/v1/completions", json=body, timeout=600)
        response.raise_for_status()
        return response.json()["usage"]["completion_tokens"]

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(len(batch)) as pool:
        tokens = sum(pool.map(ask, batch))
    return time.perf_counter() - start, tokens


def _hf_round(hf_model, batch: list[list[int]], eos: int) -> tuple[float, int]:
    """(seconds, new tokens up to and including each row's EOS) of one transformers batch."""
    import torch

    start = time.perf_counter()
    with torch.no_grad():
        out = hf_model.generate(
            torch.tensor(batch),
            attention_mask=torch.ones(len(batch), len(batch[0]), dtype=torch.long),
            max_new_tokens=_NEW.value,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=eos,
        )
    seconds = time.perf_counter() - start
    new = out[:, len(batch[0]) :].numpy()
    tokens = 0
    for row in new:
        stops = np.flatnonzero(row == eos)
        tokens += int(stops[0]) + 1 if len(stops) else len(row)
    return seconds, tokens


def run() -> dict:
    """Measure every level on both sides; print and return the figures."""
    from transformers import AutoModelForCausalLM

    levels = [int(n) for n in _LEVELS.value]
    results: dict = {"prompt_tokens": _PROMPT.value, "new_tokens": _NEW.value}
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "tiny")
        _, _, tokenizer = export_random("tiny", path)
        loaded = source.load(hf_dir=path)
        engine = Engine(loaded, max_rows=max(levels))
        hf_model = AutoModelForCausalLM.from_pretrained(path, dtype="float32").eval()
        pool = prompts(tokenizer, max(levels), _PROMPT.value)
        with BackgroundServer(make_app(engine, "tiny")) as url:
            for level in levels:
                batch = pool[:level]
                _serve_round(url, "tiny", batch)  # warm-up: compiles this batch shape
                _hf_round(hf_model, batch, tokenizer.eos_id)
                ours, theirs = [], []
                for _ in range(_ROUNDS.value):
                    seconds, tokens = _serve_round(url, "tiny", batch)
                    ours.append(tokens / seconds)
                    seconds, tokens = _hf_round(hf_model, batch, tokenizer.eos_id)
                    theirs.append(tokens / seconds)
                results[f"concurrent_{level}"] = {
                    "phi3_jax_tokens_per_s": statistics.median(ours),
                    "hf_generate_tokens_per_s": statistics.median(theirs),
                    "ratio": statistics.median(ours) / statistics.median(theirs),
                }
                print(f"serve_throughput {level}: {results[f'concurrent_{level}']}")
        results["largest_batch"] = engine.counters.largest_batch
    single = results[f"concurrent_{levels[0]}"]["phi3_jax_tokens_per_s"]
    results["batching_gain"] = {
        f"{n}_over_{levels[0]}": results[f"concurrent_{n}"]["phi3_jax_tokens_per_s"] / single
        for n in levels[1:]
    }
    print(f"serve_throughput batching gain: {results['batching_gain']}")
    return results


def main(argv: list[str]) -> None:
    del argv
    run()


if __name__ == "__main__":
    app.run(main)
