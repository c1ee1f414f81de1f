"""A scripted OpenAI-compatible chat server for the LLM data tools' tests."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

MODEL = "scripted"


def chat_app(respond: Callable[[dict], web.Response | tuple[str, str]]) -> web.Application:
    """/v1/models lists one model; /v1/chat/completions answers a request body with
    `respond(body)`: a Response as it is, or (text, finish_reason) as a chat completion."""

    async def chat(request: web.Request) -> web.Response:
        answer = respond(await request.json())
        if isinstance(answer, web.Response):
            return answer
        text, finish = answer
        choice = {"index": 0, "message": {"role": "assistant", "content": text}}
        return web.json_response({"choices": [{**choice, "finish_reason": finish}], "usage": {}})

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": MODEL}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    return app
