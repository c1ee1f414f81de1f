"""`make data-llm`'s tools on emulated buckets (gs:// and s3://), against the scripted chat servers
of their own tests: `annotate` writes the labels and summary it writes locally, and
`synthetic --generator=llm` keeps the documents it keeps locally (its datatrove checkpoints in
the local cache of the bucket's path)."""

from __future__ import annotations

from phi3_jax import paths
from phi3_jax.data import annotate, synthetic_llm
from phi3_jax.data.readers import iter_documents
from phi3_jax.data.shards import write_jsonl_zst
from phi3_jax.serve.background import BackgroundServer
from tests.data import test_annotate, test_synthetic_llm

KINDS = ["good 4", "good 1", "flaky 3", "rambling 0", "garbage 0"]
TOPICS = "good\ndup\nshort\nright\n"


def _annotate(root: str, url: str) -> dict:
    records = [{"id": k, "text": f"Kind: {k} of page."} for k in KINDS]
    write_jsonl_zst(records, paths.join(root, "in", "web.jsonl.zst"))
    summary = annotate.run(
        paths.join(root, "in", "*.jsonl.zst"),
        paths.join(root, "labels"),
        endpoint=url,
        retries=2,
        backoff_s=0.01,
    )
    return {k: v for k, v in summary.items() if k != "input"}


def _synthetic(root: str, url: str) -> tuple[dict, list]:
    paths.path(paths.join(root, "topics.txt")).write_text(TOPICS)
    summary = synthetic_llm.generate_documents(
        paths.join(root, "topics.txt"),
        paths.join(root, "synthetic"),
        docs=12,
        endpoint=url,
        chunk=4,
        limits=test_synthetic_llm.LIMITS,
    )
    kept = [(d.id, d.text) for d in iter_documents(paths.join(root, "synthetic", "*.jsonl.zst"))]
    return {k: v for k, v in summary.items() if k != "shards"}, kept


def test_annotate_and_llm_synthetic_on_a_bucket_are_the_local_ones(tool_bucket, tmp_path):
    local = str(tmp_path / "local")
    # One server for both runs: the labels name its URL.
    with BackgroundServer(test_annotate.scripted_app({})) as url:
        assert _annotate(tool_bucket, url) == _annotate(local, url)
    # In the order the concurrent requests finished.
    labels = sorted(
        paths.path(paths.join(tool_bucket, "labels", "labels.jsonl")).read_bytes().splitlines()
    )
    assert labels == sorted(
        paths.path(paths.join(local, "labels", "labels.jsonl")).read_bytes().splitlines()
    )
    assert len(labels) == 3  # good 4, good 1, flaky 3
    with BackgroundServer(test_synthetic_llm.scripted_app([])) as url:
        summary, kept = _synthetic(tool_bucket, url)
        assert (summary, kept) == _synthetic(local, url)
    assert summary["kept"] == len(kept) > 0
    assert paths.glob(paths.join(paths.cache_path(tool_bucket), "synthetic", "checkpoints"))
