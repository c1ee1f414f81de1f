"""The grain pipeline: determinism, exact resume through orbax (two phases, packing, workers),
lossless packing, mixture weights, the phase switch, eval batches, config and global arrays."""

from __future__ import annotations

import collections
import dataclasses
import os
import subprocess
import sys

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from absl import flags
from shard_fixtures import make_tokenizer, write_source

from configs import base
from phi3_jax import config as config_lib
from phi3_jax import sharding
from phi3_jax.data import batch as batch_lib
from phi3_jax.data import pipeline
from phi3_jax.data.shard_records import SourceSpec
from phi3_jax.data.sources import ReadOptions, ShardSource
from phi3_jax.errors import BadInputError
from phi3_jax.posttrain import objective

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SOURCES = ("web", "web_strict", "synthetic", "snow")
SEQ_LEN = 32


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    return make_tokenizer(str(tmp_path_factory.mktemp("tokenizer")))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    """4 shards per source; documents of up to 60 words, so some span several rows."""
    root = str(tmp_path_factory.mktemp("corpus"))
    for name in ("web", "web_strict", "synthetic"):
        write_source(root, name, shards=4, per_shard=150, max_words=60)
    # Text the tokenizer never saw: it encodes to byte-fallback pieces only, marking its rows.
    snow = os.path.join(root, "snow")
    os.makedirs(snow)
    for s in range(4):
        with open(os.path.join(snow, f"snow-{s}.jsonl"), "w") as fh:
            fh.writelines(f'{{"text": "{"☃ " * (1 + (s * 7 + i) % 20)}"}}\n' for i in range(50))
    return root


def glob_of(corpus: str, name: str) -> str:
    if name == "snow":
        return os.path.join(corpus, "snow", "snow-*.jsonl")
    return os.path.join(corpus, f"{name}-*.jsonl.zst")


def options(corpus: str, **overrides) -> pipeline.PipelineOptions:
    base = dict(
        sources={n: SourceSpec(n, (glob_of(corpus, n),)) for n in SOURCES},
        phase1={"web": 1.0},
        phase2={"web_strict": 0.6, "synthetic": 0.4},
        phase2_start_step=10,
        seq_len=SEQ_LEN,
        batch_size=2,
        packing_bins=4,
    )
    return pipeline.PipelineOptions(**{**base, **overrides})


def take(iterator, n: int) -> list[dict[str, np.ndarray]]:
    return [{k: np.array(v) for k, v in next(iterator).items()} for _ in range(n)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=f"batch {i} {key}")


def byte_pieces(tokenizer) -> np.ndarray:
    return np.array(
        [tokenizer.backend.id_to_token(i).startswith("<0x") for i in range(tokenizer.num_pieces)]
    )


def has_snow(batch, is_byte: np.ndarray) -> np.ndarray:
    """Per row: does it hold a byte-fallback piece (so a document of the `snow` source)?"""
    tokens = np.where(batch["tokens"] < len(is_byte), batch["tokens"], 0)
    return is_byte[tokens].any(axis=1)


def parse_absl_flags() -> None:
    """grain's worker processes read absl flags; a test process has not parsed any."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def test_batch_format(corpus, tokenizer):
    batch = next(iter(pipeline.train_dataset(options(corpus), tokenizer)))
    assert sorted(batch) == sorted(batch_lib.BATCH_KEYS)
    for key in batch_lib.BATCH_KEYS:
        assert batch[key].shape == (2, SEQ_LEN)
        assert batch[key].dtype == (np.float32 if key == "loss_mask" else np.int32)


def test_same_seed_gives_identical_batches(corpus, tokenizer):
    opts = options(corpus, seed=3)
    runs = [take(iter(pipeline.train_dataset(opts, tokenizer)), 25) for _ in range(2)]
    assert_batches_equal(*runs)
    other = take(iter(pipeline.train_dataset(dataclasses.replace(opts, seed=4), tokenizer)), 25)
    assert any(
        not np.array_equal(a["tokens"], b["tokens"]) for a, b in zip(runs[0], other, strict=True)
    )


@pytest.mark.parametrize(
    "packing,workers", [("first_fit", 2), ("concat_split", 0)], ids=["first_fit-2workers", "cts"]
)
def test_resume_through_orbax_gives_the_uninterrupted_batches(
    corpus, tokenizer, tmp_path, packing, workers
):
    parse_absl_flags()
    opts = options(
        corpus,
        packing=packing,
        num_workers=workers,
        phase1={"web": 0.7, "synthetic": 0.3},
        phase2={"web_strict": 0.5, "snow": 0.5},
        phase2_start_step=75,
    )
    dataset = pipeline.train_dataset(opts, tokenizer)
    uninterrupted = iter(dataset)
    expected = take(uninterrupted, 100)
    uninterrupted.close()

    first = iter(pipeline.train_dataset(opts, tokenizer))
    head = take(first, 50)
    manager = ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",))
    manager.save(50, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(first)))
    manager.wait_until_finished()
    first.close()

    resumed = iter(pipeline.train_dataset(opts, tokenizer))
    manager.restore(50, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed)))
    tail = take(resumed, 50)
    state = resumed.get_state()
    resumed.close()

    assert_batches_equal(head + tail, expected)
    # The phase switch fell inside the resumed window, at step 75 exactly.
    is_byte = byte_pieces(tokenizer)
    snow = [has_snow(b, is_byte).any() for b in expected]
    assert not any(snow[:75]) and sum(snow[75:]) >= 10
    assert state["step"] == 100 and state["phase2"] is not None


@pytest.mark.parametrize("packing", config_lib.PACKINGS)
def test_packing_loses_and_duplicates_nothing(corpus, tokenizer, packing):
    opts = options(corpus, packing=packing, batch_size=1, packing_bins=8)
    # One pass over one source's shards, so the documents in are exactly known.
    spec = opts.sources["web"]
    to_ids = pipeline.DocumentIds(tokenizer, add_bos=True)
    docs = list(ShardSource(spec, to_ids, ReadOptions(repeat=False)))
    single_pass = ShardSource(spec, to_ids, ReadOptions(repeat=False))
    rows = list(pipeline.pack_and_batch(single_pass, opts, tokenizer.pad_id))
    rows = {k: np.concatenate([r[k] for r in rows]) for k in batch_lib.BATCH_KEYS}

    assert max(len(d["ids"]) for d in docs) > 2 * SEQ_LEN  # Some documents are split.
    real = rows["segment_ids"] > 0
    np.testing.assert_array_equal(rows["loss_mask"], real.astype(np.float32))
    assert (rows["tokens"][~real] == tokenizer.pad_id).all()
    assert (rows["targets"][~real] == tokenizer.pad_id).all()

    segments = []
    for tokens, targets, seg, pos in zip(
        rows["tokens"], rows["targets"], rows["segment_ids"], rows["positions"], strict=True
    ):
        n = int((seg > 0).sum())
        assert (seg[:n] > 0).all() and (seg[n:] == 0).all()  # Padding only at the end.
        starts = np.flatnonzero(np.diff(seg[:n], prepend=0))
        np.testing.assert_array_equal(seg[starts], np.arange(1, len(starts) + 1))
        for start, end in zip(starts, [*starts[1:], n], strict=True):
            np.testing.assert_array_equal(pos[start:end], np.arange(end - start))
            segments.append((tuple(tokens[start:end]), tuple(targets[start:end])))

    ids = [d["ids"] for d in docs]
    if packing == "first_fit":
        # Every document piece appears as exactly one segment.
        pieces = [
            (tuple(x[:-1][i : i + SEQ_LEN]), tuple(x[1:][i : i + SEQ_LEN]))
            for x in ids
            for i in range(0, len(x) - 1, SEQ_LEN)
        ]
        assert collections.Counter(segments) == collections.Counter(pieces)
    else:
        # The stream in order: concatenating the segments gives back every document's pairs.
        # (The final partial row has no batch to fill: concat-then-split emits it padded.)
        np.testing.assert_array_equal(
            np.concatenate([s[0] for s in segments]), np.concatenate([x[:-1] for x in ids])
        )
        np.testing.assert_array_equal(
            np.concatenate([s[1] for s in segments]), np.concatenate([x[1:] for x in ids])
        )


def test_mixture_weights_within_two_percent_over_10000_documents(corpus, tokenizer):
    weights = {"web": 0.5, "synthetic": 0.3, "web_strict": 0.2}
    it = iter(pipeline.mixed_documents(options(corpus), weights, tokenizer))
    first_words = collections.Counter(
        tokenizer.decode(next(it)["ids"][1:-1]).split()[0] for _ in range(10_000)
    )
    counts = pipeline.source_counters(it)
    realised = {name: counts[name]["documents"] / 10_000 for name in weights}
    assert realised == {name: first_words[name] / 10_000 for name in weights}
    for name, weight in weights.items():
        assert abs(realised[name] - weight) < 0.02, (name, realised)
    # Over 10,000 documents the sources wrapped around their 600 documents several times.
    assert sum(c["documents"] for c in counts.values()) == 10_000


def test_phase_two_starts_exactly_at_its_step(corpus, tokenizer):
    opts = options(corpus, phase2={"snow": 1.0}, phase2_start_step=7)
    it = iter(pipeline.train_dataset(opts, tokenizer))
    is_byte = byte_pieces(tokenizer)
    snow = [has_snow(b, is_byte) for b in take(it, 7)]
    assert it.get_state()["phase2"] is None
    snow += [has_snow(b, is_byte) for b in take(it, 5)]
    assert not np.any(snow[:7]) and np.all(snow[7:])
    counts = pipeline.source_counters(it)
    assert counts["web"]["documents"] > 0 and counts["snow"]["documents"] > 0


def test_eval_batches_are_held_out_and_repeatable(corpus, tokenizer):
    opts = options(corpus, eval_fraction=0.2, eval_batches=3)
    evals = pipeline.eval_datasets(opts, tokenizer)
    assert sorted(evals) == ["synthetic", "web", "web_strict"]
    for dataset in evals.values():
        runs = [list(dataset) for _ in range(2)]
        assert len(runs[0]) == 3
        assert_batches_equal(*runs)
    # Held-out documents never reach training: the train stream's documents avoid them.
    train_ids = {
        tuple(next(it)["ids"])
        for it in [iter(pipeline.mixed_documents(opts, {"web": 1.0}, tokenizer))]
        for _ in range(480)
    }
    held_out = ShardSource(
        opts.sources["web"],
        pipeline.DocumentIds(tokenizer, add_bos=True),
        ReadOptions(split="eval", eval_fraction=0.2, repeat=False),
    )
    held_out_ids = {tuple(d["ids"]) for d in held_out}
    assert 90 < len(held_out_ids) < 150 and not train_ids & held_out_ids


def corpus_config(corpus: str):
    """The tiny config reading the test corpus: 4 rows of SEQ_LEN tokens."""
    config = base.get_config("tiny")
    for name in ("web", "web_strict", "synthetic"):
        config.data.sources[name].globs = glob_of(corpus, name)
    config.data.num_workers = 0
    config.train.seq_len = SEQ_LEN
    config.train.global_batch_size = 4
    return config_lib.validate(config)


def test_train_iterator_from_config(corpus, tokenizer):
    config = corpus_config(corpus)
    opts = pipeline.options_from_config(config, process_index=1, process_count=2)
    assert (opts.batch_size, opts.process_index, opts.phase2_start_step) == (2, 1, 800)
    batch = next(pipeline.train_iterator(config, tokenizer, process_index=1, process_count=2))
    assert batch["tokens"].shape == (2, SEQ_LEN)


def test_held_out_batches_do_not_depend_on_the_process_count(corpus, tokenizer, monkeypatch):
    """Every process reads the held-out rows of the whole global batch, as one reader does (and
    feeds its own of them): the held-out loss of a checkpoint is the same for any process count.
    """
    config = corpus_config(corpus)
    config.data.update(eval_fraction=0.2, eval_batches=2)
    one = {name: list(d) for name, d in objective.eval_datasets(config, tokenizer).items()}
    monkeypatch.setattr(pipeline, "_process_index_and_count", lambda: (1, 2))
    assert pipeline.options_from_config(config).batch_size == 2  # training: this process's half
    two = {name: list(d) for name, d in objective.eval_datasets(config, tokenizer).items()}
    assert one.keys() == two.keys() == {"synthetic", "web", "web_strict"}
    for name in one:
        assert [b["tokens"].shape for b in two[name]] == [(4, SEQ_LEN)] * 2
        assert_batches_equal(one[name], two[name])


def test_batches_become_global_arrays_through_the_sharding_hand_off(corpus, tokenizer):
    batch = next(iter(pipeline.train_dataset(options(corpus, batch_size=8), tokenizer)))
    mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(8), ("data",))
    batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    arrays = sharding.global_batch(batch, batch_sharding, 8)
    assert sorted(arrays) == sorted(batch_lib.BATCH_KEYS)
    for key, array in arrays.items():
        assert array.shape == (8, SEQ_LEN) and array.sharding == batch_sharding
        assert {s.data.shape for s in array.addressable_shards} == {(1, SEQ_LEN)}
        np.testing.assert_array_equal(np.asarray(array), batch[key])


def test_a_bad_record_read_by_a_worker_raises_in_the_training_process(tokenizer, tmp_path):
    parse_absl_flags()
    write_source(str(tmp_path), "web", shards=2, per_shard=50)
    (tmp_path / "web-009.jsonl").write_bytes(b'{"text": "ok"}\n{"body": 1}\n')
    opts = options(
        str(tmp_path),
        sources={"web": SourceSpec("web", (str(tmp_path / "web-*"),))},
        phase2={},
        num_workers=2,
    )
    it = iter(pipeline.train_dataset(opts, tokenizer))
    with pytest.raises(BadInputError, match=r"web-009.jsonl: record 1: no field 'text'"):
        take(it, 200)
    it.close()


# A process that takes batches from two grain workers, keeps JAX arrays of the last ones alive
# (on CPU they may alias the numpy arrays), closes the iterator and exits.
_WORKER_BATCHES_AT_EXIT = """
import jax
from absl import flags

from configs import phi3_tiny
from phi3_jax.data import pipeline
from phi3_jax.data.tokenizer import load_tokenizer

if __name__ == "__main__":
    flags.FLAGS(["batches"])
    config = phi3_tiny.get_config()
    config.data.num_workers = 2
    config.train.update(seq_len=32, global_batch_size=4)
    iterator = pipeline.train_iterator(config, load_tokenizer(config), 0, 1)
    alive = [jax.device_put(next(iterator)) for _ in range(3)]
    iterator.close()
    print("done")
"""


def test_a_clean_exit_with_workers_leaves_no_shared_memory_behind(tmp_path):
    script = tmp_path / "batches.py"
    script.write_text(_WORKER_BATCHES_AT_EXIT)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=REPO,
        env=env | {"JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and result.stdout == "done\n", result.stderr[-3000:]
    # The resource tracker's "There appear to be N leaked shared_memory objects".
    assert "leaked shared_memory" not in result.stderr, result.stderr[-3000:]
