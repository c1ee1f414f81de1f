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

import dataclasses
import json
import os
from collections.abc import Sequence

from datatrove.executor.base import PipelineExecutor

from phi3_jax import paths
from phi3_jax.config import ON_BAD_RECORD
from phi3_jax.data.prepare import manifest as manifest_lib
from phi3_jax.data.prepare.pipeline import MAX_DOCUMENT_BYTES, MINHASH, PHASES, Stage, stages
from phi3_jax.data.shards import expand_globs

EXECUTORS = ("local", "slurm", "ray")


def make_executors(
    stage_list: Sequence[Stage], work: str, executor: str, workers: int, slurm: dict | None = None
) -> list[PipelineExecutor]:
    """One executor per stage, each depending on the previous one."""
    executors: list[PipelineExecutor] = []
    for stage in stage_list:
        common = dict(
            pipeline=stage.pipeline,
            tasks=stage.tasks,
            logging_dir=paths.join(work, "logs", stage.name),
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


def run(
    input: str,
    output: str,
    quality_model: str,
    work_dir: str | None = None,
    executor: str = "local",
    tasks: int = 1,
    workers: int | None = None,
    phase: int = 1,
    on_bad_record: str = "raise",
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
    if not paths.path(quality_model).is_file():
        raise FileNotFoundError(f"quality model {quality_model!r} does not exist")
    if tokenizer and paths.is_remote(output):
        raise ValueError(
            f"--tokenizer with --output={output}: ArrayRecord token shards are written as local "
            "files (array_record), and read only from local disk; use a local --output"
        )
    files = expand_globs(input)
    work = work_dir or paths.join(output, "work")
    for directory in (output, work):  # before any task runs: a missing bucket is one line
        paths.check_writable(directory)
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
    if not all(
        manifest_lib.is_complete(paths.join(work, "logs", s.name), s.tasks) for s in stage_list
    ):
        return None
    settings = {
        "executor": executor,
        "tasks": tasks,
        "phase": phase,
        "on_bad_record": on_bad_record,
        "max_document_bytes": max_document_bytes,
        "quality_model": manifest_lib.file_entry(quality_model),
        "tokenizer": manifest_lib.tokenizer_entry(tokenizer_kind, tokenizer) if tokenizer else None,
        "decontaminate": list(decontaminate),
        "phases": {str(p): dataclasses.asdict(PHASES[p]) for p in range(1, phase + 1)},
        "minhash": {
            k: getattr(MINHASH, k) for k in ("n_grams", "num_buckets", "hashes_per_bucket", "seed")
        },
    }
    result = manifest_lib.manifest(files, output, work, stage_list, settings)
    paths.path(paths.join(output, "manifest.json")).write_text(json.dumps(result, indent=2) + "\n")
    return result
