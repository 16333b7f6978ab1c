"""``/mcp`` on the app, mounted lazily.

The MCP SDK costs a process ~24 MB resident and half a second of imports, and most processes
never serve an agent (an API replica behind a load balancer, a benchmark). So the route is
mounted at start-up without it: the first request that passes the key check imports
:mod:`ragserve.mcp_server` (on a worker thread, off the event loop), builds the MCP server and
starts its session manager in the app's lifespan, and every request after that goes straight to
the manager. A caller without a valid key is refused (401, as every /v1 route answers it)
without the SDK ever being loaded.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import anyio
from anyio import to_thread
from anyio.abc import TaskGroup
from fastapi import FastAPI
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ragserve.api.auth import check_key
from ragserve.api.errors import error_response
from ragserve.errors import RagserveError, Unauthorized, Unavailable

if TYPE_CHECKING:
    from ragserve.mcp_server import McpHttp


class LazyMcp:
    """The ``/mcp`` endpoint: the key check here, the MCP server built on first use."""

    def __init__(self, app: FastAPI, host: str) -> None:
        self.app = app
        self.host = host
        self.keys: list[bytes] = app.state.api_keys
        self._http: McpHttp | None = None  # the MCP server, once built (kept across lifespans)
        self._manager: Any = None  # its session manager while this lifespan serves it
        self._tasks: TaskGroup | None = None  # the lifespan's, where the manager runs
        self._stop: anyio.Event | None = None
        self._lock: anyio.Lock | None = None

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[None]:
        """Run around the app's serving (its lifespan): the session manager, once started by
        a request, lives here and stops with it. Each lifespan starts a new one."""
        self._stop, self._lock = anyio.Event(), anyio.Lock()
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            try:
                yield
            finally:
                self._tasks, self._manager = None, None
                self._stop.set()

    @property
    def loaded(self) -> bool:
        """Whether the MCP SDK has been loaded for this app."""
        return self._http is not None

    async def _started(self) -> Any:
        tasks, lock, stop = self._tasks, self._lock, self._stop
        if tasks is None or lock is None or stop is None:
            raise Unavailable("not ready: MCP starts with the server")
        async with lock:
            if self._manager is None:
                if self._http is None:
                    self._http = await to_thread.run_sync(self._build)
                self._manager = await tasks.start(self._http.serve, stop)
        return self._manager

    def _build(self) -> McpHttp:
        from ragserve.mcp_server import http_server

        return http_server(self.app, self.host)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            check_key(
                headers.get("authorization"), self.keys, getattr(self.app.state, "keys", None)
            )
            manager = self._manager or await self._started()
        except RagserveError as exc:
            challenge = {"WWW-Authenticate": 'Bearer realm="ragserve"'}
            response = error_response(
                exc.status_code,
                exc.error_type,
                exc.message,
                challenge if isinstance(exc, Unauthorized) else None,
            )
            await response(scope, receive, send)
            return
        await manager.handle_request(scope, receive, send)


def install_mcp(
    app: FastAPI, host: str
) -> Callable[[], contextlib.AbstractAsyncContextManager[None]]:
    """Mount ``/mcp`` on ``app`` (the SDK loads on its first use); returns what the app's
    lifespan must run around serving."""
    endpoint = LazyMcp(app, host)
    app.state.mcp = endpoint
    app.router.routes.append(Route("/mcp", endpoint=endpoint, methods=["GET", "POST", "DELETE"]))
    return endpoint.serving
