"""synthetic --generator=llm: combinatorial prompts, checks that drop and count truncated, short,
failing or wrong-output code and near-duplicate generations (against a scripted server whose
answer depends on the topic), resume after a crash mid-run without losing or duplicating a
document, and a short run end to end on our own server."""

from __future__ import annotations

import random
import re

import pytest
from aiohttp import web
from datatrove.pipeline.inference.types import ServerError

from phi3_jax.data import synthetic, synthetic_llm
from phi3_jax.data.readers import iter_documents
from phi3_jax.serve.background import BackgroundServer
from tests.data.scripted_server import chat_app
from tests.serve.serve_fixtures import served

TOPICS = ["good", "dup", "short", "trunc", "wrong", "right", "loop", "memhog"]
LIMITS = synthetic_llm.Limits(min_words=40, code_timeout_s=2.0, code_memory_bytes=256 * 2**20)


def _words(seed: str, n: int = 60) -> str:
    """n random letter words (MinHash normalizes digits away, so no numbers)."""
    rng = random.Random(seed)
    return " ".join("".join(rng.choices("abcdefghij", k=4)) for _ in range(n))


def _answer(prompt: str) -> tuple[str, str]:
    """(text, finish_reason) the scripted model writes for a prompt, by its topic."""
    topic = re.search(r"about (\w+) for", prompt).group(1)
    unique = _words(prompt)
    code = {
        "wrong": "```python\nprint(2 + 2)\n```\nOutput:\n```\n5\n```",
        "right": "```python\nprint(sum(range(5)))\n```\nOutput:\n```\n10\n```",
        "loop": "```python\nwhile True:\n    pass\n```",
        "memhog": "```python\nx = bytearray(2 * 2**30)\nprint(len(x))\n```",
    }
    if topic == "dup":
        return _words("always the same"), "stop"
    if topic == "short":
        return "Too short.", "stop"
    if topic == "trunc":
        return unique, "length"
    return f"{unique}\n{code.get(topic, '')}", "stop"


def scripted_app(calls: list, fail_after: int | None = None) -> web.Application:
    def respond(body: dict):
        calls.append(body)
        if fail_after is not None and len(calls) > fail_after:
            return web.Response(status=500, text="node lost")
        return _answer(body["messages"][0]["content"])

    return chat_app(respond)


@pytest.fixture
def topics(tmp_path) -> str:
    path = tmp_path / "topics.txt"
    path.write_text("# seed topics\n" + "\n".join(TOPICS) + "\n")
    return str(path)


def test_prompts_cross_topics_audiences_styles_and_forms(topics):
    specs = synthetic_llm.prompt_specs(TOPICS, 40, seed=1)
    assert len({s["prompt"] for s in specs}) == 40
    assert {s["form"] for s in specs} == set(synthetic_llm.FORMS)
    assert specs == synthetic_llm.prompt_specs(synthetic_llm.read_topics(topics), 40, seed=1)
    assert specs != synthetic_llm.prompt_specs(TOPICS, 40, seed=2)


def test_checks_drop_and_count_each_failure(tmp_path, topics):
    n = 48
    specs = synthetic_llm.prompt_specs(TOPICS, n, seed=0)
    count = {t: sum(s["topic"] == t for s in specs) for t in TOPICS}
    assert all(count.values())
    calls: list = []
    with BackgroundServer(scripted_app(calls)) as url:
        summary = synthetic_llm.generate_documents(
            topics, str(tmp_path / "out"), docs=n, endpoint=url, chunk=8, limits=LIMITS
        )
    assert summary["dropped"] == {
        "truncated": count["trunc"],
        "too_short": count["short"],
        "code_failed": count["loop"] + count["memhog"],
        "wrong_output": count["wrong"],
        "near_duplicate": count["dup"] - 1,
    }
    kept = list(iter_documents(str(tmp_path / "out" / "*.jsonl.zst")))
    assert len(kept) == summary["kept"] == count["good"] + count["right"] + 1
    assert {d.metadata["topic"] for d in kept} == {"good", "right", "dup"}
    first = kept[0].metadata
    assert first["prompt"] == specs[first["index"]]["prompt"]
    assert first["sampling"] == {"temperature": 0.8, "top_p": 0.95, "max_tokens": 1024}
    # Each document asked with its own seed.
    assert sorted(c["seed"] for c in calls) == [i for i in range(n)]


def test_a_crashed_run_resumes_without_duplicates_or_losses(tmp_path, topics):
    n, out = 16, str(tmp_path / "out")
    first: list = []
    with BackgroundServer(scripted_app(first, fail_after=9)) as url:
        with pytest.raises(ServerError, match="node lost"):
            synthetic_llm.generate_documents(
                topics, out, docs=n, endpoint=url, chunk=4, concurrency=2, limits=LIMITS
            )
    second: list = []
    with BackgroundServer(scripted_app(second)) as url:
        summary = synthetic_llm.generate_documents(
            topics, out, docs=n, endpoint=url, chunk=4, concurrency=2, limits=LIMITS
        )
    assert summary["generated"] == summary["unique_ids"] == n
    # What the first run finished was not asked again.
    assert len(second) < n
    asked_twice = {c["seed"] for c in second} & {c["seed"] for c in first[:9]}
    assert len(second) + 9 - len(asked_twice) == n


@pytest.mark.slow  # about a minute: each seeded request decodes alone, per prompt length
def test_end_to_end_on_our_server(tmp_path, topics):
    with served(context=256) as (url, engine):
        synthetic.main(
            [
                "--generator=llm",
                f"--topics={topics}",
                f"--out={tmp_path / 'out'}",
                "--docs=4",
                f"--endpoint={url}",
                "--max_tokens=8",
            ]
        )
    assert engine.counters.rows == 4
    summary = (tmp_path / "out" / "summary.json").read_text()
    assert '"generated": 4' in summary and '"truncated": 4' in summary
