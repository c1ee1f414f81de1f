"""`make data`'s tools with their inputs and outputs on emulated buckets (gs:// and s3://): the
labelled set, the classifier, the synthetic lessons, the chat data and the two tokenizers written
there are the bytes the same commands write on local disk. (Their `prepare` step:
test_prepare_on_buckets.)"""

from __future__ import annotations

import itertools

from phi3_jax import paths
from phi3_jax.data import quality, synthetic, tokenizer
from phi3_jax.data.readers import iter_documents
from phi3_jax.data.shards import write_jsonl_zst
from phi3_jax.posttrain import demo_data

SHIPPED_WEB = "data/web/phase1/*.jsonl.zst"


def _make_data(root: str) -> list[str]:
    """make data's commands after the corpus (a slice of the shipped web shards) and before
    prepare, on `root`; the files they wrote."""
    docs = [{"id": d.id, "text": d.text} for d in itertools.islice(iter_documents(SHIPPED_WEB), 40)]
    write_jsonl_zst(docs, paths.join(root, "raw", "web.jsonl.zst"))
    labelled = paths.join(root, "quality", "labelled.jsonl")
    quality.main(["label", f"--corpus={root}/raw/*.jsonl.zst", f"--out={labelled}"])
    quality.main(["train", f"--labelled={labelled}", f"--out={root}/quality/edu.bin"])
    synthetic.main([f"--out={root}/synthetic", "--docs=60", "--seed=0", "--docs_per_shard=40"])
    demo_data.main([f"--synthetic={root}/synthetic/*.jsonl.zst", f"--out={root}/chat"])
    inputs = f"--input={root}/raw/*.jsonl.zst,{root}/synthetic/*.jsonl.zst"
    tokenizer.main(["train", inputs, "--vocab_size=600", f"--out={root}/tokenizer"])
    tokenizer.main(["train_tiktoken", inputs, "--num_ranks=300", f"--out={root}/small.tiktoken"])
    return [
        file.removeprefix(paths.resolve(root) + "/")
        for file in paths.glob(paths.join(root, "**"))
        if paths.path(file).is_file()
    ]


def test_make_data_tools_on_a_bucket_write_the_local_bytes(tool_bucket, tmp_path):
    local = str(tmp_path)
    written = _make_data(tool_bucket)
    assert written == _make_data(local)
    assert {
        "quality/edu.bin",
        "synthetic/00001.jsonl.zst",
        "chat/dpo.jsonl.zst",
        "tokenizer.model",
        "tokenizer.vocab",
        "tokenizer.json",
        "small.tiktoken",
    } <= set(written)
    # A sentencepiece model records the local path it was trained at (its trainer spec's
    # model_prefix): its pieces are compared in tokenizer.vocab and tokenizer.json, and its ids.
    for name in set(written) - {"tokenizer.model"}:
        expected = paths.path(paths.join(local, name)).read_bytes()
        assert paths.path(paths.join(tool_bucket, name)).read_bytes() == expected, name
    text = "The list type supports indexing."
    assert tokenizer.load("sentencepiece", paths.join(tool_bucket, "tokenizer.model")).encode(
        text
    ) == (tokenizer.load("sentencepiece", paths.join(local, "tokenizer.model")).encode(text))
