"""Streaming shard sources: documents read shard by shard, with exact resumable state.

A source is a named list of globs over shards of one format (`shard_records.SourceSpec`; the
formats and how a shard is read are `shard_records`'). `ShardSource` is a grain `IterDataset`
divided among processes (constructor arguments) and grain workers (`set_slice`, called by
`mp_prefetch`): by shard, or by record index where there are fewer shards than readers, so no two
readers share a record. Its iterator's state is (epoch, shard position, record index) plus
per-source counters, all small JSON values, so a restored iterator re-opens the shard and skips
to the record. Bad input raises `errors.BadInputError` naming file and record, or with
`on_bad="skip"` is dropped and counted (`bad_records`, `bad_shards`); nothing is lost silently.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import grain
import numpy as np

from phi3_jax import paths
from phi3_jax.config import ON_BAD_RECORD
from phi3_jax.data.formats import Bad
from phi3_jax.data.shard_records import SourceSpec, read_records
from phi3_jax.data.shards import match_shards
from phi3_jax.errors import BadInputError

SPLITS = ("train", "eval")
# The keys of a source iterator's state that count what it has read (see `counters`); the
# too_long ones count records longer than a row that `to_ids` dropped or truncated (`Counted`).
COUNTER_KEYS = (
    "documents",
    "tokens",
    "bad_records",
    "bad_shards",
    "too_long_dropped",
    "too_long_truncated",
)


@dataclasses.dataclass(frozen=True)
class Counted:
    """What `to_ids` returns for a record it cut (`arrays`) or left out (`arrays` None) on purpose,
    e.g. one longer than a row: counted under `counter` (one of COUNTER_KEYS), not an error."""

    counter: str
    arrays: dict[str, np.ndarray] | None = None


def eval_fraction_of(payload: str | np.ndarray | dict) -> float:
    """A stable pseudo-random number in [0, 1) from the document's content (not Python's hash)."""
    if isinstance(payload, dict):
        payload = json.dumps(payload, sort_keys=True, ensure_ascii=False)
    data = payload.encode("utf-8") if isinstance(payload, str) else payload.tobytes()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") / 2.0**64


@dataclasses.dataclass(frozen=True)
class ReadOptions:
    """How a source is read: split, error policy, repetition and file-order seed."""

    # raise: the first bad record/shard is an error; skip: it is dropped and counted.
    on_bad: str = "raise"
    # train: documents outside the held-out split; eval: only the held-out ones.
    split: str = "train"
    # Fraction of documents held out for evaluation (by content hash), 0 for none.
    eval_fraction: float = 0.0
    # Loop over the shards forever (training) or stop after one pass.
    repeat: bool = True
    # Seeds the per-epoch shard order.
    seed: int = 0
    # One of several readings of the same documents (the length buckets of `long_context`): the
    # reading keeps and counts only the documents whose ids `keep` accepts (None: all), and with
    # `reports` False leaves the records' problems to another reading (raised all the same under
    # on_bad=raise, else skipped with no warning and no count), so the counters summed over the
    # readings count each document and each problem once.
    keep: Callable[[np.ndarray], bool] | None = None
    reports: bool = True


def divide(
    files: list[str], stride: tuple[int, int], index: int, count: int
) -> tuple[list[str], tuple[int, int]]:
    """Reader `index` of `count` takes its part of (files, record stride (r, n): records i with
    i % n == r): whole shards while there are at least as many as readers, else every count-th
    record of the shards it shares."""
    r, n = stride
    if n == 1 and len(files) >= count:
        return files[index::count], stride
    return files, (r + n * index, n * count)


# What a source's `to_ids` makes of a payload (see ShardSource).
ToIdsResult = np.ndarray | dict[str, np.ndarray] | Bad | Counted


class ShardSource(grain.IterDataset):
    """Documents of one source as `{"ids": int32 array}`, `to_ids` applied to each payload.

    `to_ids` may also return a dict of arrays holding "ids" (the document as it is), a `Bad` (the
    record is unusable: raised or skipped as `options.on_bad` says) or a `Counted`.

    Divided first among processes (the constructor's), then among grain workers (`set_slice`):
    by shard while there are enough shards, else by record index within the shared shards.
    """

    def __init__(
        self,
        spec: SourceSpec,
        to_ids: Callable[[Any], ToIdsResult],
        options: ReadOptions = ReadOptions(),
        process_index: int = 0,
        process_count: int = 1,
    ):
        super().__init__()
        if options.on_bad not in ON_BAD_RECORD or options.split not in SPLITS:
            raise ValueError(f"source {spec.name}: invalid {options}")
        files, problems = match_shards(spec.globs)
        for problem in problems:
            if options.on_bad == "raise":
                raise BadInputError(f"source {spec.name}: {problem}")
            if options.reports:
                logging.warning("source %s: skipping %s", spec.name, problem)
        if not files:
            raise BadInputError(f"source {spec.name}: no shard in {list(spec.globs)}")
        remote = [f for f in files if paths.is_remote(f)]
        if remote and spec.format.startswith("arrayrecord"):
            raise BadInputError(
                f"source {spec.name}: {remote[0]}: ArrayRecord shards are read from local disk "
                "only (array_record's reader opens local files); copy them there first"
            )
        self._spec = spec
        self._to_ids = to_ids
        self._options = options
        self._files, self._stride = divide(files, (0, 1), process_index, process_count)
        self._missing = len(problems) if options.reports else 0
        self._worker = (0, 1)

    def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
        """grain's hook dividing a source among `mp_prefetch` workers (`slice(w, None, W)`)."""
        del sequential_slice  # Each worker keeps its shards' order either way.
        self._worker = (sl.start or 0, sl.step or 1)

    def __iter__(self) -> grain.DatasetIterator:
        files, stride = divide(self._files, self._stride, *self._worker)
        # Each process reports the globs/paths that gave no shard once, from its first worker.
        missing = self._missing if self._worker[0] == 0 else 0
        return _ShardSourceIterator(self._spec, files, stride, self._to_ids, self._options, missing)

    def __str__(self) -> str:
        return f"ShardSource({self._spec.name}, {len(self._files)} shards)"


class _ShardSourceIterator(grain.DatasetIterator):
    def __init__(
        self,
        spec: SourceSpec,
        files: list[str],
        stride: tuple[int, int],
        to_ids: Callable[[Any], ToIdsResult],
        options: ReadOptions,
        missing_shards: int,
    ):
        super().__init__()
        self._spec = spec
        self._files = files
        self._stride = stride
        self._to_ids = to_ids
        self._options = options
        self._state = {
            "source": spec.name,
            "epoch": 0,
            "shard": 0,
            "record": 0,
            # Documents at the start of this epoch: an epoch that adds none would loop forever.
            "epoch_start_documents": 0,
            **dict.fromkeys(COUNTER_KEYS, 0),
            "bad_shards": missing_shards,
        }
        self._records: Iterator[tuple[int, Any]] | None = None
        self._path = ""
        self._shard_has_records = False

    def _open_shard(self) -> bool:
        """Open the shard at the state's position; False at the end of a single pass."""
        state = self._state
        if state["shard"] == len(self._files):
            if not self._options.repeat:
                return False
            if state["documents"] == state["epoch_start_documents"]:
                kept = f" {self._options.keep}" if self._options.keep else ""
                raise BadInputError(
                    f"source {self._spec.name}: no usable {self._options.split} document{kept} "
                    f"in {self._files}"
                )
            state.update(
                epoch=state["epoch"] + 1, shard=0, epoch_start_documents=state["documents"]
            )
        order = np.random.default_rng([self._options.seed, state["epoch"]])
        self._path = self._files[order.permutation(len(self._files))[state["shard"]]]
        self._records = read_records(self._spec, self._path, state["record"])
        self._shard_has_records = state["record"] > 0
        return True

    def _bad(self, index: int, bad: Bad) -> None:
        if bad.ends_shard:
            message = f"{self._path}: {bad.reason} (at record {index})"
        else:
            message = f"{self._path}: record {index}: {bad.reason}"
        if self._options.on_bad == "raise":
            raise BadInputError(f"source {self._spec.name}: {message}")
        if not self._options.reports:
            return
        logging.warning("source %s: skipping %s", self._spec.name, message)
        self._state["bad_shards" if bad.ends_shard else "bad_records"] += 1

    def _in_split(self, payload: str | np.ndarray) -> bool:
        if not self._options.eval_fraction:
            return self._options.split == "train"
        held_out = eval_fraction_of(payload) < self._options.eval_fraction
        return held_out == (self._options.split == "eval")

    def __next__(self) -> dict[str, np.ndarray]:
        state = self._state
        while True:
            if self._records is None and not self._open_shard():
                raise StopIteration
            item = next(self._records, None)
            # A shared shard's own problems are reported by the first of its readers only.
            first_reader = self._stride[0] == 0
            if item is None:
                if not self._shard_has_records and first_reader:
                    self._bad(0, Bad("empty shard: no records", ends_shard=True))
                self._records = None
                state.update(shard=state["shard"] + 1, record=0)
                continue
            index, payload = item
            self._shard_has_records = True
            state["record"] = index + 1
            mine = index % self._stride[1] == self._stride[0]
            if isinstance(payload, Bad):
                reports_it = first_reader if payload.ends_shard else mine
                if reports_it:
                    self._bad(index, payload)
            elif mine and self._in_split(payload):
                example = self._example(index, self._to_ids(payload))
                if example is not None:
                    state["documents"] += 1
                    state["tokens"] += len(example["ids"])
                    return example

    def _example(self, index: int, result: ToIdsResult) -> dict[str, np.ndarray] | None:
        """The document `to_ids` made of record `index`, None if it left the record out or
        `keep` refuses it."""
        if isinstance(result, Bad):
            self._bad(index, result)
            return None
        counter = None
        if isinstance(result, Counted):
            counter, result = result.counter, result.arrays
        example = {"ids": result} if isinstance(result, np.ndarray) else result
        keep = self._options.keep
        kept = example is not None and (keep is None or keep(example["ids"]))
        # A record `to_ids` left out is counted by the reporting reading, one it cut by the
        # reading that keeps it.
        if counter is not None and (kept if example is not None else self._options.reports):
            self._state[counter] = self._state.get(counter, 0) + 1
        return example if kept else None

    def get_state(self) -> dict[str, Any]:
        return dict(self._state)

    def set_state(self, state: dict[str, Any]) -> None:
        if state["source"] != self._spec.name:
            raise ValueError(f"state of source {state['source']} given to {self._spec.name}")
        self._state = dict(state)
        self._records = None

    def __str__(self) -> str:
        return f"ShardSourceIterator({self._spec.name}, {len(self._files)} shards)"


def counters(state: Any) -> dict[str, dict[str, int]]:
    """Per-source counters summed over every reader found in an iterator state tree."""
    totals: dict[str, dict[str, int]] = {}
    stack = [state]
    while stack:
        node = stack.pop()
        if isinstance(node, dict) and "source" in node and "epoch_start_documents" in node:
            total = totals.setdefault(node["source"], dict.fromkeys(COUNTER_KEYS, 0))
            for key in COUNTER_KEYS:
                # States saved before a counter existed lack it.
                total[key] += node.get(key, 0)
        elif isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list | tuple):
            stack.extend(node)
    return totals
