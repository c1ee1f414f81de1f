"""Pre-tokenized ArrayRecord shards, written by a datatrove step next to the jsonl.zst text shards.

Each document becomes one record: its token ids as little-endian int32, without BOS or EOS (the
input pipeline adds those, as it does for text); `arrayrecord_tokens` sources read them.
"""

from __future__ import annotations

import os

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from phi3_jax.data import tokenizer as tokenizer_lib


def token_record(ids: list[int]) -> bytes:
    """One ArrayRecord record of token ids."""
    return np.asarray(ids, dtype="<i4").tobytes()


class TokenizedArrayRecordWriter(PipelineStep):
    """Writes `output_folder/NNNNN.array_record` (one per task) and passes documents on."""

    type = "💽 - WRITER"
    name = "🔢 ArrayRecord tokens"

    def __init__(self, output_folder: str, tokenizer_kind: str, tokenizer_path: str):
        super().__init__()
        self.output_folder = output_folder
        self.tokenizer_kind = tokenizer_kind
        self.tokenizer_path = tokenizer_path

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        from array_record.python.array_record_module import ArrayRecordWriter

        tokenizer = tokenizer_lib.load(self.tokenizer_kind, self.tokenizer_path)
        writer = None
        try:
            for doc in data:
                if writer is None:
                    # Created on the first document, so a task that keeps nothing writes no shard;
                    # a rerun task overwrites its shard (no duplicates).
                    os.makedirs(self.output_folder, exist_ok=True)
                    path = os.path.join(self.output_folder, f"{rank:05d}.array_record")
                    writer = ArrayRecordWriter(path, "group_size:1")
                with self.track_time():
                    ids = tokenizer.encode(doc.text)
                    writer.write(token_record(ids))
                self.stat_update("total")
                self.stat_update("tokens", value=len(ids))
                yield doc
        finally:
            if writer is not None:
                writer.close()
