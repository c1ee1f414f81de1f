"""The manifest of a finished prepare job (DIR/manifest.json): what it read, how it filtered,
what it dropped and what it wrote (sizes, SHA-256), summed from datatrove's per-task stats."""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Sequence

from phi3_jax import paths
from phi3_jax.data import decontaminate as decont
from phi3_jax.data import tokenizer as tokenizer_lib
from phi3_jax.data.prepare.pipeline import Stage


def file_entry(path: str) -> dict:
    """Path, size in bytes and SHA-256 of a file."""
    digest, size = hashlib.sha256(), 0
    with paths.path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return {"path": path, "bytes": size, "sha256": digest.hexdigest()}


def tokenizer_entry(kind: str, path: str) -> dict:
    """Kind, path and fingerprint of the tokenizer of the token shards."""
    return {"kind": kind, "path": path, "fingerprint": tokenizer_lib.load(kind, path).fingerprint}


def stage_counts(logging_dir: str) -> list[dict]:
    """Per pipeline step of a stage, its counters summed over all tasks (datatrove's stats files)."""
    steps: list[dict] = []
    for path in paths.glob(paths.join(logging_dir, "stats", "*.json")):
        for i, step in enumerate(json.loads(paths.path(path).read_text())):
            if i == len(steps):
                steps.append({"step": step["name"], "counts": {}})
            counts = steps[i]["counts"]
            for key, value in step["stats"].items():
                total = value["total"] if isinstance(value, dict) else value
                counts[key] = counts.get(key, 0) + total
    return steps


def is_complete(logging_dir: str, tasks: int) -> bool:
    """True when every task of a stage left its completion marker."""
    return len(paths.glob(paths.join(logging_dir, "completions", "*"))) == tasks


def _outputs(output: str, phases: Sequence[str]) -> dict[str, list[dict]]:
    """File entries of every shard folder a run wrote: text shards, and token shards if any."""
    # Joined as strings: the manifest names the files as the command line named the output.
    folders = {p: posixpath.join(output, p, "*.jsonl.zst") for p in phases}
    folders |= {
        f"{p}_tokens": posixpath.join(output, f"{p}_tokens", "*.array_record") for p in phases
    }
    outputs = {
        name: [file_entry(f) for f in paths.glob(pattern)] for name, pattern in folders.items()
    }
    return {name: entries for name, entries in outputs.items() if entries or name in phases}


def manifest(
    files: Sequence[str], output: str, work: str, stage_list: Sequence[Stage], settings: dict
) -> dict:
    """What a finished run read, how it filtered, what it dropped and what it wrote."""
    steps = {s.name: stage_counts(paths.join(work, "logs", s.name)) for s in stage_list}
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
