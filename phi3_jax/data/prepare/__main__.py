"""`python -m phi3_jax.data.prepare`: the command line of the prepare job (phi3_jax.data.prepare)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from loguru import logger

from phi3_jax.config import ON_BAD_RECORD, TOKENIZER_KINDS
from phi3_jax.data.prepare import EXECUTORS, run
from phi3_jax.data.prepare.pipeline import MAX_DOCUMENT_BYTES, PHASES
from phi3_jax.errors import BadInputError


def _without_bad_record_traceback(record: dict) -> None:
    # datatrove logs a failing task with its traceback (~180 lines) before main's one-line error
    # of a bad record; --verbose keeps it.
    error = record["exception"]
    if error is not None and isinstance(error.value, BadInputError):
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
    except (OSError, ValueError) as e:  # BadInputError is a ValueError
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
