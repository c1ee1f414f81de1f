"""The OpenAI-compatible HTTP layer (aiohttp): request checking, routes and response bodies.

Routes: GET /health, GET /v1/models, POST /v1/completions, POST /v1/chat/completions.
Sampling fields: max_tokens, temperature, top_p, stop, seed, n; completions also take
`logprobs` (top alternatives per position, at most 5) and `echo` (the prompt's text and
log-probabilities before the completion; with max_tokens 0 it only scores the prompt, which is
how lm-eval's `local-completions` computes log-likelihoods). A prompt is a string, a list of
strings, a list of token ids or a list of such lists; a string gets the model's BOS habit
(a run's `data.add_bos`), a list of ids is taken as is. Chat requests use the Phi-3 chat format
(phi3_jax.posttrain.chat) and stop on its stop tokens.

A bad request is a 4xx whose JSON body `{"error": {"message", "type", "param", "code"}}` names
the field at fault; the server never crashes on one.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import Sequence

from aiohttp import web

from phi3_jax.eval.scorer import cut_at_stop
from phi3_jax.posttrain import chat
from phi3_jax.serve.engine import MAX_TOP_LOGPROBS, Engine, Job

MAX_STOPS = 4
DEFAULT_MAX_TOKENS = 16
ENGINE_KEY = web.AppKey("engine", Engine)
NAME_KEY = web.AppKey("model_name", str)


class RequestError(Exception):
    """A request the server refuses: HTTP status, the field at fault and why."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code=None):
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code

    def response(self) -> web.Response:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        body = {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        return web.json_response({"error": body}, status=self.status)


# ----------------------------------------------------------------------------------------------
# Request fields


def _number(body: dict, name: str, default: float, low: float, high: float, *, open_low=False):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RequestError(f"{name}={value!r}: must be a number", name)
    if value < low or value > high or (open_low and value == low):
        bounds = f"({low}, {high}]" if open_low else f"[{low}, {high}]"
        raise RequestError(f"{name}={value!r}: must be in {bounds}", name)
    return float(value)


def _integer(body: dict, name: str, default: int | None, low: int, high: int | None = None):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{name}={value!r}: must be an integer", name)
    if value < low or (high is not None and value > high):
        upper = "" if high is None else f" and at most {high}"
        raise RequestError(f"{name}={value}: must be at least {low}{upper}", name)
    return value


def _stops(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise RequestError(f"stop={stop!r}: must be a non-empty string or list of them", "stop")
    if len(stops) > MAX_STOPS:
        raise RequestError(f"stop: {len(stops)} sequences, at most {MAX_STOPS}", "stop")
    return stops


def _check_model(body: dict, served: str) -> None:
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise RequestError("model: missing; give the served model's id (GET /v1/models)", "model")
    if name != served:
        raise RequestError(
            f"model={name!r}: not served here (this server serves {served!r})",
            "model",
            404,
            "model_not_found",
        )


def _unsupported(body: dict, names: Sequence[str]) -> None:
    for name in names:
        if body.get(name):
            raise RequestError(f"{name}: not supported by this server", name)


def _prompts(engine: Engine, prompt) -> list[list[int]]:
    """Token ids of each prompt of a completions request."""
    tokenizer = engine.tokenizer
    head = [tokenizer.bos_id] if engine.add_bos else []
    if isinstance(prompt, str):
        prompts = [head + tokenizer.encode(prompt)]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = [head + tokenizer.encode(p) for p in prompt]
    elif isinstance(prompt, list) and prompt and all(_is_id(t) for t in prompt):
        prompts = [list(prompt)]
    elif (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(p, list) and all(_is_id(t) for t in p) for p in prompt)
    ):
        prompts = [list(p) for p in prompt]
    else:
        raise RequestError(
            f"prompt: {_short(prompt)} is not a string, a list of strings, a list of token "
            "ids or a list of such lists",
            "prompt",
        )
    vocab = engine.config.model.vocab_size
    for i, ids in enumerate(prompts):
        if not ids:
            raise RequestError(f"prompt[{i}]: empty (no tokens to continue)", "prompt")
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise RequestError(f"prompt[{i}]: token id {bad[0]} outside [0, {vocab})", "prompt")
    return prompts


def _is_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_length(engine: Engine, ids: list[int], max_tokens: int, field: str) -> None:
    if len(ids) + max_tokens > engine.context:
        raise RequestError(
            f"{field}: {len(ids)} prompt tokens + max_tokens={max_tokens} exceed the model's "
            f"context of {engine.context} tokens",
            field,
        )


def _job(engine: Engine, body: dict, prompt: list[int], max_tokens: int, stop_ids=()) -> Job:
    stops = _stops(body)
    encode = engine.tokenizer.encode
    return Job(
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, open_low=True),
        seed=_integer(body, "seed", None, 0, 2**63 - 1),
        n=_integer(body, "n", 1, 1, engine.max_rows),
        stop_ids=frozenset(stop_ids),
        stop_sequences=tuple(tuple(encode(s)) for s in stops if encode(s)),
    )


# ----------------------------------------------------------------------------------------------
# Completions


def _finish(engine: Engine, new: list[int], stop_ids, stops: list[str], max_tokens: int):
    """(ids, text, finish_reason) of a row. The text leaves out a final stop id and is cut
    before the first stop string; the ids (those log-probabilities are reported for) keep the
    stop id, as other servers report it, and end where a cut text ends."""
    ids = list(new)
    reason = "length" if len(ids) >= max_tokens else "stop"
    stopped = bool(ids) and ids[-1] in stop_ids
    shown = ids[:-1] if stopped else ids
    reason = "stop" if stopped else reason
    text = engine.tokenizer.decode(shown)
    cut = cut_at_stop(text, stops)
    if len(cut) < len(text):
        reason = "stop"
        while shown and len(engine.tokenizer.decode(shown)) > len(cut):
            shown = shown[:-1]
        return shown, cut, reason
    return ids, text, reason


def _token_strings(tokenizer, ids: list[int]) -> tuple[list[str], list[int]]:
    """Each id's text and its offset in the decoded text of all of them."""
    strings, offsets, previous = [], [], ""
    for i in range(len(ids)):
        text = tokenizer.decode(ids[: i + 1])
        offsets.append(len(previous))
        strings.append(text[len(previous) :])
        previous = text
    return strings, offsets


async def _logprobs(engine: Engine, prompt: list[int], ids: list[int], k: int, echo: bool):
    """The OpenAI logprobs object of the completion ids (after the prompt's, with echo)."""
    everything = prompt + ids
    picked, alternatives = await engine.score(everything, k)
    # A string prompt's BOS is not part of the text; token-id prompts show every id.
    hidden = 1 if engine.add_bos and prompt[0] == engine.tokenizer.bos_id else 0
    start = hidden if echo else len(prompt)
    shown = everything[start:]
    strings, offsets = _token_strings(engine.tokenizer, shown)
    token_logprobs, top = [], []
    for position in range(start, len(everything)):
        if position == 0:  # nothing before the first id
            token_logprobs.append(None)
            top.append(None)
            continue
        token_logprobs.append(picked[position - 1])
        top.append({engine.tokenizer.decode([i]): v for i, v in alternatives[position - 1].items()})
    return {
        "tokens": strings,
        "token_logprobs": token_logprobs,
        "top_logprobs": top,
        "text_offset": offsets,
    }


async def completions(request: web.Request) -> web.Response:
    engine, served = request.app[ENGINE_KEY], request.app[NAME_KEY]
    body = await _body(request)
    _check_model(body, served)
    _unsupported(body, ("stream", "suffix", "best_of"))
    prompts = _prompts(engine, body.get("prompt"))
    max_tokens = _integer(body, "max_tokens", DEFAULT_MAX_TOKENS, 0)
    echo = body.get("echo", False)
    if not isinstance(echo, bool):
        raise RequestError(f"echo={echo!r}: must be true or false", "echo")
    k = _integer(body, "logprobs", None, 0, MAX_TOP_LOGPROBS)
    if max_tokens == 0 and not echo:
        raise RequestError("max_tokens=0: only with echo (scoring the prompt)", "max_tokens")
    for ids in prompts:
        _check_length(engine, ids, max_tokens, "prompt")
    stop_ids = {engine.tokenizer.eos_id}
    stops = _stops(body)
    jobs = [_job(engine, body, ids, max_tokens, stop_ids) for ids in prompts]
    choices, completion_tokens = [], 0
    # A request's prompts queue together, so they share a batch.
    if max_tokens:
        outputs = await asyncio.gather(*(engine.generate(job) for job in jobs))
    else:
        outputs = [[[] for _ in range(job.n)] for job in jobs]
    for job, rows in zip(jobs, outputs, strict=True):
        for new in rows:
            ids, text, reason = _finish(engine, new, stop_ids, stops, max(max_tokens, 1))
            completion_tokens += len(new)
            logprobs = None
            if k is not None:
                logprobs = await _logprobs(engine, job.prompt, ids, k, echo)
            if echo:
                text = _prompt_text(engine, job.prompt) + text
            choices.append(
                {"index": len(choices), "text": text, "logprobs": logprobs, "finish_reason": reason}
            )
    prompt_tokens = sum(len(p) for p in prompts)
    return _response("cmpl", "text_completion", served, choices, prompt_tokens, completion_tokens)


def _prompt_text(engine: Engine, prompt: list[int]) -> str:
    hidden = 1 if engine.add_bos and prompt[0] == engine.tokenizer.bos_id else 0
    return engine.tokenizer.decode(prompt[hidden:])


def _response(
    prefix: str, kind: str, served: str, choices: list, prompt_tokens: int, completion_tokens: int
) -> web.Response:
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    body = {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time())}
    return web.json_response({**body, "model": served, "choices": choices, "usage": usage})


# ----------------------------------------------------------------------------------------------
# Chat completions


async def chat_completions(request: web.Request) -> web.Response:
    engine, served = request.app[ENGINE_KEY], request.app[NAME_KEY]
    body = await _body(request)
    _check_model(body, served)
    _unsupported(body, ("stream", "tools", "logprobs"))
    try:
        messages = chat.check_messages(body.get("messages"), need_assistant=False)
    except chat.ConversationError as error:
        raise RequestError(f"messages: {error}", "messages") from None
    prompt = chat.encode_prompt(engine.tokenizer, messages)
    room = engine.context - len(prompt)
    max_tokens = _integer(body, "max_completion_tokens", None, 1)
    if max_tokens is None:  # the older name; by default, what the context leaves
        max_tokens = _integer(body, "max_tokens", max(room, 1), 1)
    _check_length(engine, prompt, max_tokens, "messages")
    stop_ids = set(chat.stop_ids(engine.tokenizer))
    stops = _stops(body)
    job = _job(engine, body, prompt, max_tokens, stop_ids)
    choices, completion_tokens = [], 0
    for new in await engine.generate(job):
        _, text, reason = _finish(engine, new, stop_ids, stops, max_tokens)
        completion_tokens += len(new)
        choices.append(
            {
                "index": len(choices),
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": reason,
            }
        )
    return _response("chatcmpl", "chat.completion", served, choices, len(prompt), completion_tokens)


# ----------------------------------------------------------------------------------------------
# The application


async def _body(request: web.Request) -> dict:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RequestError("body: not valid JSON", "body") from None
    if not isinstance(body, dict):
        raise RequestError("body: must be a JSON object", "body")
    return body


async def models(request: web.Request) -> web.Response:
    model = {"id": request.app[NAME_KEY], "object": "model", "created": 0, "owned_by": "phi3_jax"}
    return web.json_response({"object": "list", "data": [model]})


async def health(request: web.Request) -> web.Response:
    counters = request.app[ENGINE_KEY].counters
    return web.json_response({"status": "ok", **vars(counters)})


@web.middleware
async def _errors(request: web.Request, handler):
    """Refused requests as OpenAI-style JSON errors; anything else is a 500 with its message."""
    try:
        return await handler(request)
    except RequestError as error:
        return error.response()
    except web.HTTPException as error:
        return RequestError(error.reason, None, error.status).response()
    except Exception as error:  # noqa: BLE001 - one failed request must not stop the server
        return RequestError(f"{type(error).__name__}: {error}", None, 500).response()


def make_app(engine: Engine, model_name: str) -> web.Application:
    """The aiohttp application serving `engine` as model `model_name`."""
    app = web.Application(middlewares=[_errors], client_max_size=64 * 2**20)
    app[ENGINE_KEY], app[NAME_KEY] = engine, model_name

    async def lifecycle(app):
        await engine.start()
        yield
        await engine.stop()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat_completions)
    return app
