"""Web shards: read → filter → quality → MinHash dedup → jsonl.zst, as datatrove pipelines.

    python -m phi3_jax.data.prepare --input=GLOB[,GLOB] --output=DIR --quality_model=MODEL.bin
        [--executor=local|slurm|ray] [--tasks=N] [--phase=1|2] [--on_bad_record=raise|skip]
        [--work_dir=WORK] [--workers=N] [--tokenizer=PATH [--tokenizer_kind=KIND]]
        [--slurm_partition=P --slurm_time=T] [--decontaminate=TASK[,TASK]]
        [--max_document_bytes=N] [--verbose]

One pipeline definition, four datatrove stages chained by `depends`, runs on any executor:

1. `filter` (N tasks): strict readers (jsonl/.gz/.zst, parquet, WARC + trafilatura) → documents
   over `--max_document_bytes` dropped (counted, before any filter spends time on them) → Gopher
   repetition → Gopher quality → C4 → FineWeb → educational-value classifier → intermediate shard
   per task → MinHash signatures of the survivors.
2. `buckets` (one task per MinHash bucket), 3. `clusters` (1 task): near-duplicate clusters.
4. `phase1` (N tasks): each task rereads its intermediate shard, drops all but one document of each
   cluster and writes `DIR/phase1/NNNNN.jsonl.zst`.

Any number of tasks keeps the same documents, with one caveat of datatrove's MinHash: when the
near-duplicates of a cluster sit in different input files, which one survives depends on how the
files fall into tasks (the clusters, and so the number kept, do not).

`--decontaminate=arc_easy,mmlu,...` (phi3_jax.eval task names) adds a first stage, `decont_index`,
that hashes the 13-grams of those evaluation sets' questions and answers, and removes every
document sharing one right after reading (phi3_jax.data.decontaminate); the manifest counts the
removed documents per task under `decontamination`.

`--phase=2` adds a fifth stage, `phase2`, that rereads the phase-1 shards with stricter thresholds
and writes `DIR/phase2/` (Phi-3's phase-2 web set is a subset of its phase-1 set). Shards hold one
JSON object per line: `text`, `id`, `metadata` (source file, fastText `__label__hq` score). With
`--tokenizer` (a path of `--tokenizer_kind`, as config.data.tokenizer), each phase also gets `DIR/phaseN_tokens/NNNNN.array_record`: per document, in the
same order, its token ids as little-endian int32 (no BOS/EOS).

Intermediate files go to `--work_dir` (default `DIR/work`), and every stage logs to
`WORK/logs/<stage>/`; datatrove's completion markers there make a rerun skip finished tasks,
and an unfinished task rewrites its own output files, so a killed job resumes without duplicates.
On SLURM the command returns once the jobs are queued; rerun it when they are done to write the
manifest (every task is complete by then, so nothing runs twice). `DIR/manifest.json` lists inputs, settings, counts kept/dropped per filter and
reason, bad records, and the output files with sizes and SHA-256.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import hashlib
import json
import os
import pathlib
from collections.abc import Sequence

from datatrove.data import Document
from datatrove.executor.base import PipelineExecutor
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
from loguru import logger

from phi3_jax.config import TOKENIZER_KINDS
from phi3_jax.data import decontaminate as decont
from phi3_jax.data import tokenizer as tokenizer_lib
from phi3_jax.data.quality import QualityFilter
from phi3_jax.data.readers import (
    ON_BAD_RECORD,
    BadRecordError,
    OnBadRecord,
    StrictJsonlReader,
    StrictParquetReader,
    StrictWarcReader,
)
from phi3_jax.data.shards import expand_globs
from phi3_jax.data.writers import TokenizedArrayRecordWriter

EXECUTORS = ("local", "slurm", "ray")
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


def write_paths_files(files: Sequence[str], work: pathlib.Path) -> tuple[str, dict[str, str]]:
    """Group input files by format into paths files relative to their common folder."""
    files = [os.path.abspath(f) for f in files]
    root = os.path.commonpath([os.path.dirname(f) for f in files])
    groups: dict[str, list[str]] = {}
    for f in files:
        groups.setdefault(input_format(f), []).append(os.path.relpath(f, root))
    work.mkdir(parents=True, exist_ok=True)
    paths = {}
    for fmt, rel in sorted(groups.items()):
        paths[fmt] = str(work / f"inputs.{fmt}.txt")
        pathlib.Path(paths[fmt]).write_text("".join(r + "\n" for r in rel))
    return root, paths


def readers(root: str, paths: dict[str, str], on_bad_record: OnBadRecord) -> list[PipelineStep]:
    """One strict reader per input format; each reader passes earlier readers' documents on."""
    steps: list[PipelineStep] = []
    if "warc" in paths:
        steps += [StrictWarcReader(root, paths["warc"], on_bad_record=on_bad_record), Trafilatura()]
    if "jsonl" in paths:
        steps.append(StrictJsonlReader(root, paths["jsonl"], on_bad_record=on_bad_record))
    if "parquet" in paths:
        steps.append(StrictParquetReader(root, paths["parquet"], on_bad_record=on_bad_record))
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


def phase_writers(
    out: pathlib.Path, name: str, tokenizer: tuple[str, str] | None
) -> list[PipelineStep]:
    """jsonl.zst text shards in `out/name`, and token shards in `out/name_tokens` with a tokenizer
    (its kind and path)."""
    writers: list[PipelineStep] = [JsonlWriter(str(out / name), SHARD_NAME, compression="zstd")]
    if tokenizer:
        writers.append(TokenizedArrayRecordWriter(str(out / f"{name}_tokens"), *tokenizer))
    return writers


def stages(
    files: Sequence[str],
    output: str,
    work: str,
    quality_model: str,
    tasks: int,
    phase: int,
    on_bad_record: OnBadRecord,
    tokenizer: tuple[str, str] | None = None,
    decontaminate: Sequence[str] = (),
    max_document_bytes: int = MAX_DOCUMENT_BYTES,
) -> list[Stage]:
    """The prepare job as datatrove stages, in dependency order."""
    out, work = pathlib.Path(output), pathlib.Path(work)
    root, paths = write_paths_files(files, work)
    p1 = PHASES[1]
    index = str(work / "decont_index")
    decont_stages = [Stage("decont_index", [decont.EvalSetIndexer(index, decontaminate)], 1)]
    result = (decont_stages if decontaminate else []) + [
        Stage(
            "filter",
            readers(root, paths, on_bad_record)
            + [DocumentSizeFilter(max_document_bytes)]
            + ([decont.decontamination_filter(index)] if decontaminate else [])
            + quality_filters(p1, quality_model)
            + [
                JsonlWriter(str(work / "filtered"), SHARD_NAME, compression="zstd"),
                MinhashDedupSignature(str(work / "signatures"), config=MINHASH),
            ],
            tasks,
        ),
        Stage(
            "buckets",
            [MinhashDedupBuckets(str(work / "signatures"), str(work / "buckets"), config=MINHASH)],
            MINHASH.num_buckets,
        ),
        Stage(
            "clusters",
            [MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=MINHASH)],
            1,
        ),
        Stage(
            "phase1",
            [
                RankShardReader(str(work / "filtered")),
                MinhashDedupFilter(str(work / "remove")),
            ]
            + phase_writers(out, "phase1", tokenizer),
            tasks,
        ),
    ]
    if phase == 2:
        result.append(
            Stage(
                "phase2",
                [RankShardReader(str(out / "phase1"))]
                + quality_filters(PHASES[2], quality_model)
                + phase_writers(out, "phase2", tokenizer),
                tasks,
            )
        )
    return result


def make_executors(
    stage_list: Sequence[Stage], work: str, executor: str, workers: int, slurm: dict | None = None
) -> list[PipelineExecutor]:
    """One executor per stage, each depending on the previous one."""
    executors: list[PipelineExecutor] = []
    for stage in stage_list:
        common = dict(
            pipeline=stage.pipeline,
            tasks=stage.tasks,
            logging_dir=os.path.join(work, "logs", stage.name),
            depends=executors[-1] if executors else None,
        )
        if executor == "local":
            from datatrove.executor import LocalPipelineExecutor

            executors.append(LocalPipelineExecutor(workers=min(workers, stage.tasks), **common))
        elif executor == "slurm":
            from datatrove.executor import SlurmPipelineExecutor

            executors.append(
                SlurmPipelineExecutor(job_name=f"prepare-{stage.name}", **(slurm or {}), **common)
            )
        elif executor == "ray":
            from datatrove.executor import RayPipelineExecutor

            executors.append(RayPipelineExecutor(workers=workers, **common))
        else:
            raise ValueError(f"executor={executor!r}: must be one of {EXECUTORS}")
    return executors


def file_entry(path: str) -> dict:
    """Path, size in bytes and SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return {"path": path, "bytes": os.path.getsize(path), "sha256": digest.hexdigest()}


def tokenizer_entry(kind: str, path: str) -> dict:
    """Kind, path and fingerprint of the tokenizer of the token shards."""
    return {"kind": kind, "path": path, "fingerprint": tokenizer_lib.load(kind, path).fingerprint}


def stage_counts(logging_dir: str) -> list[dict]:
    """Per pipeline step of a stage, its counters summed over all tasks (datatrove's stats files)."""
    steps: list[dict] = []
    for path in sorted(glob.glob(os.path.join(logging_dir, "stats", "*.json"))):
        with open(path) as f:
            for i, step in enumerate(json.load(f)):
                if i == len(steps):
                    steps.append({"step": step["name"], "counts": {}})
                counts = steps[i]["counts"]
                for key, value in step["stats"].items():
                    total = value["total"] if isinstance(value, dict) else value
                    counts[key] = counts.get(key, 0) + total
    return steps


def is_complete(logging_dir: str, tasks: int) -> bool:
    """True when every task of a stage left its completion marker."""
    return len(glob.glob(os.path.join(logging_dir, "completions", "*"))) == tasks


def _outputs(output: str, phases: Sequence[str]) -> dict[str, list[dict]]:
    """File entries of every shard folder a run wrote: text shards, and token shards if any."""
    folders = {p: os.path.join(output, p, "*.jsonl.zst") for p in phases}
    folders |= {
        f"{p}_tokens": os.path.join(output, f"{p}_tokens", "*.array_record") for p in phases
    }
    outputs = {
        name: [file_entry(f) for f in sorted(glob.glob(pattern))]
        for name, pattern in folders.items()
    }
    return {name: entries for name, entries in outputs.items() if entries or name in phases}


def manifest(
    files: Sequence[str], output: str, work: str, stage_list: Sequence[Stage], settings: dict
) -> dict:
    """What a finished run read, how it filtered, what it dropped and what it wrote."""
    steps = {s.name: stage_counts(os.path.join(work, "logs", s.name)) for s in stage_list}
    bad = {
        k.removeprefix("bad_"): v
        for step in steps["filter"]
        for k, v in step["counts"].items()
        if k.startswith("bad_")
    }
    phases = [s.name for s in stage_list if s.name.startswith("phase")]
    return {
        "inputs": [file_entry(f) for f in files],
        "settings": settings,
        "bad_records": bad,
        "kept": {p: _last_forwarded(steps[p]) for p in phases},
        "decontamination": _decontamination(steps),
        "steps": steps,
        "outputs": _outputs(output, phases),
    }


def _decontamination(steps: dict[str, list[dict]]) -> dict | None:
    """Per evaluation task: its (question, answer) pairs and 13-gram hashes, and the training
    documents removed for sharing one (None without --decontaminate)."""
    if "decont_index" not in steps:
        return None
    index = steps["decont_index"][0]["counts"]
    removed = next(
        decont.removed_per_task(s["counts"]) for s in steps["filter"] if "decontam" in s["step"]
    )
    names = [k.removeprefix("pairs_") for k in index if k.startswith("pairs_")]
    return {
        "n_grams": decont.N_GRAMS,
        "tasks": {
            name: {
                "pairs": index[f"pairs_{name}"],
                "hashes": index.get(f"hashes_{name}", 0),
                "removed": removed.get(name, 0),
            }
            for name in names
        },
        "removed": sum(removed.values()),
    }


def _last_forwarded(steps: list[dict]) -> int:
    # A writer forwards every document it wrote: the stage's output count.
    return steps[-1]["counts"].get("total", 0) if steps else 0


def run(
    input: str,
    output: str,
    quality_model: str,
    work_dir: str | None = None,
    executor: str = "local",
    tasks: int = 1,
    workers: int | None = None,
    phase: int = 1,
    on_bad_record: OnBadRecord = "raise",
    slurm: dict | None = None,
    tokenizer: str | None = None,
    tokenizer_kind: str = "sentencepiece",
    decontaminate: Sequence[str] = (),
    max_document_bytes: int = MAX_DOCUMENT_BYTES,
) -> dict | None:
    """Run (or resume) the job; return the manifest, or None while SLURM jobs are still queued."""
    if on_bad_record not in ON_BAD_RECORD:
        raise ValueError(f"on_bad_record={on_bad_record!r}: must be one of {ON_BAD_RECORD}")
    if phase not in PHASES:
        raise ValueError(f"phase={phase!r}: must be one of {sorted(PHASES)}")
    if not (isinstance(max_document_bytes, int) and max_document_bytes > 0):
        raise ValueError(f"max_document_bytes={max_document_bytes!r}: must be a positive integer")
    if not os.path.isfile(quality_model):
        raise FileNotFoundError(f"quality model {quality_model!r} does not exist")
    files = expand_globs(input)
    work = work_dir or os.path.join(output, "work")
    spec = (tokenizer_kind, tokenizer) if tokenizer else None
    stage_list = stages(
        files,
        output,
        work,
        quality_model,
        tasks,
        phase,
        on_bad_record,
        spec,
        decontaminate,
        max_document_bytes,
    )
    executors = make_executors(
        stage_list, work, executor, workers or min(tasks, os.cpu_count() or 1), slurm
    )
    executors[-1].run()
    if not all(is_complete(os.path.join(work, "logs", s.name), s.tasks) for s in stage_list):
        return None
    settings = {
        "executor": executor,
        "tasks": tasks,
        "phase": phase,
        "on_bad_record": on_bad_record,
        "max_document_bytes": max_document_bytes,
        "quality_model": file_entry(quality_model),
        "tokenizer": tokenizer_entry(tokenizer_kind, tokenizer) if tokenizer else None,
        "decontaminate": list(decontaminate),
        "phases": {str(p): dataclasses.asdict(PHASES[p]) for p in range(1, phase + 1)},
        "minhash": {
            k: getattr(MINHASH, k) for k in ("n_grams", "num_buckets", "hashes_per_bucket", "seed")
        },
    }
    result = manifest(files, output, work, stage_list, settings)
    pathlib.Path(output, "manifest.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _without_bad_record_traceback(record: dict) -> None:
    # datatrove logs a failing task with its traceback (~180 lines) before main's one-line error
    # of a bad record; --verbose keeps it.
    error = record["exception"]
    if error is not None and isinstance(error.value, BadRecordError):
        record["exception"] = None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m phi3_jax.data.prepare")
    parser.add_argument("--input", required=True, help="comma-separated globs of input files")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument(
        "--quality_model", required=True, help="fastText model from phi3_jax.data.quality"
    )
    parser.add_argument(
        "--work_dir", default=None, help="intermediate files and logs (default: OUTPUT/work)"
    )
    parser.add_argument("--executor", choices=EXECUTORS, default="local")
    parser.add_argument(
        "--tasks", type=int, default=1, help="parallel tasks of the per-shard stages"
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="local processes (default: min(tasks, cpus))"
    )
    parser.add_argument(
        "--phase",
        type=int,
        choices=sorted(PHASES),
        default=1,
        help="2 also writes the phase-2 subset",
    )
    parser.add_argument("--on_bad_record", choices=ON_BAD_RECORD, default="raise")
    parser.add_argument("--tokenizer", default=None, help="also write token ArrayRecord shards")
    parser.add_argument("--tokenizer_kind", choices=TOKENIZER_KINDS, default="sentencepiece")
    parser.add_argument(
        "--decontaminate",
        default="",
        help="comma-separated phi3_jax.eval tasks whose 13-grams remove training documents",
    )
    parser.add_argument(
        "--max_document_bytes",
        type=int,
        default=MAX_DOCUMENT_BYTES,
        help="larger documents are dropped (counted) before any filter",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="datatrove's traceback of a bad record too"
    )
    parser.add_argument("--slurm_partition", default=None)
    parser.add_argument("--slurm_time", default="4:00:00")
    args = parser.parse_args(argv)
    slurm = {"partition": args.slurm_partition, "time": args.slurm_time}
    if not args.verbose:
        logger.configure(patcher=_without_bad_record_traceback)
    try:
        result = run(
            args.input,
            args.output,
            args.quality_model,
            args.work_dir,
            args.executor,
            args.tasks,
            args.workers,
            args.phase,
            args.on_bad_record,
            slurm,
            args.tokenizer,
            args.tokenizer_kind,
            [t for t in args.decontaminate.split(",") if t],
            args.max_document_bytes,
        )
    except (BadRecordError, OSError, ValueError) as e:
        raise SystemExit(f"error: {e}") from e
    if result is None:
        print(
            f"jobs submitted; rerun the same command when they finish to write {args.output}/manifest.json"
        )
    else:
        print(
            f"kept {result['kept']}, bad records {result['bad_records']}: {args.output}/manifest.json"
        )


if __name__ == "__main__":
    main()
