"""The prepare job's datatrove pipeline: its readers, filters and writers, and the stages that
chain them (what each stage does: phi3_jax.data.prepare)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup import (
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.extractors import Trafilatura
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers import JsonlWriter

from phi3_jax import paths
from phi3_jax.data import decontaminate as decont
from phi3_jax.data.quality import QualityFilter
from phi3_jax.data.readers import StrictJsonlReader, StrictParquetReader, StrictWarcReader
from phi3_jax.data.writers import TokenizedArrayRecordWriter

# Larger documents are dropped before the filters: a book is a few MB; beyond this it is a dump,
# and Gopher's filters alone take minutes and gigabytes on a 200 MB one.
MAX_DOCUMENT_BYTES = 10_000_000
SHARD_NAME = "${rank}.jsonl.zst"
# File name suffixes of each input format (compressed variants included).
_FORMATS = {
    "jsonl": (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json", ".json.gz", ".json.zst"),
    "parquet": (".parquet",),
    "warc": (".warc", ".warc.gz", ".wet", ".wet.gz"),
}


@dataclasses.dataclass(frozen=True)
class PhaseFilters:
    """Thresholds of one phase; phase 2 is stricter than phase 1 in every one."""

    # Gopher quality: fewest words, fewest English stop words, largest symbol/word ratio, smallest
    # fraction of word tokens with a letter (Gopher: 0.8; technical prose with inline code, whose
    # punctuation spaCy makes tokens of, sits around 0.7).
    min_doc_words: int
    min_stop_words: int
    max_symbol_word_ratio: float
    min_alpha_words_ratio: float
    # FineWeb: a document is dropped if at most this fraction of its lines ends in punctuation,
    # or if more than short_line_thr of its lines are short.
    line_punct_thr: float
    short_line_thr: float
    # Smallest P(hq) of the educational-value classifier.
    quality_threshold: float


PHASES = {
    1: PhaseFilters(50, 2, 0.1, 0.65, 0.12, 0.67, 0.5),
    2: PhaseFilters(100, 4, 0.05, 0.8, 0.2, 0.5, 0.9),
}
# Near-duplicates: 5-gram MinHash, 14 bands of 8 hashes (datatrove's and FineWeb's settings).
MINHASH = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8, seed=1)


def input_format(path: str) -> str:
    """The reader a file needs, from its name; unknown suffixes are an error naming the file."""
    for fmt, suffixes in _FORMATS.items():
        if path.endswith(suffixes):
            return fmt
    raise ValueError(f"{path}: unknown input format (expected one of {sum(_FORMATS.values(), ())})")


def write_paths_files(files: Sequence[str], work: str) -> tuple[str, dict[str, str]]:
    """Group input files by format into paths files relative to their common folder (local, or
    one bucket's)."""
    root, names = paths.common_folder(files)
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(input_format(name), []).append(name)
    paths.makedirs(work)
    lists = {}
    for fmt, rel in sorted(groups.items()):
        lists[fmt] = paths.join(work, f"inputs.{fmt}.txt")
        paths.path(lists[fmt]).write_text("".join(r + "\n" for r in rel))
    return root, lists


def readers(root: str, lists: dict[str, str], on_bad_record: str) -> list[PipelineStep]:
    """One strict reader per input format; each reader passes earlier readers' documents on."""
    steps: list[PipelineStep] = []
    if "warc" in lists:
        steps += [StrictWarcReader(root, lists["warc"], on_bad_record=on_bad_record), Trafilatura()]
    if "jsonl" in lists:
        steps.append(StrictJsonlReader(root, lists["jsonl"], on_bad_record=on_bad_record))
    if "parquet" in lists:
        steps.append(StrictParquetReader(root, lists["parquet"], on_bad_record=on_bad_record))
    return steps


class DocumentSizeFilter(BaseFilter):
    """Drops documents whose text is over `max_bytes` bytes of UTF-8 (datatrove counts them
    as `dropped_too_large`)."""

    name = "📏 Document size"

    def __init__(self, max_bytes: int):
        super().__init__()
        self.max_bytes = max_bytes

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        # A character is 1 to 4 bytes: most documents are decided without encoding them.
        chars = len(doc.text)
        if chars > self.max_bytes:
            return False, "too_large"
        if 4 * chars <= self.max_bytes or len(doc.text.encode("utf-8")) <= self.max_bytes:
            return True
        return False, "too_large"


def quality_filters(phase: PhaseFilters, quality_model: str) -> list[PipelineStep]:
    """Heuristic filters then the classifier; none of them edits the text it keeps."""
    return [
        GopherRepetitionFilter(),
        GopherQualityFilter(
            min_doc_words=phase.min_doc_words,
            min_stop_words=phase.min_stop_words,
            max_symbol_word_ratio=phase.max_symbol_word_ratio,
            max_non_alpha_words_ratio=phase.min_alpha_words_ratio,
        ),
        # C4's document rules only (lorem ipsum, fewer than 3 lines): its line rules rewrite the
        # text (they would cut code lines), and a curly bracket is no sign of bad text here.
        C4QualityFilter(
            filter_no_terminal_punct=False,
            min_words_per_line=-1,
            max_word_length=-1,
            remove_citations=False,
            filter_javascript=False,
            filter_policy=False,
            filter_curly_bracket=False,
            min_num_sentences=3,
        ),
        FineWebQualityFilter(
            line_punct_thr=phase.line_punct_thr, short_line_thr=phase.short_line_thr
        ),
        QualityFilter(quality_model, phase.quality_threshold),
    ]


class RankShardReader(StrictJsonlReader):
    """Reads the one shard its task wrote in an earlier stage (`NNNNN.jsonl.zst`), if any.

    MinHash indexes documents by (task, position in the task's shard), so task r must reread
    exactly shard r; a task that kept nothing wrote no shard and reads nothing.
    """

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        name = f"{rank:05d}.jsonl.zst"
        if self.data_folder.isfile(name):
            for doc in self.read_files_shard([name]):
                self.update_doc_stats(doc)
                yield doc


@dataclasses.dataclass(frozen=True)
class Stage:
    """A named pipeline and how many tasks run it."""

    name: str
    pipeline: list[PipelineStep]
    tasks: int


def phase_writers(out: str, name: str, tokenizer: tuple[str, str] | None) -> list[PipelineStep]:
    """jsonl.zst text shards in `out/name`, and token shards in `out/name_tokens` with a tokenizer
    (its kind and path)."""
    writers: list[PipelineStep] = [
        JsonlWriter(paths.join(out, name), SHARD_NAME, compression="zstd")
    ]
    if tokenizer:
        writers.append(TokenizedArrayRecordWriter(paths.join(out, f"{name}_tokens"), *tokenizer))
    return writers


def stages(
    files: Sequence[str],
    output: str,
    work: str,
    quality_model: str,
    tasks: int,
    phase: int,
    on_bad_record: str,
    tokenizer: tuple[str, str] | None = None,
    decontaminate: Sequence[str] = (),
    max_document_bytes: int = MAX_DOCUMENT_BYTES,
) -> list[Stage]:
    """The prepare job as datatrove stages, in dependency order."""
    root, lists = write_paths_files(files, work)
    p1 = PHASES[1]
    index = paths.join(work, "decont_index")
    decont_stages = [Stage("decont_index", [decont.EvalSetIndexer(index, decontaminate)], 1)]
    result = (decont_stages if decontaminate else []) + [
        Stage(
            "filter",
            readers(root, lists, on_bad_record)
            + [DocumentSizeFilter(max_document_bytes)]
            + ([decont.decontamination_filter(index)] if decontaminate else [])
            + quality_filters(p1, quality_model)
            + [
                JsonlWriter(paths.join(work, "filtered"), SHARD_NAME, compression="zstd"),
                MinhashDedupSignature(paths.join(work, "signatures"), config=MINHASH),
            ],
            tasks,
        ),
        Stage(
            "buckets",
            [
                MinhashDedupBuckets(
                    paths.join(work, "signatures"), paths.join(work, "buckets"), config=MINHASH
                )
            ],
            MINHASH.num_buckets,
        ),
        Stage(
            "clusters",
            [
                MinhashDedupCluster(
                    paths.join(work, "buckets"), paths.join(work, "remove"), config=MINHASH
                )
            ],
            1,
        ),
        Stage(
            "phase1",
            [
                RankShardReader(paths.join(work, "filtered")),
                MinhashDedupFilter(paths.join(work, "remove")),
            ]
            + phase_writers(output, "phase1", tokenizer),
            tasks,
        ),
    ]
    if phase == 2:
        result.append(
            Stage(
                "phase2",
                [RankShardReader(paths.join(output, "phase1"))]
                + quality_filters(PHASES[2], quality_model)
                + phase_writers(output, "phase2", tokenizer),
                tasks,
            )
        )
    return result
