"""Input pipeline throughput: tokens/s of the full grain pipeline against a bare encode loop.

Both run in one process on the same generated corpus (jsonl.zst shards) with the same tokenizer
object (`load_tokenizer(config)`): the bare loop only calls its `encode` on each text, already in
memory; the pipeline reads and decompresses
the shards, parses JSON, hashes for the eval split, tokenizes, packs and batches, in grain workers.
Pipeline tokens are the real (unpadded) tokens of its batches, counted after the first batch, so
worker start-up is reported apart. Prints both rates and their ratio.

    python -m bench.data_throughput [--documents=20000] [--num_workers=2] [--seq_len=2048]
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time

import zstandard
from absl import app, flags

from phi3_jax import config as config_lib
from phi3_jax.data import pipeline
from phi3_jax.data.sentencepiece_tokenizer import train_sentencepiece, write_sentencepiece_json
from phi3_jax.data.shard_records import SourceSpec
from phi3_jax.data.tokenizer import load_tokenizer

RESULT_KEY = "data"

_DOCUMENTS = flags.DEFINE_integer("documents", 20_000, "documents in the generated corpus")
_SHARDS = flags.DEFINE_integer("shards", 8, "jsonl.zst shards they are written to")
_NUM_WORKERS = flags.DEFINE_integer("num_workers", 2, "grain worker processes of the pipeline")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 2048, "tokens per packed row")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "rows per batch")
_PACKING = flags.DEFINE_enum("packing", "first_fit", ["first_fit", "concat_split"], "packing")


def corpus_texts(count: int, seed: int = 0) -> list[str]:
    """English-like documents of 50-600 words over a 2,000-word Zipfian vocabulary."""
    rng = random.Random(seed)
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    vocab = [
        "".join(rng.choices(letters, weights=range(26, 0, -1), k=rng.randint(1, 9)))
        for _ in range(2000)
    ]
    weights = [1 / (rank + 1) for rank in range(len(vocab))]
    return [
        " ".join(rng.choices(vocab, weights=weights, k=rng.randint(50, 600))) + "."
        for _ in range(count)
    ]


def write_shards(texts: list[str], directory: str, shards: int) -> str:
    for s in range(shards):
        lines = "".join(json.dumps({"text": t}) + "\n" for t in texts[s::shards])
        with open(os.path.join(directory, f"web-{s:03d}.jsonl.zst"), "wb") as fh:
            fh.write(zstandard.ZstdCompressor(level=3).compress(lines.encode()))
    return os.path.join(directory, "web-*.jsonl.zst")


def bare_tokens_per_second(tokenizer, texts: list[str]) -> float:
    start = time.perf_counter()
    tokens = sum(len(tokenizer.encode(text)) for text in texts)
    return tokens / (time.perf_counter() - start)


def pipeline_tokens_per_second(
    opts: pipeline.PipelineOptions, tokenizer, total_tokens: int
) -> tuple[float, float]:
    """(tokens/s after the first batch, seconds to the first batch), over ~one pass of the data."""
    start = time.perf_counter()
    iterator = iter(pipeline.train_dataset(opts, tokenizer))
    next(iterator)
    first = time.perf_counter()
    tokens = 0
    # Stop before the sources wrap around; the bare loop also encodes each document once.
    while tokens < 0.8 * total_tokens:
        tokens += int(next(iterator)["loss_mask"].sum())
    rate = tokens / (time.perf_counter() - first)
    iterator.close()
    return rate, first - start


def run() -> dict[str, float]:
    """Run both measurements and print them; returns the figures."""
    texts = corpus_texts(_DOCUMENTS.value)
    with tempfile.TemporaryDirectory() as directory:
        config = config_lib.default_config()
        config.data.tokenizer.path = train_sentencepiece(
            iter(texts[:2000]), 4000, os.path.join(directory, "sp")
        )
        write_sentencepiece_json(config.data.tokenizer.path)
        tokenizer = load_tokenizer(config)
        glob = write_shards(texts, directory, _SHARDS.value)
        bare = bare_tokens_per_second(tokenizer, texts)
        opts = pipeline.PipelineOptions(
            sources={"web": SourceSpec("web", (glob,))},
            phase1={"web": 1.0},
            phase2={},
            phase2_start_step=0,
            seq_len=_SEQ_LEN.value,
            batch_size=_BATCH_SIZE.value,
            packing=_PACKING.value,
            num_workers=_NUM_WORKERS.value,
            eval_fraction=0.001,
        )
        total = int(sum(len(tokenizer.encode(t)) for t in texts[:1000]) * len(texts) / 1000)
        rate, startup = pipeline_tokens_per_second(opts, tokenizer, total)
    ratio = rate / bare
    print(
        f"data_throughput: {_DOCUMENTS.value} documents, ~{total} tokens, {os.cpu_count()} CPUs\n"
        f"  bare encode loop (same tokenizer): {bare:12,.0f} tokens/s\n"
        f"  grain pipeline ({_NUM_WORKERS.value} workers, {_PACKING.value}, seq_len "
        f"{_SEQ_LEN.value}): {rate:12,.0f} tokens/s (first batch after {startup:.1f} s)\n"
        f"  ratio pipeline / bare: {ratio:.2f}"
    )
    return {"bare_tokens_per_s": bare, "pipeline_tokens_per_s": rate, "ratio": ratio}


def main(argv: list[str]) -> None:
    del argv
    run()


# grain's worker processes are spawned: they re-import this file, and must not rerun it.
if __name__ == "__main__":
    app.run(main)
