"""Prepare throughput: documents/s and MB/s of the datatrove prepare job against a bare read.

The job (`phi3_jax.data.prepare.run`: strict reader, Gopher, C4, FineWeb, fastText, MinHash, writer)
runs on the bundled raw corpus, re-split into one shard per task so that every task has work, in a
fresh folder, so nothing is skipped as already done; the baseline only decompresses and parses the
same shards (`iter_documents`). MB are of document text (UTF-8) read. Prints both rates and their
ratio.

    python -m bench.prepare_throughput [--input=GLOB] [--tasks=2] [--workers=2] [--phase=1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from phi3_jax.data import prepare
from phi3_jax.data.readers import iter_documents
from phi3_jax.data.shards import write_jsonl_zst


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


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.prepare_throughput")
    parser.add_argument("--input", default="data/raw/stdlib.jsonl.zst")
    parser.add_argument("--quality_model", default="data/quality/edu.bin")
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--phase", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        shards = split_input(args.input, args.tasks, folder)
        docs, size, bare = bare_read(shards)
        seconds = prepare_run(shards, args.quality_model, args.tasks, args.workers, args.phase)
    mb = size / 1e6
    print(f"input: {docs} documents, {mb:.2f} MB of text")
    print(f"bare read: {docs / bare:,.0f} docs/s, {mb / bare:.2f} MB/s")
    print(
        f"prepare (tasks={args.tasks}, workers={args.workers}, phase={args.phase}): "
        f"{docs / seconds:,.1f} docs/s, {mb / seconds:.3f} MB/s, {seconds:.1f} s"
    )
    print(f"ratio prepare/bare: {bare / seconds:.4f}")


if __name__ == "__main__":
    main()
