"""Shard files: expanding input globs, and writing records as zstd-compressed JSON lines."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import orjson
import zstandard

from phi3_jax import paths


def expand_globs(patterns: str | Sequence[str]) -> list[str]:
    """Sorted files matching comma-separated globs; a glob matching nothing, or a directory
    (say one named like a shard, `x.jsonl/`), is an error naming it."""
    if isinstance(patterns, str):
        patterns = [p for p in patterns.split(",") if p]
    files: list[str] = []
    for pattern in patterns:
        matched = paths.glob(pattern)
        if not matched:
            raise FileNotFoundError(f"glob {pattern!r} matches no file")
        folders = [path for path in matched if paths.path(path).is_dir()]
        if folders:
            raise IsADirectoryError(
                f"{folders[0]}: a directory, not a shard file (matched by glob {pattern!r})"
            )
        files.extend(matched)
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
