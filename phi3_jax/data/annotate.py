"""Educational value judged by a language model: a labelled set for the quality classifier.

    python -m phi3_jax.data.annotate --input=SHARDS --output=DIR (--endpoint=URL | --serve_workdir=RUN)
        --sample=N [--seed=S] [--model=NAME] [--max_doc_chars=C] [--retries=R] [--backoff_s=B]

A sample of N documents (the N whose hash of seed and id is smallest: the same sample for the
same seed, whatever the file order) goes through datatrove's `InferenceRunner` with server type
`endpoint` (any OpenAI-compatible server: vLLM, SGLang, TGI, or `phi3_jax.serve`;
`--serve_workdir` starts ours in this process on a free loopback port). Each document is sent as
one chat message with the rubric below, greedy. The answer's score is read from its last
`Educational score: <0-5>` line; an answer without one is counted as unparseable, never guessed.
A failed request (a 5xx, a garbled body, a refused connection) is retried `retries` times with
exponential backoff, then counted as failed.

DIR/labels.jsonl holds one record per scored document: `id`, `text`, `score` and `annotation`
(prompt version, model, endpoint, sampling); DIR/summary.json the counts (sampled, scored,
unparseable, failed, the score histogram) and the same provenance. `python -m
phi3_jax.data.quality train --labelled=DIR/labels.jsonl --score_threshold=3` turns the scores
into hq/lq labels and trains the classifier that `prepare --quality_model` filters with.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import re
from collections.abc import Iterator, Sequence

import httpx
import orjson
from datatrove.data import Document
from datatrove.pipeline.inference.run_inference import InferenceConfig, InferenceRunner
from datatrove.pipeline.inference.types import InferenceError, ServerError
from datatrove.pipeline.writers import JsonlWriter

from phi3_jax import paths
from phi3_jax.data.readers import iter_documents

PROMPT_VERSION = "edu-additive-v1"
RUBRIC = """Below is an extract from a web page. Judge how useful it would be for teaching, \
from primary school to university, by adding up points:

- 1 point if it gives some information on a topic that could be taught, even if it is mixed \
with ads, navigation or other clutter.
- 1 more point if it covers something that belongs in a course, though it may be incomplete, \
disorganised or written for another purpose.
- 1 more point if it explains a key idea clearly and coherently enough to be used in a lesson, \
like an introduction in a textbook.
- 1 more point if it is focused, well organised and at a suitable level, like a chapter of a \
textbook or a good tutorial, with little that is off the topic.
- 1 more point if it is outstanding teaching material: clear reasoning, examples or exercises, \
and nothing that does not help a learner.

The extract:
<<<
{text}
>>>

Explain your judgement in at most three sentences, then write the total on its own line as \
"Educational score: <points>" with points a whole number from 0 to 5."""
SCORE = re.compile(r"educational score\s*[:=]\s*\**\s*([0-5])(?![0-9.])", re.IGNORECASE)
RESULTS_KEY = "judgement"


def parse_score(answer: str) -> int | None:
    """The score of the answer's last `Educational score: N` (N in 0..5), or None."""
    matches = SCORE.findall(answer or "")
    return int(matches[-1]) if matches else None


def sample_documents(patterns: str, n: int, seed: int) -> list[Document]:
    """The n documents whose sha256(seed:id) is smallest, in that order."""

    def rank(doc: Document) -> str:
        return hashlib.sha256(f"{seed}:{doc.id}".encode()).hexdigest()

    return sorted(iter_documents(patterns), key=rank)[:n]


async def judge(
    document: Document,
    generate,
    *,
    max_doc_chars: int,
    retries: int,
    backoff_s: float,
    sampling: dict,
) -> dict:
    """One document's judgement ({answer, score} or {error}), with retries and backoff."""
    text = document.text[:max_doc_chars]
    payload = {"messages": [{"role": "user", "content": RUBRIC.format(text=text)}], **sampling}
    error: Exception | None = None
    for attempt in range(retries + 1):
        try:
            result = await generate(dict(payload))
        except (InferenceError, ServerError) as failure:
            error = failure
            if "BadRequestError" in str(failure):  # the request itself is refused: no retry
                break
            await asyncio.sleep(backoff_s * 2**attempt)
            continue
        return {
            "answer": result.text,
            "score": parse_score(result.text),
            "finish_reason": result.finish_reason,
        }
    return {"error": f"{type(error).__name__}: {error}"[:500]}


def served_model(endpoint: str) -> str:
    """The first model id the endpoint lists (GET /v1/models)."""
    response = httpx.get(f"{endpoint.rstrip('/')}/v1/models", timeout=60)
    response.raise_for_status()
    return response.json()["data"][0]["id"]


@contextlib.contextmanager
def endpoint_of(endpoint: str | None, serve_workdir: str | None) -> Iterator[str]:
    """The given endpoint, or our server for a run started on loopback while the block runs."""
    if bool(endpoint) == bool(serve_workdir):
        raise ValueError("give exactly one of --endpoint and --serve_workdir")
    if endpoint:
        yield endpoint.rstrip("/")
        return
    from phi3_jax.eval.source import load
    from phi3_jax.serve.api import make_app
    from phi3_jax.serve.background import BackgroundServer
    from phi3_jax.serve.engine import Engine

    loaded = load(workdir=serve_workdir)
    name = paths.path(serve_workdir).name
    with BackgroundServer(make_app(Engine(loaded), name)) as url:
        yield url


def endpoint_config(url: str, model: str, concurrency: int) -> InferenceConfig:
    """datatrove's inference config for an OpenAI-compatible server's chat endpoint."""
    return InferenceConfig(
        server_type="endpoint",
        model_name_or_path=model,
        endpoint_url=url,
        use_chat=True,
        max_concurrent_generations=concurrency,
        metric_interval=3600,
    )


def add_endpoint_flags(parser: argparse.ArgumentParser) -> None:
    """--endpoint, --serve_workdir and --model, as every LLM data tool takes them."""
    parser.add_argument("--endpoint", default=None, help="an OpenAI-compatible server's base URL")
    parser.add_argument("--serve_workdir", default=None, help="serve this run here instead")
    parser.add_argument("--model", default=None, help="model id (default: the endpoint's first)")


def read_results(folder: str) -> list[dict]:
    """The records InferenceRunner's jsonl writer left in `folder`, file by file."""
    records = []
    for file in paths.glob(paths.join(folder, "*.jsonl")):
        lines = paths.path(file).read_bytes().splitlines()
        records += [orjson.loads(line) for line in lines if line]
    return records


def run(
    input: str,
    output: str,
    *,
    endpoint: str | None = None,
    serve_workdir: str | None = None,
    sample: int = 100,
    seed: int = 0,
    model: str | None = None,
    max_doc_chars: int = 3000,
    max_tokens: int = 256,
    retries: int = 3,
    backoff_s: float = 1.0,
    concurrency: int = 32,
) -> dict:
    """Judge a sample of the input; write DIR/labels.jsonl and DIR/summary.json; return the
    summary."""
    if sample < 1:
        raise ValueError(f"sample={sample}: must be at least 1")
    raw = paths.join(output, "judgements")
    if paths.path(raw).exists():
        raise FileExistsError(f"{raw}: already exists; give a new --output")
    documents = sample_documents(input, sample, seed)
    sampling = {"temperature": 0.0, "max_tokens": max_tokens}
    with endpoint_of(endpoint, serve_workdir) as url:
        name = model or served_model(url)
        runner = InferenceRunner(
            rollout_fn=lambda doc, generate: judge(
                doc,
                generate,
                max_doc_chars=max_doc_chars,
                retries=retries,
                backoff_s=backoff_s,
                sampling=sampling,
            ),
            config=endpoint_config(url, name, concurrency),
            output_writer=JsonlWriter(raw, output_filename="${rank}.jsonl", compression=None),
            metadata_key=RESULTS_KEY,
        )
        runner.run(documents, rank=0, world_size=1)
    provenance = {
        "prompt_version": PROMPT_VERSION,
        "model": name,
        "endpoint": endpoint or f"phi3_jax.serve --workdir={paths.resolve(serve_workdir)}",
        "sampling": sampling,
        "max_doc_chars": max_doc_chars,
    }
    labels, failed, unparseable = [], 0, 0
    histogram = {str(s): 0 for s in range(6)}
    for record in read_results(raw):
        result = record["metadata"][RESULTS_KEY][0]
        if "error" in result:
            failed += 1
        elif result["score"] is None:
            unparseable += 1
        else:
            histogram[str(result["score"])] += 1
            labels.append(
                {
                    "id": record["id"],
                    "text": record["text"],
                    "score": result["score"],
                    "annotation": provenance,
                }
            )
    labelled = b"".join(orjson.dumps(r) + b"\n" for r in labels)
    paths.path(paths.join(output, "labels.jsonl")).write_bytes(labelled)
    summary = {
        "input": input,
        "sampled": len(documents),
        "scored": len(labels),
        "unparseable": unparseable,
        "failed": failed,
        "scores": histogram,
        "annotation": provenance,
    }
    paths.path(paths.join(output, "summary.json")).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m phi3_jax.data.annotate")
    parser.add_argument("--input", required=True, help="comma-separated globs of jsonl shards")
    parser.add_argument("--output", required=True, help="output folder")
    add_endpoint_flags(parser)
    parser.add_argument("--sample", type=int, default=100, help="documents to judge")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample")
    parser.add_argument("--max_doc_chars", type=int, default=3000)
    parser.add_argument("--max_tokens", type=int, default=256)
    parser.add_argument("--retries", type=int, default=3)
    parser.add_argument("--backoff_s", type=float, default=1.0)
    args = parser.parse_args(argv)
    try:
        summary = run(
            args.input,
            args.output,
            endpoint=args.endpoint,
            serve_workdir=args.serve_workdir,
            sample=args.sample,
            seed=args.seed,
            model=args.model,
            max_doc_chars=args.max_doc_chars,
            max_tokens=args.max_tokens,
            retries=args.retries,
            backoff_s=args.backoff_s,
        )
    except (FileExistsError, FileNotFoundError, ValueError, httpx.HTTPError) as e:
        raise SystemExit(f"error: {e}") from e
    print(
        f"scored {summary['scored']} of {summary['sampled']} (unparseable "
        f"{summary['unparseable']}, failed {summary['failed']}): {args.output}/labels.jsonl"
    )


if __name__ == "__main__":
    main()
