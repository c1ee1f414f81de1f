"""phi3_jax.serve through real clients on loopback: the official openai client's completions and
chat round trips against generate_batch, echo log-probabilities against a full forward pass,
greedy text alone equal to the same prompt in a batch, seeded sampling reproducible, and bad
requests answered with 4xx naming the field while the server keeps serving."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import types

import httpx
import jax
import numpy as np
import openai
import pytest

from phi3_jax import generate, model
from phi3_jax.posttrain import chat
from phi3_jax.serve import api
from phi3_jax.serve.api import make_app
from phi3_jax.serve.background import BackgroundServer
from phi3_jax.serve.engine import Engine, serving_mesh
from tests.serve.serve_fixtures import MODEL, served, tiny_loaded

PROMPTS = [
    "The list type supports",
    "A dictionary maps keys",
    "In Python, a function",
    "Water boils at",
    "The cell membrane",
    "Prime numbers are",
    "An algorithm is",
    "The derivative of",
]


@pytest.fixture(scope="module")
def server():
    with served(wait_s=0.3) as (url, engine):
        yield url, engine


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)


def reference(prompt_ids: list[int], stop_ids, n: int) -> list[int]:
    loaded = tiny_loaded()
    decodable = loaded.tokenizer.decodable_mask(loaded.config.model.vocab_size)
    new = generate.generate_batch(
        loaded.config,
        loaded.params,
        [prompt_ids],
        max_new_tokens=n,
        stop_ids=[stop_ids],
        decodable=decodable,
    )[0]
    return [t for t in new if t not in stop_ids]


def test_openai_client_round_trip(server):
    url, _ = server
    tok = tiny_loaded().tokenizer
    api = client(url)
    assert [m.id for m in api.models.list().data] == [MODEL]

    out = api.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=8, temperature=0)
    expected = reference([tok.bos_id, *tok.encode(PROMPTS[0])], {tok.eos_id}, 8)
    assert out.choices[0].text == tok.decode(expected)
    assert out.usage.completion_tokens == 8 and out.choices[0].finish_reason == "length"

    messages = [{"role": "user", "content": "What is a list?"}]
    answer = api.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=6, temperature=0
    )
    stops = set(chat.stop_ids(tok))
    expected = reference(chat.encode_prompt(tok, messages), stops, 6)
    assert answer.choices[0].message.content == tok.decode(expected)
    assert answer.choices[0].message.role == "assistant"


def test_echo_logprobs_equal_a_full_forward_pass(server):
    url, _ = server
    loaded = tiny_loaded()
    tok = loaded.tokenizer
    out = client(url).completions.create(
        model=MODEL, prompt=PROMPTS[1], max_tokens=0, echo=True, logprobs=2
    )
    lp = out.choices[0].logprobs
    ids = [tok.bos_id, *tok.encode(PROMPTS[1])]
    logits = model.logits(loaded.config, loaded.params, np.asarray([ids], np.int32))[0]
    expected = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    want = [expected[i - 1, ids[i]] for i in range(1, len(ids))]
    np.testing.assert_allclose(lp.token_logprobs, want, atol=1e-4)
    assert out.choices[0].text == PROMPTS[1] == "".join(lp.tokens)
    assert len(lp.tokens) == len(lp.text_offset) == len(ids) - 1
    for offset, token in zip(lp.text_offset, lp.tokens, strict=True):
        assert PROMPTS[1][offset:].startswith(token)
    for top, chosen in zip(lp.top_logprobs, lp.token_logprobs, strict=True):
        assert len(top) == 2 and max(top.values()) >= chosen - 1e-5

    # lm-eval's local-completions scores with max_tokens=1 and drops the last position.
    scored = client(url).completions.create(
        model=MODEL, prompt=ids, max_tokens=1, echo=True, logprobs=1, temperature=0
    )
    assert len(scored.choices[0].logprobs.token_logprobs) == len(ids)  # BOS has none


def test_a_stop_id_is_left_out_of_the_text_but_reported_with_the_ids():
    tok = tiny_loaded().tokenizer
    engine = types.SimpleNamespace(tokenizer=tok)
    word = tok.encode("list")
    ids, text, reason = api._finish(engine, [*word, tok.eos_id], {tok.eos_id}, [], 8)
    assert (ids, text, reason) == ([*word, tok.eos_id], "list", "stop")
    ids, text, reason = api._finish(engine, word * 3, {tok.eos_id}, [], 3 * len(word))
    assert (ids, text, reason) == (word * 3, "list list list", "length")
    ids, text, reason = api._finish(engine, word * 3, {tok.eos_id}, [" li"], 99)
    assert (ids, text, reason) == (word, "list", "stop")


def test_greedy_text_alone_equals_text_in_a_batch(server):
    url, engine = server
    api = client(url)

    def ask(prompt: str) -> str:
        out = api.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0)
        return out.choices[0].text

    alone = ask(PROMPTS[2])
    before = engine.counters.batches
    with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
        batched = list(pool.map(ask, PROMPTS))
    assert batched[2] == alone
    # The eight requests shared batches (fewer batches than requests).
    assert engine.counters.batches - before < len(PROMPTS)
    assert engine.counters.largest_batch > 1


def test_greedy_text_on_a_mesh_equals_one_device(server):
    url, _ = server
    loaded = tiny_loaded()
    config, mesh = serving_mesh(loaded.config, data=2, tensor=2)
    assert mesh.shape["data"] == 2 and mesh.shape["tensor"] == 2

    def ask(base: str) -> list[str]:
        out = client(base).completions.create(
            model=MODEL, prompt=PROMPTS[4:6], max_tokens=5, temperature=0
        )
        return [c.text for c in out.choices]

    engine = Engine(dataclasses.replace(loaded, config=config), wait_s=0.01, mesh=mesh)
    with BackgroundServer(make_app(engine, MODEL)) as on_mesh:
        assert ask(on_mesh) == ask(url)


def test_seeded_sampling_is_reproducible(server):
    url, _ = server
    api = client(url)

    def sample(seed: int) -> list[str]:
        out = api.completions.create(
            model=MODEL, prompt=PROMPTS[3], max_tokens=6, temperature=1.0, seed=seed, n=2
        )
        return [c.text for c in out.choices]

    first = sample(5)
    assert len(first) == 2 and sample(5) == first


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("completions", {"model": "gpt-9", "prompt": "x"}, 404, "model"),
        ("completions", {"prompt": "x"}, 400, "model"),
        ("completions", {"model": MODEL, "prompt": "x", "temperature": -1}, 400, "temperature"),
        ("completions", {"model": MODEL, "prompt": "x", "top_p": 0}, 400, "top_p"),
        ("completions", {"model": MODEL, "prompt": "x", "n": 0}, 400, "n"),
        ("completions", {"model": MODEL, "prompt": "x", "max_tokens": "8"}, 400, "max_tokens"),
        ("completions", {"model": MODEL, "prompt": "x", "logprobs": 9}, 400, "logprobs"),
        ("completions", {"model": MODEL, "prompt": "x", "stop": [1]}, 400, "stop"),
        ("completions", {"model": MODEL, "prompt": "word " * 200}, 400, "prompt"),
        ("completions", {"model": MODEL, "prompt": [1, 99999]}, 400, "prompt"),
        ("completions", {"model": MODEL, "prompt": {"a": 1}}, 400, "prompt"),
        ("chat/completions", {"model": MODEL, "messages": []}, 400, "messages"),
        ("chat/completions", {"model": MODEL, "messages": [{"role": "x"}]}, 400, "messages"),
    ],
)
def test_bad_requests_are_4xx_naming_the_field(server, path, body, status, param):
    url, _ = server
    response = httpx.post(f"{url}/v1/{path}", json=body, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and param in error["message"]
    assert httpx.get(f"{url}/health", timeout=60).json()["status"] == "ok"


def test_malformed_json_is_400(server):
    url, _ = server
    response = httpx.post(f"{url}/v1/completions", content=b"{not json", timeout=60)
    assert response.status_code == 400 and response.json()["error"]["param"] == "body"


def test_a_client_that_goes_away_costs_the_others_nothing(server):
    url, _ = server
    body = {"model": MODEL, "prompt": PROMPTS[5], "max_tokens": 6, "temperature": 0}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{url}/v1/completions", json=body, timeout=0.001)
    api = client(url)
    out = api.completions.create(model=MODEL, prompt=PROMPTS[6], max_tokens=4, temperature=0)
    assert out.usage.completion_tokens == 4
    assert httpx.get(f"{url}/health", timeout=60).json()["status"] == "ok"
