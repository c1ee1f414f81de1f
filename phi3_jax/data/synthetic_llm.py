"""Synthetic textbooks written by a language model (`synthetic --generator=llm`).

Prompts are built combinatorially, as phi-1 and Cosmopedia did for diversity: each seed topic
(one per line of --topics) crossed with an audience, a style and a form (lesson, worked
exercise, questions and answers, code with explanation); the combinations are shuffled by the
seed and the first N taken (cycling when N exceeds them). Document i is sampled with its own
seed (seed * 1_000_003 + i), so a rerun asks for exactly the same documents.

Generation runs on datatrove's `InferenceRunner` (server type `endpoint`) with its
checkpointing: answers are kept in `DIR/checkpoints` and `DIR/generations` chunk by chunk, so a
killed run, rerun with the same arguments, resumes without asking again for what it has and
without duplicating a document. Then every answer is checked, and the failures are dropped and
counted (DIR/summary.json):

- `truncated`: the generation hit max_tokens (finish_reason `length`);
- `too_short`: fewer than `min_words` words;
- `code_failed` / `wrong_output`: a ```python block fails, runs past its time or memory limit in
  a subprocess sandbox, or prints something other than the ``` block after an `Output:` line
  that follows it;
- `near_duplicate`: a MinHash near-duplicate (prepare's MinHash settings: some band of the
  signature equal) of an earlier kept document.

The kept documents go to DIR/NNNNN.jsonl.zst with their prompt, its parts and the sampling.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import random
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence

import orjson
from datatrove.data import Document
from datatrove.pipeline.dedup import MinhashDedupSignature
from datatrove.pipeline.inference.run_inference import InferenceRunner
from datatrove.pipeline.writers import JsonlWriter

from phi3_jax import paths
from phi3_jax.data.annotate import endpoint_config, endpoint_of, read_results, served_model
from phi3_jax.data.prepare.pipeline import MINHASH
from phi3_jax.data.shards import write_shards

AUDIENCES = ("a curious ten-year-old", "a high-school student", "a first-year undergraduate",
             "a professional changing careers")  # fmt: skip
STYLES = ("plain and patient", "concise and rigorous", "story-driven, with a running example")
FORMS = {
    "lesson": "a textbook lesson that builds the idea step by step",
    "worked exercise": "a worked exercise: state a problem, solve it in numbered steps, check it",
    "questions and answers": "five questions a learner would ask, each with a careful answer",
    "code with explanation": "a short Python program that illustrates the idea, explained "
    "line by line; put the code in a ```python block, and if it prints something, follow it "
    "with a line 'Output:' and a ``` block holding exactly what it prints",
}
PROMPT = "Write {form} about {topic} for {audience}. Style: {style}. Write only the text itself."
RESULTS_KEY = "generation"
CODE = re.compile(r"```python\n(.*?)```(?:\s*Output:\s*```[^\n]*\n(.*?)```)?", re.DOTALL)


@dataclasses.dataclass(frozen=True)
class Limits:
    """What a kept document must satisfy and what a code block may use."""

    min_words: int = 80
    code_timeout_s: float = 5.0
    code_memory_bytes: int = 512 * 2**20


def read_topics(path: str) -> list[str]:
    """Non-empty, non-comment lines of the topics file; none at all is an error naming it."""
    lines = [line.strip() for line in paths.path(path).read_text().splitlines()]
    topics = [line for line in lines if line and not line.startswith("#")]
    if not topics:
        raise ValueError(f"{path}: no topics (one per line)")
    return topics


def prompt_specs(topics: Sequence[str], n: int, seed: int) -> list[dict]:
    """n prompt specifications {topic, audience, style, form, prompt}."""
    combos = list(itertools.product(topics, AUDIENCES, STYLES, FORMS))
    random.Random(seed).shuffle(combos)
    specs = []
    for i in range(n):
        topic, audience, style, form = combos[i % len(combos)]
        prompt = PROMPT.format(form=FORMS[form], topic=topic, audience=audience, style=style)
        specs.append(dict(topic=topic, audience=audience, style=style, form=form, prompt=prompt))
    return specs


# The sandbox's child caps its own address space, then runs the code it reads from stdin (no
# preexec_fn: forking a multithreaded parent, as JAX is, to run Python in between can deadlock).
_SANDBOX = (
    "import resource, sys; limit = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_AS, (limit, limit)); code = sys.stdin.read(); "
    "exec(compile(code, '<exercise>', 'exec'), {'__name__': '__main__'})"
)


def check_code(text: str, limits: Limits) -> str | None:
    """None if every ```python block runs and prints what the text says it prints, else the
    reason to drop the document: `code_failed` or `wrong_output`."""
    for match in CODE.finditer(text):
        code, stated = match.group(1), match.group(2)
        with tempfile.TemporaryDirectory() as scratch:
            try:
                done = subprocess.run(
                    [sys.executable, "-I", "-c", _SANDBOX, str(limits.code_memory_bytes)],
                    input=code,
                    capture_output=True,
                    text=True,
                    timeout=limits.code_timeout_s,
                    cwd=scratch,
                    env={"PATH": os.environ.get("PATH", "")},
                )
            except subprocess.TimeoutExpired:
                return "code_failed"
        if done.returncode != 0:
            return "code_failed"
        if stated is not None and done.stdout.strip() != stated.strip():
            return "wrong_output"
    return None


def _bands(signer: MinhashDedupSignature, text: str) -> set[tuple]:
    return {
        (band, tuple(values))
        for band, values in enumerate(signer.get_signature(signer.get_shingles(text)))
    }


def select(records: Sequence[dict], limits: Limits) -> tuple[list[dict], dict[str, int]]:
    """The records that pass the checks of the module docstring, in id order, and the counts of
    those dropped per reason."""
    dropped = dict.fromkeys(("truncated", "too_short", "code_failed", "wrong_output"), 0)
    dropped["near_duplicate"] = 0
    with tempfile.TemporaryDirectory() as unused:
        signer = MinhashDedupSignature(unused, config=MINHASH)
    seen: set[tuple] = set()
    kept = []
    for record in sorted(records, key=lambda r: r["metadata"]["index"]):
        text, finish = record["text"], record["metadata"]["finish_reason"]
        reason = None
        if finish == "length":
            reason = "truncated"
        elif len(text.split()) < limits.min_words:
            reason = "too_short"
        else:
            reason = check_code(text, limits)
        if reason is None:
            bands = _bands(signer, text)
            if bands & seen:
                reason = "near_duplicate"
            seen |= bands
        if reason:
            dropped[reason] += 1
        else:
            kept.append(record)
    return kept, dropped


async def write_one(document: Document, generate, *, sampling: dict) -> dict:
    """One document's generation: its text and how it ended."""
    payload = {"messages": [{"role": "user", "content": document.text}], **sampling}
    payload["seed"] = document.metadata["seed"]
    result = await generate(payload)
    return {"text": result.text, "finish_reason": result.finish_reason}


def generate_documents(
    topics: str,
    out: str,
    *,
    docs: int,
    seed: int = 0,
    endpoint: str | None = None,
    serve_workdir: str | None = None,
    model: str | None = None,
    max_tokens: int = 1024,
    temperature: float = 0.8,
    top_p: float = 0.95,
    chunk: int = 50,
    concurrency: int = 32,
    limits: Limits = Limits(),
) -> dict:
    """Generate (or resume), check and write the documents; return the summary."""
    specs = prompt_specs(read_topics(topics), docs, seed)
    sampling = {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens}
    inputs = [
        Document(
            text=spec["prompt"],
            id=f"synthetic-llm/{seed}/{i}",
            metadata={**spec, "index": i, "seed": seed * 1_000_003 + i},
        )
        for i, spec in enumerate(specs)
    ]
    # datatrove keeps its checkpoints (a local copy of each unfinished chunk) on local disk: a
    # bucket's run resumes on the machine that began it.
    checkpoints = paths.join(paths.cache_path(out) if paths.is_remote(out) else out, "checkpoints")
    with endpoint_of(endpoint, serve_workdir) as url:
        name = model or served_model(url)
        runner = InferenceRunner(
            rollout_fn=lambda doc, generate: write_one(doc, generate, sampling=sampling),
            config=endpoint_config(url, name, concurrency),
            output_writer=JsonlWriter(
                paths.join(out, "generations"),
                output_filename="${rank}_chunk_${chunk_index}.jsonl",
                compression=None,
            ),
            checkpoints_local_dir=checkpoints,
            records_per_chunk=chunk,
            metadata_key=RESULTS_KEY,
        )
        runner.run(inputs, rank=0, world_size=1)
    records = []
    for raw in read_results(paths.join(out, "generations")):
        result = raw["metadata"].pop(RESULTS_KEY)[0]
        meta = {**raw["metadata"], "finish_reason": result["finish_reason"]}
        meta |= {"sampling": sampling, "model": name, "source": "synthetic-llm"}
        records.append({"id": raw["id"], "text": result["text"], "metadata": meta})
    kept, dropped = select(records, limits)
    shards = write_shards(kept, out, 2000)
    summary = {
        "requested": docs,
        "generated": len(records),
        "unique_ids": len({r["id"] for r in records}),
        "kept": len(kept),
        "dropped": dropped,
        "model": name,
        "sampling": sampling,
        "limits": dataclasses.asdict(limits),
        "shards": shards,
    }
    summary_json = orjson.dumps(summary, option=orjson.OPT_INDENT_2)
    paths.path(paths.join(out, "summary.json")).write_bytes(summary_json)
    return summary
