"""A server on its own thread: the `with` block gets a base URL on a free port that answers, and
once it ends the port is closed and the thread gone."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request

import pytest
from aiohttp import web

from phi3_jax.serve.background import BackgroundServer


async def _hello(request: web.Request) -> web.Response:
    return web.Response(text=f"hello {request.query.get('name', '')}")


def test_serves_while_the_block_runs_then_stops():
    app = web.Application()
    app.router.add_get("/hello", _hello)
    threads = threading.active_count()
    with BackgroundServer(app) as url:
        assert url.startswith("http://127.0.0.1:") and int(url.rsplit(":", 1)[1]) > 0
        with urllib.request.urlopen(f"{url}/hello?name=you", timeout=10) as response:
            assert response.read() == b"hello you"
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{url}/hello", timeout=10)
    assert threading.active_count() == threads
