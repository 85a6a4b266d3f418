"""What the HTTP fakes share: an aiohttp server run in its own thread and event loop.

A fake subclasses ``FakeServer`` and answers every request in ``_handle`` (one catch-all
route; override ``_app`` for another application). It gets ``start()``/``stop()``, ``with`` and
``async with``, and ``base_url`` (``http://host:port``; port 0 picks a free one). Its own thread
lets one fake serve sync tests (a CLI in a subprocess) and async tests (a client in the test's
loop) alike. At ``stop()`` handlers still running (delays, stalls, long polls) are cancelled, so
no task, socket or loop outlives the fake. ``_open_site``/``_close_site`` serve on the running
loop instead, for a fake in its own process.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Self

from aiohttp import web


class FakeServer:
    """Serves ``_handle`` on ``host:port`` from a background thread; start/stop are idempotent."""

    _client_max_size = 2**20  # largest request body (aiohttp's default)
    _backlog = 128

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host, self._bind_port, self._port = host, port, 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=self._client_max_size)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    def start(self) -> Self:
        """Start serving on ``host`` (a free port unless one was given) in a background thread."""
        if self._thread is not None:
            return self
        name = type(self).__name__.removeprefix("Fake")
        ready, failure = threading.Event(), list[BaseException]()
        self._thread = threading.Thread(
            target=self._serve, args=(ready, failure), name=f"fake-{name.lower()}", daemon=True
        )
        self._thread.start()
        if not ready.wait(10) or failure:
            self._thread = None
            raise RuntimeError(f"fake {name} did not start") from next(iter(failure), None)
        return self

    def stop(self) -> None:
        """Stop the server (cutting open responses) and join its thread."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = self._loop = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    @property
    def base_url(self) -> str:
        if not self._port:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return f"http://{self._host}:{self._port}"

    def _serve(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._open_site())
        except BaseException as exc:  # reported to start()
            failure.append(exc)
        ready.set()
        try:
            if not failure:
                loop.run_forever()
        finally:
            loop.run_until_complete(self._shut_down())
            loop.close()

    async def _open_site(self) -> None:
        """Serve on the running loop; ``base_url`` works once this returns."""
        self._runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self._host, self._bind_port))
            await web.SockSite(self._runner, sock, backlog=self._backlog).start()
        except BaseException:
            sock.close()
            raise
        self._port = sock.getsockname()[1]

    async def _close_site(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner, self._port = None, 0

    async def _shut_down(self) -> None:
        await self._close_site()
        # handlers still sleeping (delays, stalls) end here, not at garbage collection
        me = asyncio.current_task()
        pending = [task for task in asyncio.all_tasks() if task is not me]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await asyncio.get_running_loop().shutdown_asyncgens()
        await asyncio.get_running_loop().shutdown_default_executor()
