"""A server running on its own thread and event loop: `with BackgroundServer(app) as url: ...`.

Tests, benchmarks and the data tools (`--serve_workdir`) start our server this way and talk to
it over loopback like any other client.
"""

from __future__ import annotations

import asyncio
import threading

from aiohttp import web


class BackgroundServer:
    """Serves `app` on host:port (port 0: a free one) while the `with` block runs; yields the
    base URL, e.g. http://127.0.0.1:43123."""

    def __init__(self, app: web.Application, host: str = "127.0.0.1", port: int = 0):
        self.app, self.host, self.port = app, host, port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    async def _start(self) -> int:
        self._runner = web.AppRunner(self.app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        return site._server.sockets[0].getsockname()[1]

    def __enter__(self) -> str:
        self._thread.start()
        port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result()
        return f"http://{self.host}:{port}"

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
