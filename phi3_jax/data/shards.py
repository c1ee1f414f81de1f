"""Shard files: the files globs and paths name, and writing records as zstd-compressed JSON lines."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import orjson
import zstandard

from phi3_jax import paths


def match_shards(patterns: Sequence[str]) -> tuple[list[str], list[OSError]]:
    """The files globs and paths name, in order, each once; and an error for each that names
    none: a glob matching nothing or a missing path (FileNotFoundError), a path that is a
    directory (IsADirectoryError). Kept apart so a reader that skips bad input can go on."""
    files: list[str] = []
    problems: list[OSError] = []
    for pattern in patterns:
        if paths.has_magic(pattern):
            matched = paths.glob(pattern)
            if not matched:
                problems.append(FileNotFoundError(f"glob {pattern!r} matches no file"))
        elif paths.path(pattern).is_file():
            matched = [pattern]
        elif paths.path(pattern).is_dir():
            matched = []
            problems.append(IsADirectoryError(f"{pattern}: a directory, not a shard file"))
        else:
            matched = []
            problems.append(FileNotFoundError(f"{pattern}: missing file"))
        files.extend(f for f in matched if f not in files)
    return files, problems


def expand_globs(patterns: str | Sequence[str]) -> list[str]:
    """The files comma-separated globs (or paths) name (`match_shards`); one naming none, or a
    directory a glob matches (say one named like a shard, `x.jsonl/`), is an error naming it."""
    if isinstance(patterns, str):
        patterns = [p for p in patterns.split(",") if p]
    files: list[str] = []
    for pattern in patterns:
        matched, problems = match_shards([pattern])
        if problems:
            raise problems[0]
        folders = [path for path in matched if paths.path(path).is_dir()]
        if folders:
            raise IsADirectoryError(
                f"{folders[0]}: a directory, not a shard file (matched by glob {pattern!r})"
            )
        files.extend(f for f in matched if f not in files)
    return files


def write_jsonl_zst(records: Iterable[dict], path: str) -> int:
    """Write records as one JSON object a line, zstd-compressed (same input, same bytes)."""
    lines = [orjson.dumps(record) + b"\n" for record in records]
    paths.makedirs(paths.path(path).parent)
    paths.path(path).write_bytes(zstandard.ZstdCompressor(level=19).compress(b"".join(lines)))
    return len(lines)


def write_shards(records: Sequence[dict], out: str, docs_per_shard: int) -> list[str]:
    """Write `out/NNNNN.jsonl.zst` shards of at most `docs_per_shard` records; return paths."""
    written = []
    for start in range(0, len(records), docs_per_shard):
        path = paths.join(out, f"{start // docs_per_shard:05d}.jsonl.zst")
        write_jsonl_zst(records[start : start + docs_per_shard], path)
        written.append(path)
    return written
