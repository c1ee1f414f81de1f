"""SFT data and loss: conversations through the grain pipeline (jsonl, jsonl.zst, parquet) train
exactly the chat format's assistant tokens, packed without attention across conversations; the
loss equals transformers' with the other labels set to -100, whatever the microbatching; bad
conversations and too-long ones are errors or counted drops."""

from __future__ import annotations

import json

import jax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hf_fixtures import random_hf_model
from run_fixtures import assert_resume_is_bitwise_exact, small_run

from configs import phi3_sft
from phi3_jax import config as config_lib
from phi3_jax import errors, sharding
from phi3_jax.checkpoint import params as params_checkpoint
from phi3_jax.data import pipeline, shard_records, sources
from phi3_jax.data.tokenizer import load_tokenizer
from phi3_jax.model import hf
from phi3_jax.posttrain import chat, sft
from phi3_jax.train import restore as restore_lib
from phi3_jax.train import step as step_lib

TOPICS = ["apples", "rivers", "prime numbers", "sorting", "tea", "the moon", "bridges", "owls"]


def conversation(i: int) -> list[dict]:
    topic = TOPICS[i % len(TOPICS)]
    messages = [{"role": "user", "content": f"Tell me about {topic}, briefly."}]
    if i % 3 == 0:
        messages.insert(0, {"role": "system", "content": "Answer in one sentence."})
    messages.append({"role": "assistant", "content": f"{topic.capitalize()} are worth {i} words."})
    if i % 2:
        messages += [
            {"role": "user", "content": "And more?"},
            {"role": "assistant", "content": f"Item {i}:\n  - indented\n  - list"},
        ]
    return messages


def write_jsonl(path, records) -> str:
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    return str(path)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(phi3_sft.get_config("tiny"))


def sft_config(globs: str, fmt: str = "jsonl", **train):
    config = phi3_sft.get_config("tiny")
    config.data.sources.chat.update(globs=globs, format=fmt)
    config.data.update(num_workers=0, eval_fraction=0.0)
    config.eval.every_steps = 0
    config.train.update(dict(seq_len=128, global_batch_size=4) | train)
    return config_lib.validate(config)


def first_batch(config, tokenizer) -> dict[str, np.ndarray]:
    opts = pipeline.options_from_config(config, 0, 1)
    dataset = pipeline.train_dataset(opts, tokenizer, sft.records(config, tokenizer))
    return next(iter(dataset))


def segments(batch):
    """(tokens + last target, loss mask) of each conversation packed in the batch."""
    for row in range(batch["tokens"].shape[0]):
        seg = batch["segment_ids"][row]
        for s in range(1, seg.max() + 1):
            where = seg == s
            ids = np.append(batch["tokens"][row][where], batch["targets"][row][where][-1])
            assert batch["positions"][row][where].tolist() == list(range(where.sum()))
            yield ids, batch["loss_mask"][row][where]


def test_packed_batch_trains_exactly_the_assistant_tokens(tmp_path, tokenizer):
    records = [{"messages": conversation(i)} for i in range(40)]
    config = sft_config(write_jsonl(tmp_path / "chat.jsonl", records))
    expected = {}
    for r in records:
        ids, trained = chat.encode_conversation(tokenizer, r["messages"])
        expected[tuple(ids.tolist())] = trained[1:]
    batch = first_batch(config, tokenizer)
    found = list(segments(batch))
    # Several conversations share a row (packing), each one whole.
    assert len(found) > batch["tokens"].shape[0]
    for ids, loss_mask in found:
        np.testing.assert_array_equal(loss_mask, expected[tuple(ids.tolist())])
    assert batch["loss_mask"][batch["segment_ids"] == 0].sum() == 0


def test_parquet_and_jsonl_give_the_same_batches(tmp_path, tokenizer):
    records = [{"messages": conversation(i), "id": i} for i in range(24)]
    jsonl = first_batch(sft_config(write_jsonl(tmp_path / "c.jsonl", records)), tokenizer)
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "c.parquet")
    parquet = first_batch(sft_config(str(tmp_path / "c.parquet"), "parquet"), tokenizer)
    for key in jsonl:
        np.testing.assert_array_equal(jsonl[key], parquet[key])


def test_loss_equals_transformers_with_masked_labels_for_any_microbatching(tmp_path, tokenizer):
    torch = pytest.importorskip("torch")  # absent on Python 3.12 (README: Install)
    hf_model = random_hf_model(
        vocab_size=32064, max_position_embeddings=128, original_max_position_embeddings=128
    )
    hf_model.save_pretrained(tmp_path / "hf")
    hf_config, params = hf.load_hf(str(tmp_path / "hf"))
    records = [{"messages": conversation(i)} for i in range(40)]
    config = sft_config(write_jsonl(tmp_path / "chat.jsonl", records))
    config.model = hf_config.model.as_configdict()
    config.model.dtype = "float32"
    batch = first_batch(config, tokenizer)

    # transformers: each conversation on its own, labels -100 but on its trained tokens.
    trained_of = {}
    for r in records:
        ids, trained = chat.encode_conversation(tokenizer, r["messages"])
        trained_of[tuple(ids.tolist())] = trained
    ce_sum, trained_sum = 0.0, 0
    for ids, _ in segments(batch):
        trained = trained_of[tuple(ids.tolist())]
        labels = np.where(trained, ids, -100)
        with torch.no_grad():
            out = hf_model(
                torch.as_tensor(ids[None], dtype=torch.long),
                labels=torch.as_tensor(labels[None], dtype=torch.long),
            )
        n = int(trained[1:].sum())
        ce_sum, trained_sum = ce_sum + float(out.loss) * n, trained_sum + n
    expected = ce_sum / trained_sum

    results = []
    for microbatches in (1, 2, 4):
        config.train.microbatches = microbatches
        frozen = config.copy_and_resolve_references()
        grads, metrics = jax.jit(lambda p, b, c=frozen: step_lib.loss_and_grads(c, p, b))(
            params, batch
        )
        results.append((float(metrics["loss"]), float(metrics["tokens"]), grads))
        np.testing.assert_allclose(results[-1][0], expected, rtol=1e-5)
        assert results[-1][1] == trained_sum
    for _, _, grads in results[1:]:
        for a, b in zip(jax.tree.leaves(results[0][2]), jax.tree.leaves(grads), strict=True):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


BAD = {
    "no_assistant": ([{"role": "user", "content": "hi"}], "no assistant message"),
    "out_of_order": (
        [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}],
        "message 0: role 'assistant' out of order",
    ),
    "unknown_role": ([{"role": "tool", "content": "x"}], "message 0: unknown role 'tool'"),
    "empty_content": (
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}],
        "message 1 (assistant): empty",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_conversation_is_an_error_naming_file_and_record(tmp_path, tokenizer, case):
    messages, reason = BAD[case]
    records = [{"messages": conversation(i)} for i in range(3)] + [{"messages": messages}]
    path = write_jsonl(tmp_path / "bad.jsonl", records)
    with pytest.raises(errors.BadInputError) as error:
        first_batch(sft_config(path), tokenizer)
    assert f"bad.jsonl: record 3: messages: {reason}" in str(error.value)


def source_state(config, tokenizer, n: int):
    """The source's counters after `n` documents."""
    spec = shard_records.SourceSpec("chat", (config.data.sources.chat.globs,), fields=("messages",))
    opts = sources.ReadOptions(on_bad=config.data.on_bad_record, repeat=False)
    iterator = iter(sources.ShardSource(spec, sft.records(config, tokenizer).to_ids, opts))
    documents = [next(iterator) for _ in range(n)]
    return documents, sources.counters(iterator.get_state())["chat"]


def test_skipped_and_too_long_conversations_are_counted(tmp_path, tokenizer):
    long = [
        {"role": "user", "content": "Count."},
        {"role": "assistant", "content": "ok " * 200},
    ]
    records = [
        {"messages": conversation(0)},
        {"messages": BAD["no_assistant"][0]},
        {"messages": long},
        {"messages": conversation(1)},
    ]
    path = write_jsonl(tmp_path / "mixed.jsonl", records)
    config = sft_config(path, seq_len=64)
    config.data.on_bad_record = "skip"
    docs, counts = source_state(config, tokenizer, 2)
    assert [len(d["ids"]) <= 65 for d in docs] == [True, True]
    assert (counts["documents"], counts["bad_records"], counts["too_long_dropped"]) == (2, 1, 1)

    config.sft.too_long = "truncate"
    docs, counts = source_state(config, tokenizer, 3)
    assert (counts["too_long_truncated"], counts["too_long_dropped"]) == (1, 0)
    assert len(docs[1]["ids"]) == 65 and docs[1]["trained"][1:].any()
    # A conversation whose cut leaves no assistant token is dropped all the same.
    prompt_only = [
        {"role": "user", "content": "word " * 300},
        {"role": "assistant", "content": "x"},
    ]
    write_jsonl(
        tmp_path / "mixed.jsonl", [{"messages": prompt_only}, {"messages": conversation(2)}]
    )
    _, counts = source_state(config, tokenizer, 1)
    assert (counts["too_long_truncated"], counts["too_long_dropped"]) == (0, 1)


def test_sft_run_resumes_bitwise_exactly_and_a_run_is_an_init_from(tmp_path):
    config = config_lib.freeze(small_run(phi3_sft.get_config("tiny")))
    lines = assert_resume_is_bitwise_exact(config, tmp_path)
    assert any(line.startswith("step 4/4") for line in lines)
    # checkpoint.init_from may name a run (its latest step): its model and params.
    run = str(tmp_path / "straight")
    assert params_checkpoint.init_config(run).model == config.model
    _, expected, _ = restore_lib.restore_params_of_run(run)
    mesh = sharding.make_mesh(config.mesh)
    got = restore_lib.restore_sharded_params(run, config, mesh)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
