"""Prepare throughput: documents/s and MB/s of the datatrove prepare job against a bare read.

The job (`phi3_jax.data.prepare.run`: strict reader, Gopher, C4, FineWeb, fastText, MinHash, writer)
runs on the bundled raw corpus, re-split into one shard per task so that every task has work, in a
fresh folder, so nothing is skipped as already done; the baseline only decompresses and parses the
same shards (`iter_documents`). MB are of document text (UTF-8) read. Prints both rates and their
ratio.

    python -m bench.prepare_throughput [--prepare_input=GLOB] [--prepare_tasks=2]
        [--prepare_workers=2] [--prepare_phase=1]
"""

from __future__ import annotations

import os
import tempfile
import time

from absl import app, flags

from phi3_jax.data import prepare
from phi3_jax.data.readers import iter_documents
from phi3_jax.data.shards import write_jsonl_zst

RESULT_KEY = "prepare"

_INPUT = flags.DEFINE_string("prepare_input", "data/raw/stdlib.jsonl.zst", "raw corpus glob")
_QUALITY_MODEL = flags.DEFINE_string(
    "prepare_quality_model", "data/quality/edu.bin", "fastText quality classifier"
)
_TASKS = flags.DEFINE_integer("prepare_tasks", 2, "datatrove tasks (input shards)")
_WORKERS = flags.DEFINE_integer("prepare_workers", 2, "tasks run at once")
_PHASE = flags.DEFINE_integer("prepare_phase", 1, "2 also writes the stricter phase-2 subset")


def split_input(input_glob: str, shards: int, folder: str) -> str:
    """The input's records re-written round-robin into `shards` files; returns their glob."""
    docs = [{"id": d.id, "text": d.text} for d in iter_documents(input_glob)]
    for i in range(shards):
        write_jsonl_zst(docs[i::shards], os.path.join(folder, f"{i:05d}.jsonl.zst"))
    return os.path.join(folder, "*.jsonl.zst")


def bare_read(input_glob: str) -> tuple[int, int, float]:
    """(documents, text bytes, seconds) of reading the input without any processing."""
    start = time.perf_counter()
    docs = list(iter_documents(input_glob))
    return len(docs), sum(len(d.text.encode()) for d in docs), time.perf_counter() - start


def prepare_run(input_glob: str, quality_model: str, tasks: int, workers: int, phase: int) -> float:
    """Seconds of one complete prepare job."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        prepare.run(input_glob, out, quality_model, tasks=tasks, workers=workers, phase=phase)
        return time.perf_counter() - start


def run() -> dict[str, float]:
    """Run the bare read and the prepare job on the same shards and print them; returns the
    figures."""
    tasks, workers, phase = _TASKS.value, _WORKERS.value, _PHASE.value
    with tempfile.TemporaryDirectory() as folder:
        shards = split_input(_INPUT.value, tasks, folder)
        docs, size, bare = bare_read(shards)
        seconds = prepare_run(shards, _QUALITY_MODEL.value, tasks, workers, phase)
    mb = size / 1e6
    print(f"input: {docs} documents, {mb:.2f} MB of text")
    print(f"bare read: {docs / bare:,.0f} docs/s, {mb / bare:.2f} MB/s")
    print(
        f"prepare (tasks={tasks}, workers={workers}, phase={phase}): "
        f"{docs / seconds:,.1f} docs/s, {mb / seconds:.3f} MB/s, {seconds:.1f} s"
    )
    print(f"ratio prepare/bare: {bare / seconds:.4f}")
    return {
        "documents": docs,
        "bare_docs_per_s": docs / bare,
        "prepare_docs_per_s": docs / seconds,
        "prepare_mb_per_s": mb / seconds,
        "ratio": bare / seconds,
    }


def main(argv: list[str]) -> None:
    del argv
    run()


if __name__ == "__main__":
    app.run(main)
